"""``--html PATH``: one self-contained HTML file a browser opens without a network.

The summary, the verdict and every check, the thresholds, the per-model table with
the server's timings, the comparison with a baseline, the stress ramp or the
concurrency sweep, the plot (a PNG embedded as a ``data:`` URI), the parameters
and the servers' /status. No script, no stylesheet or font fetched from anywhere.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from bot.breakdown import MEASURES, model_columns
from bot.figures import show
from bot.plot import write_plot
from bot.report import stream_rows, summary_rows

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.held { color: #14732b; font-weight: bold; } .broken { color: #b00020; font-weight: bold; }
.verdict { font-size: 1.2em; padding: .5em .8em; border-radius: 4px; display: inline-block; }
.verdict.held { background: #e3f5e8; } .verdict.broken { background: #fde7ea; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 1em; overflow: auto; max-height: 30em; }
code { background: #f2f2f2; padding: 0 .2em; }
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _mark(held: bool, text: str = "") -> str:
    label = text or ("passed" if held else "failed")
    return f'<span class="{"held" if held else "broken"}">{escape(label)}</span>'


def plot_data_uri(report: dict[str, Any]) -> str:
    """The report's plot as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    write_plot(report, buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _sections(report: dict[str, Any], verdict: str, held: bool) -> list[str]:
    meta = report.get("meta") or {}
    out = [
        f"<h1>bot {escape(report['scenario'])}</h1>",
        f"<p><code>{escape(meta.get('command', report.get('command', '')))}</code></p>",
        f'<p class="verdict {"held" if held else "broken"}">{escape(verdict)}</p>',
        "<h2>Checks</h2>",
        _table(
            ("check", "result"),
            ((escape(c["detail"]), _mark(c["held"])) for c in report.get("checks", [])),
        ),
    ]
    if report.get("not_checked"):
        out.append("<p>Not checked: " + escape("; ".join(report["not_checked"])) + "</p>")
    rows = stream_rows(report) if report["scenario"] == "streams" else summary_rows(report)
    summary = ((escape(k), escape(v)) for k, v in rows)
    out += ["<h2>Summary</h2>", _table(("measure", "value"), summary)]
    if report.get("thresholds"):
        out += [
            "<h2>Thresholds</h2>",
            _table(
                ("threshold", "from", "value", "result"),
                (
                    (
                        escape(f"{t['figure']} {t['op']} {t['limit']:g}"),
                        escape(t["source"]),
                        escape(show(t["figure"], t["value"])),
                        _mark(t["passed"]),
                    )
                    for t in report["thresholds"]
                ),
            ),
        ]
    columns = model_columns(report)
    if columns:
        out += [
            "<h2>Per model: client latency and the server's timings</h2>",
            _table(
                ("measure", *columns),
                (
                    (escape(measure), *(escape(v[i]) for v in columns.values()))
                    for i, measure in enumerate(MEASURES)
                ),
            ),
        ]
    out += _comparison(report.get("compare"))
    out += _steps(report)
    out += [
        "<h2>Plot</h2>",
        f'<img alt="bot {escape(report["scenario"])} plot" src="{plot_data_uri(report)}">',
    ]
    parameters = meta.get("parameters") or {}
    out += [
        "<h2>Run</h2>",
        _table(
            ("run", ""),
            (
                (escape(key), escape(str(meta.get(key))))
                for key in ("started_at", "finished_at", "bot_version", "git_commit", "host")
            ),
        ),
        "<details><summary>Every parameter</summary>",
        _table(
            ("flag", "value"),
            ((escape(k), escape(json.dumps(v))) for k, v in parameters.items()),
        ),
        "</details>",
    ]
    status = report.get("server_status") or {}
    out += [
        "<h2>Server /status</h2>",
        f"<p>{escape(status.get('note', ''))}</p>",
    ]
    for when in ("before", "after"):
        if status.get(when):
            text = json.dumps(status[when], indent=1)
            out.append(f"<details><summary>{when}</summary><pre>{escape(text)}</pre></details>")
    notes = report.get("notes") or []
    if notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in notes[:50])
        out += ["<h2>Notes</h2>", f"<ul>{items}</ul>"]
    return out


def _comparison(comparison: dict[str, Any] | None) -> list[str]:
    if not comparison:
        return []
    rows = []
    for row in comparison["rows"]:
        name, pct = row["figure"], row["delta_pct"]
        rows.append(
            (
                escape(name),
                escape(show(name, row["baseline"])),
                escape(show(name, row["value"])),
                "-" if pct is None else f"{pct:+.1f}%",
                _mark(row["verdict"] != "regression", row["verdict"]),
            )
        )
    title = (
        f"<h2>Against {escape(comparison['baseline'])} "
        f"(tolerance {comparison['tolerance']:.0%})</h2>"
    )
    return [title, _table(("figure", "baseline", "this run", "delta %", "verdict"), rows)]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return escape(f"{value:,.2f}")
    if isinstance(value, bool):
        return _mark(value, "yes" if value else "no")
    if isinstance(value, int):
        return escape(f"{value:,}")
    return escape(str(value))


_STEP_KEYS = ("target_rate", "achieved_rate", "p50_ms", "p99_ms", "error_rate", "held")
_SWEEP_KEYS = (
    "connections",
    "served",
    "connect_p50_ms",
    "connect_p99_ms",
    "first_reply_p50_ms",
    "first_reply_p99_ms",
    "retried",
)


def _steps(report: dict[str, Any]) -> list[str]:
    if report["scenario"] == "stress" and report.get("steps"):
        rows = (
            (*(_cell(step[k]) for k in _STEP_KEYS), escape("; ".join(step.get("broken", []))))
            for step in report["steps"]
        )
        return ["<h2>Stress ramp</h2>", _table((*_STEP_KEYS, "limit broken"), rows)]
    if report.get("sweep"):
        rows = (tuple(_cell(row[k]) for k in _SWEEP_KEYS) for row in report["sweep"])
        return ["<h2>Concurrency sweep</h2>", _table(_SWEEP_KEYS, rows)]
    return []


def write_html(report: dict[str, Any], path: Path, verdict: str, held: bool) -> None:
    """The whole report as one HTML file (``verdict``: the run's last line)."""
    body = "\n".join(_sections(report, verdict, held))
    title = escape(f"bot {report['scenario']} {report.get('meta', {}).get('started_at', '')}")
    path.write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
