"""``--plot out.png``: rate and latency over time (the ramp for stress, RSS for soak)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

from bot.histogram import decode

# Failover events drawn as vertical lines: report key, label, colour.
MARKERS = (
    ("kill_s", "kill", "black"),
    ("recovered_s", "recovered", "tab:gray"),
    ("restart_s", "restart", "tab:brown"),
    ("back_home_s", "clients back home", "purple"),
)


def mark_events(ax: Any, markers: dict[str, float | None], label: bool) -> None:
    """Vertical lines at the failover events that happened."""
    for key, name, colour in MARKERS:
        at = markers.get(key)
        if at is not None:
            ax.axvline(at, color=colour, linestyle="--", linewidth=1, label=name if label else None)


def plot_ramp(ax: Any, report: dict[str, Any]) -> None:
    """Stress: p50/p99 and the error rate per step, the SLO limits and the knee."""
    steps = sorted(report["steps"], key=lambda s: s["target_rate"])
    ramp = [s for s in steps if s.get("phase", "ramp") == "ramp"]
    refine = [s for s in steps if s.get("phase") == "refine"]
    rates = [s["target_rate"] for s in ramp]
    ax.plot(rates, [s["p99_ms"] for s in ramp], "o-", label="p99 per step")
    ax.plot(rates, [s["p50_ms"] for s in ramp], "o-", label="p50 per step")
    if refine:
        ax.plot(
            [s["target_rate"] for s in refine],
            [s["p99_ms"] for s in refine],
            "x",
            markersize=9,
            label="p99, bisection steps",
        )
    slo = report.get("step_slo") or {}
    if slo.get("p99_ms") is not None:
        ax.axhline(slo["p99_ms"], color="red", linestyle="--", label="p99 SLO")
    if report.get("knee_rate"):
        ax.axvline(report["knee_rate"], color="red", linestyle=":", label="knee")
    ax.set_xlabel("target rate (requests / s)")
    ax.set_ylabel("latency (ms)")
    ax.legend(loc="upper left", fontsize="small")
    err_ax = ax.twinx()
    err_ax.plot(
        [s["target_rate"] for s in steps],
        [100.0 * s["error_rate"] for s in steps],
        "s:",
        color="tab:purple",
        label="error rate per step",
    )
    if slo.get("max_error_rate") is not None:
        limit = 100.0 * slo["max_error_rate"]
        err_ax.axhline(limit, color="tab:purple", linestyle="-.", label="max error rate")
    err_ax.set_ylabel("errors + lost (%)")
    err_ax.legend(loc="lower right", fontsize="small")


def plot_udp(ax: Any, per_source: dict[str, Any]) -> None:
    """UDP: datagrams received and lost per second, and the jitter, per sending server."""
    jitter_ax = ax.twinx()
    for source, score in per_source.items():
        rows = score["series"]
        t = [row["t"] for row in rows]
        (line,) = ax.plot(t, [row["received"] for row in rows], label=f"rcvd/s {source}")
        ax.plot(t, [row["lost"] for row in rows], "x", color=line.get_color())
        jitter_ax.plot(
            t,
            [row["jitter_ms"] for row in rows],
            ":",
            color=line.get_color(),
            label=f"jitter {source}",
        )
    ax.set_ylabel("datagrams / s (x: lost)")
    ax.set_xlabel("seconds")
    jitter_ax.set_ylabel("jitter (ms, RFC 3550)")
    ax.legend(loc="upper left", fontsize="small")
    jitter_ax.legend(loc="upper right", fontsize="small")


CONCURRENCY_LINES = (
    ("connect", "connect", "tab:blue"),
    ("first_reply", "first reply", "tab:orange"),
)
CDF_PERCENTILES = [0.0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 100.0]


def plot_concurrency(report: dict[str, Any], path: Path | BinaryIO) -> None:
    """Concurrency: connections established and first replies over time, the connect and
    first-reply latency distributions, and with --sweep the latencies per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report.get("sweep") or []
    rows = 3 if sweep else 2
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3 * rows))
    timeline = report.get("timeline") or []
    t = [row["t"] for row in timeline]
    ax = axes[0]
    ax.plot(t, [row["established"] for row in timeline], label="connections established")
    ax.plot(t, [row["first_replies"] for row in timeline], label="correct first replies")
    asked = sweep[-1]["connections"] if sweep else report["connections"]
    ax.axhline(asked, color="grey", linestyle=":", label="connections asked for")
    ax.set_xlabel("seconds" + (" (the largest sweep step)" if sweep else ""))
    ax.set_ylabel("clients (so far)")
    ax.legend(loc="lower right", fontsize="small")
    ax = axes[1]
    for key, label, colour in CONCURRENCY_LINES:
        histogram = decode(report.get(f"{key}_histogram", ""))
        if histogram.get_total_count():
            ms = [histogram.get_value_at_percentile(p) / 1000.0 for p in CDF_PERCENTILES]
            ax.plot(ms, CDF_PERCENTILES, color=colour, label=label)
    ax.set_xlabel("latency (ms)" + (", every sweep step" if sweep else ""))
    ax.set_ylabel("percentile")
    ax.legend(loc="lower right", fontsize="small")
    if sweep:
        ax = axes[2]
        sizes = [row["connections"] for row in sweep]
        for key, label, colour in CONCURRENCY_LINES:
            for p, style in (("p50", "o--"), ("p99", "o-")):
                values = [row[f"{key}_{p}_ms"] for row in sweep]
                ax.plot(sizes, values, style, color=colour, label=f"{label} {p}")
        ax.set_xlabel("connections at once")
        ax.set_ylabel("latency (ms)")
        ax.legend(loc="upper left", fontsize="small")
    fig.suptitle("bot concurrency")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write_plot(report: dict[str, Any], path: Path | BinaryIO) -> None:
    """A matplotlib figure (Agg backend, no display needed) of the report's time series,
    as PNG, to a file or a binary stream."""
    if report["scenario"] == "concurrency":
        plot_concurrency(report, path)
        return
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
    udp = (report.get("udp") or {}).get("per_source")
    rows = (3 if stress or soak else 2) + (1 if udp else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3 * rows))
    if udp:
        plot_udp(axes[-1], udp)
    rate_ax, lat_ax = axes[0], axes[1]
    marker = "o" if len(t) < 20 else None  # a short run's few whole seconds stay visible
    rate_ax.plot(t, [row["answered"] for row in series], marker=marker, label="answered/s")
    rate_ax.plot(t, [row["errors"] for row in series], marker=marker, label="errors/s")
    if any(row.get("target_rate") for row in series):
        rate_ax.plot(t, [row["target_rate"] for row in series], "--", label="target rate")
    for server, points in report.get("server_series", {}).items():
        answered = dict(points)  # a second without answers from a server is a zero, not a gap
        rate_ax.plot(t, [answered.get(second, 0) for second in t], ":", label=f"by {server}")
    markers = report.get("markers") or {}
    mark_events(rate_ax, markers, label=True)
    mark_events(lat_ax, markers, label=False)
    rate_ax.set_ylabel("requests / s")
    rate_ax.legend(loc="upper left", fontsize="small")
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")):
        if any(key in row for row in series):
            lat_ax.plot(t, [row.get(key, 0.0) for row in series], marker=marker, label=label)
    if warm:
        for ax in (rate_ax, lat_ax):
            ax.axvspan(min(warm), max(warm) + 1, color="grey", alpha=0.15, label="warm-up")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_xlabel("seconds")
    lat_ax.legend(loc="upper left")
    if stress:
        plot_ramp(axes[2], report)
        slo = report.get("step_slo") or {}
        if slo.get("p99_ms") is not None:
            lat_ax.axhline(slo["p99_ms"], color="red", linestyle="--", label="p99 SLO")
            lat_ax.legend(loc="upper left")
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
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
