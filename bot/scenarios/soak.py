"""soak: a steady load for a long time; the server's RSS and open files over time.

The server process is sampled from /proc/<pid> (RSS from ``status``, open files
from ``fd/``); the report has both series, their least-squares slope per minute
(a leak shows as a steady positive slope), the latency drift from the first third
of the steady seconds to the last (whole seconds after the warm-up, each third's
latencies merged into one distribution), and errors per second in the time series.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall

from bot.histogram import merge_encoded
from bot.runner import LoadPlan, LoadRun
from bot.stats import RunStats


def read_pid(path: Path) -> int:
    """The pid in ``path``: a daemon port file ({"pid": N, ...}) or a bare number."""
    text = path.read_text().strip()
    if text.startswith("{"):
        return int(json.loads(text)["pid"])
    return int(text)


def process_sample(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of ``pid`` from /proc."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope of ``values`` per minute."""
    if len(times_s) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(times_s), np.asarray(values), 1)[0] * 60.0)


def steady_rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seconds that describe the steady state: whole, after the warm-up, with answers."""
    return [
        row
        for row in series
        if row.get("answered") and not row.get("partial") and not row.get("warmup")
    ]


def latency_drift_ms(series: list[dict[str, Any]], percentile: float = 99.0) -> float | None:
    """``percentile`` of the last third of the steady seconds minus that of the first third.

    Each third's latencies are merged into one distribution (from the rows' encoded
    histograms) before the percentile is taken: a mean of per-second percentiles
    would weigh a second of 13 replies like one of 5,000. None with fewer than
    three steady seconds.
    """
    rows = steady_rows(series)
    if len(rows) < 3:
        return None
    third = len(rows) // 3
    first = merge_encoded(row["histogram"] for row in rows[:third])
    last = merge_encoded(row["histogram"] for row in rows[-third:])
    return (
        float(last.get_value_at_percentile(percentile) - first.get_value_at_percentile(percentile))
        / 1000.0
    )


def resource_summary(samples: list[dict[str, float]], warmup_s: float) -> dict[str, Any]:
    """Slopes and end points of the /proc samples (the slopes leave out the warm-up)."""
    steady = [s for s in samples if s["t"] >= warmup_s] or samples
    times = [s["t"] for s in steady]
    # A leak keeps growing; buffers grown in a burst reach a plateau. Compare the halves.
    half = [s for s in steady if s["t"] >= steady[-1]["t"] / 2] if steady else []
    return {
        "resources": samples,
        "rss_slope_mib_per_min": slope_per_minute(times, [s["rss_mib"] for s in steady]),
        "rss_slope_second_half_mib_per_min": slope_per_minute(
            [s["t"] for s in half], [s["rss_mib"] for s in half]
        ),
        "fd_slope_per_min": slope_per_minute(times, [s["fds"] for s in steady]),
        "rss_start_mib": samples[0]["rss_mib"] if samples else 0.0,
        "rss_end_mib": samples[-1]["rss_mib"] if samples else 0.0,
        "fds_start": samples[0]["fds"] if samples else 0,
        "fds_end": samples[-1]["fds"] if samples else 0,
    }


@inlineCallbacks
def run_soak(reactor: Any, plan: LoadPlan, pid: int | None, sample_s: float = 1.0) -> Any:
    """Run ``plan`` while sampling ``pid`` (None: another bot process samples it)."""
    stats = RunStats(started=reactor.seconds())
    samples: list[dict[str, float]] = []

    def sample() -> None:
        assert pid is not None
        try:
            rss, fds = process_sample(pid)
        except OSError:  # the server is gone; the load will show it
            return
        samples.append({"t": reactor.seconds() - stats.started, "rss_mib": rss, "fds": fds})

    sampler = LoopingCall(sample)
    sampler.clock = reactor
    if pid is not None:
        sampler.start(sample_s, now=True)
    try:
        yield LoadRun(reactor, plan, stats).start()
    finally:
        if sampler.running:
            sampler.stop()
    report = {"scenario": "soak", **stats.to_json()}
    report.update(resource_summary(samples, plan.warmup_s))
    report["p99_drift_ms"] = latency_drift_ms(report["series"])
    report["p50_drift_ms"] = latency_drift_ms(report["series"], 50.0)
    return report
