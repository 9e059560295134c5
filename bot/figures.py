"""The named figures of a report: what ``--threshold`` judges and ``--compare`` compares.

Each figure has a direction (``lower`` or ``higher`` is better), a unit, and the
scenarios that report it. Per-model figures take a tag, k6-style:
``p99_ms{model=lstm_timeseries}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.udp_score import loss_rate


@dataclass(frozen=True)
class FigureKind:
    """What a figure means: which way is better, its unit, where it exists."""

    better: str  # "lower" or "higher"
    unit: str  # "ms", "fraction", "req/s", "MiB/h", "characters"
    scenarios: tuple[str, ...] | None = None  # None: every scenario
    per_model: bool = False  # may take {model=NAME}
    needs: str | None = None  # a flag the figure needs, e.g. "--udp-listen"


_TIMED = ("load", "soak", "failover", "stress", "concurrency")
_LATENCY = ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")

KINDS: dict[str, FigureKind] = {
    **{name: FigureKind("lower", "ms", per_model=True) for name in _LATENCY},
    "error_rate": FigureKind("lower", "fraction", per_model=True),
    "req_s": FigureKind("higher", "req/s", ("load", "soak", "failover", "streams")),
    "knee_rate": FigureKind("higher", "req/s", ("stress",)),
    "served_ratio": FigureKind("higher", "fraction", ("concurrency",)),
    "connect_p99_ms": FigureKind("lower", "ms", ("concurrency",)),
    "first_reply_p99_ms": FigureKind("lower", "ms", ("concurrency",)),
    "udp_loss": FigureKind("lower", "fraction", needs="--udp-listen"),
    "rss_slope_mib_per_h": FigureKind("lower", "MiB/h", ("soak",)),
    "on_time_ratio": FigureKind("higher", "fraction", ("streams",)),
    "max_characters": FigureKind("higher", "characters", ("streams",)),
    **{
        f"{part}_{p}_ms": FigureKind("lower", "ms", _TIMED, per_model=True)
        for part in ("server_total", "queue_wait", "inference", "client_overhead")
        for p in ("p50", "p99")
    },
}

_NAME = re.compile(r"^(?P<base>[a-z0-9_.]+)(?:\{model=(?P<model>[^{}=,\s]+)\})?$")


def split_name(name: str) -> tuple[str, str | None]:
    """``p99_ms{model=x}`` -> (``p99_ms``, ``x``); ValueError when it is no figure."""
    match = _NAME.match(name)
    if match is None or match["base"] not in KINDS:
        known = ", ".join(KINDS)
        raise ValueError(f"unknown figure {name!r} (known: {known}; per model: NAME{{model=M}})")
    base, model = match["base"], match["model"]
    if model is not None and not KINDS[base].per_model:
        raise ValueError(f"{base} has no per-model value")
    return base, model


def kind_of(name: str) -> FigureKind:
    """The kind of a (possibly tagged) figure name."""
    return KINDS[split_name(name)[0]]


def _error_rate(part: dict[str, Any]) -> float:
    return float(part["error_count"] + part["lost"]) / max(1, int(part["sent"]))


def _timed(report: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in _LATENCY:
        out[name] = report["latency"][name]
    out["error_rate"] = _error_rate(report)
    for model, part in (report.get("models") or {}).items():
        tag = f"{{model={model}}}"
        for name in _LATENCY:
            out[name + tag] = part["latency"][name]
        out["error_rate" + tag] = _error_rate(part)
        server = part.get("server") or {}
        for key in ("server_total", "queue_wait", "inference", "client_overhead"):
            summary = server.get(key)
            if summary is not None and summary["count"]:
                out[f"{key}_p50_ms{tag}"] = summary["p50_ms"]
                out[f"{key}_p99_ms{tag}"] = summary["p99_ms"]
    return out


def figures(report: dict[str, Any]) -> dict[str, float | None]:
    """Every figure the report has (None: it has the figure but no value)."""
    scenario = report["scenario"]
    out = _timed(report)
    duration = float(report.get("duration_s") or 0.0)
    if scenario in ("load", "soak", "failover", "streams") and duration > 0:
        out["req_s"] = report["answered"] / duration
    if scenario == "stress":
        out["knee_rate"] = float(report.get("knee_rate") or 0.0)
    if scenario == "concurrency":
        out["served_ratio"] = report["served"] / max(1, report["connections"])
        out["connect_p99_ms"] = report["connect_latency"]["p99_ms"]
        out["first_reply_p99_ms"] = report["first_reply_latency"]["p99_ms"]
    if scenario == "soak" and report.get("leak"):
        out["rss_slope_mib_per_h"] = report["leak"]["rss_slope_mib_per_h"]
    if scenario == "streams":
        out["on_time_ratio"] = float(report["on_time_ratio"])
        if "max_characters" in report:
            out["max_characters"] = float(report["max_characters"])
    udp = report.get("udp")
    if udp:
        out["udp_loss"] = loss_rate(udp["received"] - udp["duplicates"], udp["lost"])
    return out


def show(name: str, value: float | None) -> str:
    """A figure's value with its unit, for tables and verdicts."""
    if value is None:
        return "-"
    unit = kind_of(name).unit
    if unit == "fraction":  # two decimals, more for a tiny non-zero share
        return f"{value:.2%}" if value == 0 or abs(value) >= 1e-4 else f"{value:.4%}"
    if unit == "ms":
        return f"{value:,.2f} ms"
    if unit == "characters":
        return f"{value:,.0f}"
    return f"{value:,.1f} {unit}"
