"""load: a target rate (open loop) or a fixed number in flight (closed loop), for a duration."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from bot.runner import LoadPlan, LoadRun
from bot.stats import RunStats


def run_load(reactor: Any, plan: LoadPlan) -> Deferred[dict[str, Any]]:
    """Run the plan; fires with the report."""
    stats = RunStats(started=reactor.seconds())
    d = LoadRun(reactor, plan, stats).start()
    return d.addCallback(lambda s: {"scenario": "load", **s.to_json()})
