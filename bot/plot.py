"""``--plot out.png``: rate and latency over time (the ramp for stress, RSS for soak)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_plot(report: dict[str, Any], path: Path) -> None:
    """A matplotlib figure (Agg backend, no display needed) of the report's time series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A partial second (the run's first and last) would plot a handful of replies as a
    # rate dip and as that second's latency: only whole seconds are drawn.
    series = [row for row in report["series"] if not row.get("partial")]
    t = [row["t"] for row in series]
    warm = [row["t"] for row in report["series"] if row.get("warmup")]
    stress = report["scenario"] == "stress" and bool(report.get("steps"))
    soak = bool(report.get("resources"))
    rows = 3 if stress or soak else 2
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3 * rows))
    rate_ax, lat_ax = axes[0], axes[1]
    rate_ax.plot(t, [row["answered"] for row in series], label="answered/s")
    rate_ax.plot(t, [row["errors"] for row in series], label="errors/s")
    if any(row.get("target_rate") for row in series):
        rate_ax.plot(t, [row["target_rate"] for row in series], "--", label="target rate")
    rate_ax.set_ylabel("requests / s")
    rate_ax.legend(loc="upper left")
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")):
        if any(key in row for row in series):
            lat_ax.plot(t, [row.get(key, 0.0) for row in series], label=label)
    if warm:
        for ax in (rate_ax, lat_ax):
            ax.axvspan(min(warm), max(warm) + 1, color="grey", alpha=0.15, label="warm-up")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_xlabel("seconds")
    lat_ax.legend(loc="upper left")
    if stress:
        ramp_ax = axes[2]
        steps = report["steps"]
        rates = [s["target_rate"] for s in steps]
        ramp_ax.plot(rates, [s["p99_ms"] for s in steps], "o-", label="p99 per step")
        ramp_ax.plot(rates, [s["p50_ms"] for s in steps], "o-", label="p50 per step")
        if report.get("knee_rate"):
            ramp_ax.axvline(report["knee_rate"], color="red", linestyle=":", label="knee")
        ramp_ax.set_xlabel("target rate (requests / s)")
        ramp_ax.set_ylabel("latency (ms)")
        ramp_ax.legend(loc="upper left")
    if soak:
        samples = report["resources"]
        rss_ax = axes[2]
        times = [s["t"] for s in samples]
        rss_ax.plot(times, [s["rss_mib"] for s in samples], label="server RSS (MiB)")
        rss_ax.set_xlabel("seconds")
        rss_ax.set_ylabel("RSS (MiB)")
        fd_ax = rss_ax.twinx()
        fd_ax.plot(times, [s["fds"] for s in samples], "g--", label="open files")
        fd_ax.set_ylabel("open files")
        rss_ax.legend(loc="upper left")
        fd_ax.legend(loc="lower right")
    fig.suptitle(f"bot {report['scenario']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
