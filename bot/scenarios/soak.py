"""soak: a steady load for a long time; the server's RSS and open files over time."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall

from bot.runner import LoadPlan, LoadRun
from bot.stats import RunStats, summary_ms


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


@inlineCallbacks
def run_soak(reactor: Any, plan: LoadPlan, pid: int, sample_s: float = 1.0) -> Any:
    """Run ``plan`` while sampling ``pid``; report slopes and latency drift."""
    stats = RunStats(started=reactor.seconds())
    samples: list[dict[str, float]] = []

    def sample() -> None:
        rss, fds = process_sample(pid)
        samples.append({"t": reactor.seconds() - stats.started, "rss_mib": rss, "fds": fds})

    sampler = LoopingCall(sample)
    sampler.clock = reactor
    sampler.start(sample_s, now=True)
    try:
        yield LoadRun(reactor, replace(plan), stats).start()
    finally:
        sampler.stop()
    # Skip the first second: it holds the bot's own connection set-up.
    samples_steady = [s for s in samples if s["t"] >= 1.0] or samples
    times = [s["t"] for s in samples_steady]
    series = stats.to_json()["series"]
    third = max(1, len(series) // 3)
    first_p99 = float(np.mean([r["p99_ms"] for r in series[:third]])) if series else 0.0
    last_p99 = float(np.mean([r["p99_ms"] for r in series[-third:]])) if series else 0.0
    return {
        "scenario": "soak",
        **stats.to_json(),
        "resources": samples,
        "rss_slope_mib_per_min": slope_per_minute(times, [s["rss_mib"] for s in samples_steady]),
        "fd_slope_per_min": slope_per_minute(times, [s["fds"] for s in samples_steady]),
        "rss_start_mib": samples[0]["rss_mib"] if samples else 0.0,
        "rss_end_mib": samples[-1]["rss_mib"] if samples else 0.0,
        "p99_drift_ms": last_p99 - first_p99,
        "latency_overall": summary_ms(stats.histogram),
    }
