"""soak: a steady load for a long time; the server's RSS and open files over time.

The server process is sampled from /proc/<pid> (RSS from ``status``, open files
from ``fd/``); the report has both series, their least-squares slope per minute
(a leak shows as a steady positive slope), the latency drift from the first third
of the steady seconds to the last (whole seconds after the warm-up, each third's
latencies merged into one distribution), and errors per second in the time series.

The leak verdict: the least-squares RSS slope in MiB per hour over the samples
after the RSS warm-up (allocators, buffers and caches grow at first, then plateau),
against ``--max-rss-slope-mib-per-h``; over it, or too few samples to tell, the
run fails.
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

WARM_UP_S = 1.0  # the least default RSS warm-up: the bot's own connection set-up
RSS_WARMUP_SHARE = 0.1  # default RSS warm-up: this share of the run (at least WARM_UP_S)
MIN_LEAK_SAMPLES = 3


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


def rss_warmup_s(duration_s: float, warmup_s: float | None) -> float:
    """The RSS warm-up: as given, or 10 % of the run (at least WARM_UP_S)."""
    return warmup_s if warmup_s is not None else max(WARM_UP_S, RSS_WARMUP_SHARE * duration_s)


def leak_verdict(
    samples: list[dict[str, float]], warmup_s: float, max_slope_mib_per_h: float | None
) -> dict[str, Any]:
    """The RSS slope (MiB/h, least squares after ``warmup_s``) judged against the threshold.

    ``verdict`` is ``leak``, ``no leak``, ``not judged`` (no threshold) or ``too few
    samples``; ``broken`` holds the clause that fails the run, if any.
    """
    steady = [s for s in samples if s["t"] >= warmup_s]
    enough = len(steady) >= MIN_LEAK_SAMPLES
    slope = (
        slope_per_minute([s["t"] for s in steady], [s["rss_mib"] for s in steady]) * 60.0
        if enough
        else None
    )
    broken: list[str] = []
    if max_slope_mib_per_h is None:
        verdict = "not judged"
    elif slope is None:
        verdict = "too few samples"
        broken.append(
            f"RSS slope not judged: {len(steady)} samples after the {warmup_s:g} s warm-up "
            f"(need {MIN_LEAK_SAMPLES})"
        )
    elif slope > max_slope_mib_per_h:
        verdict = "leak"
        broken.append(
            f"RSS grows {slope:.2f} MiB/h > {max_slope_mib_per_h:g} MiB/h "
            f"(least squares over {len(steady)} samples after {warmup_s:g} s)"
        )
    else:
        verdict = "no leak"
    return {
        "verdict": verdict,
        "rss_slope_mib_per_h": slope,
        "max_rss_slope_mib_per_h": max_slope_mib_per_h,
        "warmup_s": warmup_s,
        "samples": len(steady),
        "broken": broken,
    }


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
def run_soak(
    reactor: Any,
    plan: LoadPlan,
    pid: int | None,
    sample_s: float = 1.0,
    warmup_s: float | None = None,
    max_rss_slope_mib_per_h: float | None = None,
) -> Any:
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
    add_leak_verdict(
        report, samples, rss_warmup_s(plan.duration_s, warmup_s), max_rss_slope_mib_per_h
    )
    return report


def add_leak_verdict(
    report: dict[str, Any],
    samples: list[dict[str, float]],
    warmup_s: float,
    max_slope_mib_per_h: float | None,
) -> None:
    """Put the leak verdict in ``report`` (``leak``), its clause in ``broken_checks``
    when it fails the run, in ``held_checks`` when it was judged and held."""
    leak = leak_verdict(samples, warmup_s, max_slope_mib_per_h)
    report["leak"] = leak
    report["broken_checks"] = [*report.get("broken_checks", []), *leak["broken"]]
    if leak["verdict"] == "no leak":
        held = (
            f"RSS slope {leak['rss_slope_mib_per_h']:.2f} MiB/h <= {max_slope_mib_per_h:g} MiB/h "
            f"(least squares over {leak['samples']} samples after {warmup_s:g} s)"
        )
        report["held_checks"] = [*report.get("held_checks", []), held]
