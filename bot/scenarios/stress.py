"""stress: raise the open-loop rate step by step until the SLO breaks; report the knee."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from bot.runner import LoadPlan, LoadRun
from bot.stats import RunStats, summary_ms


@dataclass(frozen=True)
class Ramp:
    """Where the ramp starts, how it grows and when it counts as broken."""

    start_rate: float = 1000.0
    step_rate: float = 1000.0
    step_s: float = 3.0
    max_steps: int = 30
    slo_p99_ms: float = 10.0
    max_error_rate: float = 0.01


@inlineCallbacks
def run_stress(reactor: Any, plan: LoadPlan, ramp: Ramp) -> Any:
    """Step the rate up; each step is judged on its own latency and errors."""
    total = RunStats(started=reactor.seconds())
    steps: list[dict[str, Any]] = []
    knee = 0.0
    for i in range(ramp.max_steps):
        rate = ramp.start_rate + i * ramp.step_rate
        stats = RunStats(started=reactor.seconds())
        step_plan = replace(plan, rate=rate, duration_s=ramp.step_s, grace_s=2.0)
        yield LoadRun(reactor, step_plan, stats).start()
        latency = summary_ms(stats.histogram)
        errors = stats.error_count + stats.lost
        error_rate = errors / stats.sent if stats.sent else 1.0
        held = latency["p99_ms"] <= ramp.slo_p99_ms and error_rate <= ramp.max_error_rate
        steps.append(
            {
                "target_rate": rate,
                "achieved_rate": stats.answered / ramp.step_s,
                "p50_ms": latency["p50_ms"],
                "p99_ms": latency["p99_ms"],
                "error_rate": error_rate,
                "held": held,
            }
        )
        _absorb(total, stats)
        if not held:
            break
        knee = rate
    report = {"scenario": "stress", **total.to_json(), "steps": steps, "knee_rate": knee}
    return report


def _absorb(total: RunStats, step: RunStats) -> None:
    total.sent += step.sent
    total.answered += step.answered
    total.errors.update(step.errors)
    total.lost += step.lost
    total.wrong += step.wrong
    total.histogram.add(step.histogram)
    offset = int(step.started - total.started)
    for t, second in step.seconds.items():
        second.t = t + offset
        total.seconds[t + offset] = second


__all__ = ["Deferred", "Ramp", "run_stress"]
