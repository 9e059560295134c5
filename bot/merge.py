"""One report from the reports of ``--processes N`` workers, merged exactly.

Counts add up; every histogram (the totals, each second of the time series, the
concurrency scenario's connect and first-reply latencies, the streams scenario's
send lag, server tick lag, step time and UDP delay) is decoded and added, so the
percentiles are those of one histogram of all the values. Stress steps come from
the parent's own merged verdicts (bot/workers.py StepBarrier).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bot.histogram import encode, merge_encoded, summary_ms
from bot.scenarios.failover import merge_failover
from bot.scenarios.soak import add_leak_verdict, latency_drift_ms, resource_summary
from bot.scenarios.stress import knee_of
from bot.stats import merge_reports


def merge_worker_reports(
    scenario: str,
    parts: list[dict[str, Any]],
    steps: list[dict[str, Any]] | None = None,
    knee_rate: float | None = None,
) -> dict[str, Any]:
    """The merged report of one scenario."""
    if scenario == "streams":
        return {**merge_stream_reports(parts), "processes": len(parts)}
    merged = {"scenario": scenario, **merge_reports(parts), "processes": len(parts)}
    if "payload" in parts[0]:
        merged["payload"] = parts[0]["payload"]  # every worker sends the same requests
    if scenario == "concurrency":
        merged["connections"] = sum(p["connections"] for p in parts)
        merged["served"] = sum(p["served"] for p in parts)
        merged["fd_limit"] = min(p["fd_limit"] for p in parts)
        failures: Counter[str] = Counter()
        for part in parts:
            failures.update(part["connect_failures"])
        merged["connect_failures"] = dict(failures)
        for key in ("retried_by_code", "retries_given_up"):
            tally: Counter[str] = Counter()
            for part in parts:
                tally.update(part.get(key, {}))
            merged[key] = dict(tally)
        for name in ("connect", "first_reply"):
            histogram = merge_encoded(p[f"{name}_histogram"] for p in parts)
            merged[f"{name}_latency"] = summary_ms(histogram)
            merged[f"{name}_histogram"] = encode(histogram)
        merged["timeline"] = merge_timelines([p.get("timeline", []) for p in parts])
    elif scenario == "failover":
        recovered = [p["time_to_recover_s"] for p in parts if p["time_to_recover_s"] is not None]
        merged["time_to_recover_s"] = max(recovered) if recovered else None
        merged["addresses"] = parts[0]["addresses"]
        merged["actions"] = [a for p in parts for a in p["actions"]]
        by_server: Counter[str] = Counter()
        for part in parts:
            by_server.update(part["answered_by_server"])
        merged["answered_by_server"] = dict(by_server)
        merge_failover(merged, parts)
    elif scenario == "soak":
        samples = (p["resources"] for p in parts if p["resources"])
        sampled: list[dict[str, float]] = next(samples, [])
        merged.update(resource_summary(sampled, merged["warmup_s"]))
        merged["p99_drift_ms"] = latency_drift_ms(merged["series"])
        merged["p50_drift_ms"] = latency_drift_ms(merged["series"], 50.0)
        leak = parts[0]["leak"]  # worker 0 sampled; every worker has the same settings
        add_leak_verdict(merged, sampled, leak["warmup_s"], leak["max_rss_slope_mib_per_h"])
    elif scenario == "stress":
        merged["steps"] = steps if steps is not None else parts[0]["steps"]
        merged["knee_rate"] = knee_rate if knee_rate is not None else parts[0]["knee_rate"]
        merged["knee_coarse_rate"] = knee_of([s for s in merged["steps"] if s["phase"] == "ramp"])
        merged["step_slo"] = parts[0]["step_slo"]
    return merged


def merge_timelines(timelines: list[list[dict[str, float]]], buckets: int = 100) -> list[Any]:
    """Several processes' connection timelines (counts so far) summed on one time grid."""
    end = max((rows[-1]["t"] for rows in timelines if rows), default=0.0)
    if end <= 0:
        return []
    out = []
    for i in range(1, buckets + 1):
        t = end * i / buckets
        row: dict[str, float] = {"t": round(t, 6), "established": 0, "first_replies": 0}
        for rows in timelines:
            seen = [r for r in rows if r["t"] <= t + 1e-9]
            if seen:
                row["established"] += seen[-1]["established"]
                row["first_replies"] += seen[-1]["first_replies"]
        out.append(row)
    return out


_SUMMED = (
    "characters",
    "connections",
    "tick_results",
    "observations_sent",
    "observations_served",
    "on_time",
    "late",
    "unserved",
    "coalesced",
    "wrong_rows",
    "unknown_rows",
    "foreign_rows",
    "closed_by_server",
)


def merge_stream_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' streams reports as one (counts added, histograms merged exactly)."""
    first = parts[0]
    merged: dict[str, Any] = {**first, **merge_reports(parts)}
    for key in _SUMMED:
        merged[key] = sum(int(p[key]) for p in parts)
    merged["frames"] = max(int(p["frames"]) for p in parts)  # each process sends every frame
    sent = merged["observations_sent"]
    merged["on_time_ratio"] = merged["on_time"] / sent if sent else 0.0
    errors: dict[str, int] = {}
    for part in parts:
        for code, count in part["stream_errors"].items():
            errors[code] = errors.get(code, 0) + count
    merged["stream_errors"] = errors
    for name in ("send_lag", "server_tick_lag", "server_step"):
        histogram = merge_encoded(p[f"{name}_histogram"] for p in parts)
        merged[name] = summary_ms(histogram)
        merged[f"{name}_histogram"] = encode(histogram)
    if first.get("udp"):
        delay = merge_encoded(p["udp"]["delay_histogram"] for p in parts)
        udp = {
            key: sum(int(p["udp"][key]) for p in parts)
            for key in first["udp"]
            if key not in ("delay", "delay_histogram")
        }
        merged["udp"] = {**udp, "delay": summary_ms(delay), "delay_histogram": encode(delay)}
    return merged
