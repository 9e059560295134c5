"""stress: raise the open-loop rate step by step until the SLO breaks; report the knee.

Each step is judged by a :class:`StepGate`. In one process the step's own numbers
decide (:class:`LocalGate`); with ``--processes N`` every worker sends its step's
encoded histogram to the parent, which merges them exactly, judges the whole step
and tells every worker whether to go on (bot/worker_channel.py, bot/workers.py), so
the workers ramp in lockstep and the knee is the fleet's, not one worker's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from hdrh.histogram import HdrHistogram
from twisted.internet.defer import Deferred, inlineCallbacks, succeed

from bot.histogram import summary_ms
from bot.runner import LoadPlan, LoadRun
from bot.stats import RunStats


@dataclass(frozen=True)
class Ramp:
    """Where the ramp starts, how it grows and when it counts as broken."""

    start_rate: float = 1000.0
    step_rate: float = 1000.0
    step_s: float = 3.0
    max_steps: int = 30
    slo_p99_ms: float = 10.0
    max_error_rate: float = 0.01

    def rate(self, index: int) -> float:
        """The target rate of step ``index`` (0-based)."""
        return self.start_rate + index * self.step_rate


def step_row(
    index: int,
    target_rate: float,
    step_s: float,
    counts: dict[str, int],
    histogram: HdrHistogram,
    ramp: Ramp,
) -> dict[str, Any]:
    """One step's verdict: held when p99 and the error rate (errors + lost) are in the SLO.

    ``counts`` holds sent, answered, errors and lost.
    """
    latency = summary_ms(histogram)
    sent = counts["sent"]
    error_rate = (counts["errors"] + counts["lost"]) / sent if sent else 1.0
    held = latency["p99_ms"] <= ramp.slo_p99_ms and error_rate <= ramp.max_error_rate
    return {
        "index": index,
        "target_rate": target_rate,
        "achieved_rate": counts["answered"] / step_s,
        **counts,
        "p50_ms": latency["p50_ms"],
        "p90_ms": latency["p90_ms"],
        "p99_ms": latency["p99_ms"],
        "max_ms": latency["max_ms"],
        "error_rate": error_rate,
        "held": held,
    }


def step_counts(stats: RunStats) -> dict[str, int]:
    """The counts a step is judged on."""
    return {
        "sent": stats.sent,
        "answered": stats.answered,
        "errors": stats.error_count,
        "lost": stats.lost,
    }


class StepGate(Protocol):
    """Decides after each step whether the ramp goes on."""

    def judge(self, index: int, target_rate: float, stats: RunStats) -> Deferred[dict[str, Any]]:
        """The step's row (see :func:`step_row`); ``held`` says whether to continue."""


class LocalGate:
    """The step's own numbers decide (one bot process)."""

    def __init__(self, ramp: Ramp) -> None:
        self.ramp = ramp

    def judge(self, index: int, target_rate: float, stats: RunStats) -> Deferred[dict[str, Any]]:
        """Judge at once."""
        row = step_row(
            index, target_rate, self.ramp.step_s, step_counts(stats), stats.histogram, self.ramp
        )
        return succeed(row)


@inlineCallbacks
def run_stress(reactor: Any, plan: LoadPlan, ramp: Ramp, gate: StepGate | None = None) -> Any:
    """Step the rate up until a step breaks the SLO; fires with the report."""
    gate = gate or LocalGate(ramp)
    total = RunStats(started=reactor.seconds(), live=False)
    steps: list[dict[str, Any]] = []
    knee = 0.0
    for i in range(ramp.max_steps):
        rate = ramp.rate(i)
        stats = RunStats(started=reactor.seconds())
        step_plan = replace(plan, rate=rate, duration_s=ramp.step_s, grace_s=2.0)
        yield LoadRun(reactor, step_plan, stats).start()
        total.absorb(stats)
        row: dict[str, Any] = yield gate.judge(i, rate, stats)
        steps.append(row)
        if not row["held"]:
            break
        knee = float(row["target_rate"])
    return {
        "scenario": "stress",
        **total.to_json(),
        "steps": steps,
        "knee_rate": knee,
        "step_slo": {"p99_ms": ramp.slo_p99_ms, "max_error_rate": ramp.max_error_rate},
    }
