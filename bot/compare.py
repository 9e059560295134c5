"""``--compare BASELINE.json``: this run's figures against a baseline report's.

Every figure both reports have (bot/figures.py; ``max_ms`` only when asked for: one
sample decides it) is compared; a figure is a **regression** when it moved the
wrong way by more than the tolerance, relative to the baseline (at least a small
absolute slack, so a 0.00 % error rate is not a regression at 0.01 %, nor 0.20 ms
one at 0.21 ms). A regression makes the run exit 3 (bot/main.py) unless the SLO
broke (exit 1), so CI can gate a release on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bot.figures import figures, kind_of, show

DEFAULT_TOLERANCE = 0.10
SKIPPED_BY_DEFAULT = ("max_ms",)
SLACK = {"ms": 0.01, "fraction": 0.0001}


def tolerance(text: str) -> float:
    """``10%`` or ``10`` -> 0.10 (a relative change in (0, 1000] %)."""
    number = text.strip().removesuffix("%")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 10%, got {text!r}") from None
    if not 0.0 < value <= 1000.0:
        raise argparse.ArgumentTypeError(f"expected a percentage in (0, 1000], got {text!r}")
    return value / 100.0


def load_baseline(path: Path, scenario: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the baseline report, None) or (None, why it cannot be compared with)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        return None, f"--compare {path}: {exc.strerror or exc}"
    except ValueError as exc:
        return None, f"--compare {path}: not JSON ({exc})"
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        return None, f"--compare {path}: not a bot report (no meta; written by an older bot?)"
    if data.get("scenario") != scenario:
        return None, f"--compare {path}: a {data.get('scenario')} report, this is {scenario}"
    try:
        figures(data)
    except (KeyError, TypeError) as exc:
        return None, f"--compare {path}: incomplete report (no {exc})"
    return data, None


def _verdict(name: str, base: float, value: float, tol: float) -> tuple[str, float]:
    """('better' | 'same' | 'worse' | 'regression', the signed change, + = worse)."""
    kind = kind_of(name)
    worse_by = value - base if kind.better == "lower" else base - value
    allowed = max(tol * abs(base), SLACK.get(kind.unit, 0.0))
    if worse_by > allowed:
        return "regression", worse_by
    if worse_by > 0:
        return "worse", worse_by
    if worse_by < 0:
        return "better", worse_by
    return "same", worse_by


def compare(
    baseline: dict[str, Any],
    report: dict[str, Any],
    tol: float,
    only: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per figure both have: baseline, value, delta, delta %, verdict."""
    theirs, ours = figures(baseline), figures(report)
    rows = []
    for name, value in ours.items():
        base = theirs.get(name)
        wanted = name in only if only else name not in SKIPPED_BY_DEFAULT
        if not wanted or base is None or value is None:
            continue
        verdict, _ = _verdict(name, base, value, tol)
        rows.append(
            {
                "figure": name,
                "baseline": base,
                "value": value,
                "delta": value - base,
                "delta_pct": (value - base) / abs(base) * 100.0 if base else None,
                "verdict": verdict,
            }
        )
    return rows


def comparison_report(
    path: Path, baseline: dict[str, Any], report: dict[str, Any], tol: float, only: list[str]
) -> dict[str, Any]:
    """The report's ``compare``: what was compared with, and every row."""
    rows = compare(baseline, report, tol, only or None)
    return {
        "baseline": str(path),
        "baseline_started_at": baseline["meta"].get("started_at"),
        "tolerance": tol,
        "rows": rows,
        "regressions": [row["figure"] for row in rows if row["verdict"] == "regression"],
    }


_STYLE = {"regression": "bold red", "worse": "yellow", "better": "green", "same": ""}


def print_comparison(comparison: dict[str, Any], console: Console) -> None:
    """The comparison as a table, regressions in red."""
    table = Table(
        title=f"against {comparison['baseline']} (tolerance {comparison['tolerance']:.0%})",
        show_header=True,
    )
    for column in ("figure", "baseline", "this run", "delta", "delta %", "verdict"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in comparison["rows"]:
        name = row["figure"]
        pct = row["delta_pct"]
        style = _STYLE[row["verdict"]]
        verdict = f"[{style}]{row['verdict']}[/]" if style else row["verdict"]
        table.add_row(
            name,
            show(name, row["baseline"]),
            show(name, row["value"]),
            f"{row['delta']:+,.4g}",
            "-" if pct is None else f"{pct:+.1f}%",
            verdict,
        )
    console.print(table)
