"""stress: raise the open-loop rate step by step until the SLO breaks; report the knee.

Each step is judged by a :class:`StepGate`. In one process the step's own numbers
decide (:class:`LocalGate`); with ``--processes N`` every worker sends its step's
encoded histogram to the parent, which merges them exactly, judges the whole step
and tells every worker whether to go on (bot/worker_channel.py, bot/workers.py), so
the workers ramp in lockstep and the knee is the fleet's, not one worker's.

Every step's row names the limits it broke (p99 over the SLO, the error rate over
its maximum, with the error codes and lost requests behind it). After the first
broken step the knee is refined by bisection between the last step that held and
that one (``refine_steps`` shorter steps), so a coarse ramp still finds the knee
to within ``step_rate / 2**refine_steps``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    refine_steps: int = 3
    refine_s: float = 1.5

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
    codes: Mapping[str, int] | None = None,
    phase: str = "ramp",
) -> dict[str, Any]:
    """One step's verdict: held when p99 and the error rate (errors + lost) are in the SLO.

    ``counts`` holds sent, answered, errors and lost; ``codes`` the errors by code.
    ``broken`` names every limit the step broke; ``phase`` is ``ramp`` or ``refine``.
    """
    latency = summary_ms(histogram)
    sent = counts["sent"]
    error_rate = (counts["errors"] + counts["lost"]) / sent if sent else 1.0
    by_code = dict(sorted((codes or {}).items(), key=lambda item: -item[1]))
    broken = []
    if latency["p99_ms"] > ramp.slo_p99_ms:
        broken.append(f"p99 {latency['p99_ms']:.2f} ms > {ramp.slo_p99_ms:g} ms")
    if error_rate > ramp.max_error_rate:
        causes = [f"{code} {n:,}" for code, n in by_code.items()]
        if counts["lost"]:
            causes.append(f"lost {counts['lost']:,}")
        if not sent:
            causes.append("nothing sent")
        broken.append(
            f"error rate {error_rate:.2%} > {ramp.max_error_rate:.2%} ({', '.join(causes)})"
        )
    return {
        "index": index,
        "phase": phase,
        "target_rate": target_rate,
        "achieved_rate": counts["answered"] / step_s,
        **counts,
        "p50_ms": latency["p50_ms"],
        "p90_ms": latency["p90_ms"],
        "p99_ms": latency["p99_ms"],
        "max_ms": latency["max_ms"],
        "error_rate": error_rate,
        "errors_by_code": by_code,
        "held": not broken,
        "broken": broken,
    }


def knee_of(rows: Sequence[dict[str, Any]]) -> float:
    """The highest rate that held: the ramp's last held step before the first broken
    one (every lower step held too), raised by any refinement step that held."""
    knee = 0.0
    for row in rows:
        if row.get("phase", "ramp") != "ramp":
            continue
        if not row["held"]:
            break
        knee = float(row["target_rate"])
    refined = [float(r["target_rate"]) for r in rows if r.get("phase") == "refine" and r["held"]]
    return max([knee, *refined]) if knee else 0.0


def step_counts(stats: RunStats) -> dict[str, int]:
    """The counts a step is judged on."""
    return {
        "sent": stats.sent,
        "answered": stats.answered,
        "errors": stats.error_count,
        "lost": stats.lost,
    }


def step_codes(stats: RunStats) -> dict[str, int]:
    """The step's errors by code."""
    return dict(stats.errors)


class KneeSearch:
    """Which step comes next: the ramp until a step breaks, then the bisection.

    ``next_step`` gives (rate, seconds, phase) or None when the search is over;
    ``record`` tells it whether that step held.
    """

    def __init__(self, ramp: Ramp) -> None:
        self.ramp = ramp
        self.good = 0.0  # the highest rate that held
        self.bad: float | None = None  # the lowest rate that broke
        self._ramp_index = 0
        self._refined = 0
        self._pending: tuple[float, str] | None = None

    def next_step(self) -> tuple[float, float, str] | None:
        """The next step to run, or None."""
        ramp = self.ramp
        if self.bad is None:
            if self._ramp_index >= ramp.max_steps:
                return None
            rate = ramp.rate(self._ramp_index)
            self._pending = (rate, "ramp")
            return rate, ramp.step_s, "ramp"
        if not self.good or self._refined >= ramp.refine_steps:
            return None  # nothing held (no knee to refine), or refined enough
        rate = (self.good + self.bad) / 2
        self._pending = (rate, "refine")
        return rate, ramp.refine_s, "refine"

    def record(self, held: bool) -> None:
        """The verdict of the step ``next_step`` gave."""
        assert self._pending is not None, "next_step first"
        rate, phase = self._pending
        self._pending = None
        if phase == "ramp":
            self._ramp_index += 1
        else:
            self._refined += 1
        if held:
            self.good = rate
        else:
            self.bad = rate


class StepGate(Protocol):
    """Decides after each step whether the ramp goes on."""

    def judge(
        self, index: int, target_rate: float, stats: RunStats, phase: str = "ramp"
    ) -> Deferred[dict[str, Any]]:
        """The step's row (see :func:`step_row`); ``held`` says whether to continue."""


class LocalGate:
    """The step's own numbers decide (one bot process)."""

    def __init__(self, ramp: Ramp) -> None:
        self.ramp = ramp

    def judge(
        self, index: int, target_rate: float, stats: RunStats, phase: str = "ramp"
    ) -> Deferred[dict[str, Any]]:
        """Judge at once."""
        step_s = self.ramp.step_s if phase == "ramp" else self.ramp.refine_s
        row = step_row(
            index,
            target_rate,
            step_s,
            step_counts(stats),
            stats.histogram,
            self.ramp,
            step_codes(stats),
            phase,
        )
        return succeed(row)


@inlineCallbacks
def run_stress(reactor: Any, plan: LoadPlan, ramp: Ramp, gate: StepGate | None = None) -> Any:
    """Step the rate up until a step breaks the SLO, refine the knee; fires with the report."""
    gate = gate or LocalGate(ramp)
    total = RunStats(started=reactor.seconds(), live=False)
    steps: list[dict[str, Any]] = []

    @inlineCallbacks
    def step(rate: float, seconds: float, phase: str) -> Any:
        stats = RunStats(started=reactor.seconds())
        step_plan = replace(plan, rate=rate, duration_s=seconds, grace_s=2.0)
        yield LoadRun(reactor, step_plan, stats).start()
        total.absorb(stats)
        row: dict[str, Any] = yield gate.judge(len(steps), rate, stats, phase)
        steps.append(row)
        return row

    search = KneeSearch(ramp)
    while (planned := search.next_step()) is not None:
        rate, seconds, phase = planned
        row = yield step(rate, seconds, phase)
        search.record(bool(row["held"]))
    return {
        "scenario": "stress",
        **total.to_json(),
        "steps": steps,
        "knee_rate": knee_of(steps),
        "knee_coarse_rate": knee_of([s for s in steps if s["phase"] == "ramp"]),
        "step_slo": {"p99_ms": ramp.slo_p99_ms, "max_error_rate": ramp.max_error_rate},
    }
