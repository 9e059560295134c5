"""The per-model table: client latency beside the server's timings (perf_analyzer-style).

One row per model of the mix; the rows are plain text so the terminal table and the
HTML report show the same thing.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from bot.figures import show

MEASURES = (
    "sent",
    "answered",
    "errors",
    "lost",
    "client latency ms p50/p99",
    "server total ms p50/p99",
    "queue wait ms p50/p99",
    "inference ms p50/p99",
    "client overhead ms p50/p99",
    "batch size mean/p99",
    "mean ms: queue wait",
    "mean ms: inference",
    "mean ms: other server work",
    "mean ms: client overhead",
)


def _pair(summary: dict[str, float]) -> str:
    if not summary["count"]:
        return "-"
    return f"{summary['p50_ms']:.2f} / {summary['p99_ms']:.2f}"


_WHERE = ("queue_wait_ms", "inference_ms", "other_server_ms", "client_overhead_ms")


def _where(server: dict[str, Any], client_mean_ms: float) -> list[str]:
    """Each part's mean and its share of the client's mean latency."""
    parts = server.get("where_the_time_went") or {}
    if not parts or client_mean_ms <= 0:
        return ["-"] * len(_WHERE)
    return [f"{parts[key]:.2f} ({parts[key] / client_mean_ms:.0%})" for key in _WHERE]


def _column(part: dict[str, Any]) -> list[str]:
    server = part["server"]
    batch = server["batch_size"]
    errors = ", ".join(f"{k} {v:,}" for k, v in sorted(part["errors"].items())) or "0"
    return [
        f"{part['sent']:,}",
        f"{part['answered']:,}",
        errors,
        f"{part['lost']:,}",
        _pair(part["latency"]),
        _pair(server["server_total"]),
        _pair(server["queue_wait"]),
        _pair(server["inference"]),
        _pair(server["client_overhead"]),
        f"{batch['mean']:.1f} / {batch['p99']:.0f}" if batch["max"] else "-",
        *_where(server, part["latency"].get("mean_ms", 0.0)),
    ]


def model_columns(report: dict[str, Any]) -> dict[str, list[str]]:
    """Per model that was sent anything, its value of each of MEASURES."""
    return {
        name: _column(part)
        for name, part in sorted((report.get("models") or {}).items())
        if part["sent"]
    }


def print_models(report: dict[str, Any], console: Console) -> None:
    """The per-model table, when the run sent inference requests."""
    columns = model_columns(report)
    if not columns:
        return
    warmup = float(report.get("warmup_s") or 0.0)
    after = f"; latencies after the {warmup:g} s warm-up" if warmup else ""
    table = Table(title=f"per model (server timings from each reply{after})", show_header=True)
    table.add_column("measure")
    for name in columns:
        table.add_column(name, justify="right")
    for index, measure in enumerate(MEASURES):
        table.add_row(measure, *(values[index] for values in columns.values()))
    console.print(table)


def print_thresholds(judged: list[dict[str, Any]], console: Console) -> None:
    """k6-style: one line per threshold, passed or failed, with where it came from."""
    if not judged:
        return
    table = Table(title="thresholds", show_header=True)
    for column in ("threshold", "from", "value", "result"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in judged:
        value = show(row["figure"], row["value"])
        result = "[green]passed[/]" if row["passed"] else "[bold red]failed[/]"
        table.add_row(f"{row['figure']} {row['op']} {row['limit']:g}", row["source"], value, result)
    console.print(table)
