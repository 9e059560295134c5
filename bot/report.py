"""Reports a person reads at a glance: a rich table, a JSON file, a matplotlib figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def slo_verdict(
    report: dict[str, Any], slo_p99_ms: float | None, max_error_rate: float
) -> list[str]:
    """The broken SLO clauses (empty when the run passed)."""
    broken = []
    sent = max(1, report["sent"])
    error_rate = (report["error_count"] + report["lost"]) / sent
    if error_rate > max_error_rate:
        broken.append(f"error rate {error_rate:.2%} > {max_error_rate:.2%}")
    if slo_p99_ms is not None and report["latency"]["p99_ms"] > slo_p99_ms:
        broken.append(f"p99 {report['latency']['p99_ms']:.2f} ms > {slo_p99_ms:.2f} ms")
    if report.get("wrong"):
        broken.append(f"{report['wrong']} wrong answers")
    if report.get("scenario") == "failover" and (report["lost"] or report["duplicates"]):
        broken.append(f"failover lost {report['lost']}, duplicated {report['duplicates']}")
    if report.get("scenario") == "stress":
        # A ramp ends by breaking the SLO on purpose; it fails only without any knee.
        broken = [b for b in broken if "wrong" in b]
        if not report.get("knee_rate"):
            broken.append("the SLO broke at the first step: no knee")
    return broken


def print_report(report: dict[str, Any], console: Console, duration_s: float) -> None:
    """The end-of-run table."""
    table = Table(title=f"bot {report['scenario']}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    lat = report["latency"]
    rows = [
        ("sent", f"{report['sent']:,}"),
        ("answered", f"{report['answered']:,}"),
        ("throughput", f"{report['answered'] / max(duration_s, 1e-9):,.0f} req/s"),
        (
            "p50 / p90 / p99 / p99.9 / max",
            f"{lat['p50_ms']:.2f} / {lat['p90_ms']:.2f} / {lat['p99_ms']:.2f} / "
            f"{lat['p99.9_ms']:.2f} / {lat['max_ms']:.2f} ms",
        ),
        ("errors", ", ".join(f"{k}: {v}" for k, v in sorted(report["errors"].items())) or "0"),
        ("lost", str(report["lost"])),
        ("wrong answers", str(report["wrong"])),
    ]
    for key in (
        "retried",
        "duplicates",
        "time_to_recover_s",
        "knee_rate",
        "served",
        "rss_slope_mib_per_min",
        "fd_slope_per_min",
        "p99_drift_ms",
    ):
        if key in report and (report[key] or key in ("knee_rate", "served", "duplicates")):
            value = report[key]
            rows.append(
                (key.replace("_", " "), f"{value:,.3f}" if isinstance(value, float) else str(value))
            )
    if "udp" in report:
        udp = report["udp"]
        rows.append(
            (
                "udp received / lost / reordered / dup",
                f"{udp['received']} / {udp['lost']} / {udp['reordered']} / {udp['duplicates']}",
            )
        )
        rows.append(
            (
                "udp delay p50 / p99",
                f"{udp['delay']['p50_ms']:.2f} / {udp['delay']['p99_ms']:.2f} ms",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def write_json(report: dict[str, Any], path: Path) -> None:
    """The whole report, time series included."""
    path.write_text(json.dumps(report, indent=1))


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Rate and latency percentiles over time (and the target rate for stress)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["series"]
    t = [row["t"] for row in series]
    fig, (rate_ax, lat_ax) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    rate_ax.plot(t, [row["answered"] for row in series], label="answered/s")
    rate_ax.plot(t, [row["errors"] for row in series], label="errors/s")
    if any(row["target_rate"] for row in series):
        rate_ax.plot(t, [row["target_rate"] for row in series], "--", label="target rate")
    rate_ax.set_ylabel("requests / s")
    rate_ax.legend(loc="upper left")
    lat_ax.plot(t, [row["p50_ms"] for row in series], label="p50")
    lat_ax.plot(t, [row["p99_ms"] for row in series], label="p99")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_xlabel("seconds")
    lat_ax.legend(loc="upper left")
    fig.suptitle(f"bot {report['scenario']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
