"""From parsed arguments to a running scenario: this process's share of the work.

With ``--processes N`` worker ``i`` of ``N`` takes its share of the connections and
of the rate; only worker 0 kills and restarts servers (failover) and samples the
server's /proc (soak).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from bot.commands import Payload, RequestSpec, describe_payload, request_mix
from bot.retry import RetryPolicy
from bot.runner import LoadPlan
from bot.scenarios.concurrency import run_concurrency, run_sweep
from bot.scenarios.failover import FailoverPlan, run_failover
from bot.scenarios.load import run_load
from bot.scenarios.soak import read_pid, run_soak
from bot.scenarios.streams import StreamPlan, run_streams
from bot.scenarios.stress import Ramp, StepGate, run_stress


@dataclass(frozen=True)
class Share:
    """Which of the bot processes this is."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Share:
        """``i/N`` from ``--worker`` (None: the only process)."""
        if not text:
            return cls()
        index, count = (int(x) for x in text.split("/"))
        return cls(index, count)

    def of_int(self, total: int) -> int:
        """This process's part of ``total`` (the first ones take the remainder)."""
        return total // self.count + (1 if self.index < total % self.count else 0)

    def of_rate(self, total: float) -> float:
        """This process's part of a rate."""
        return total / self.count

    @property
    def first(self) -> bool:
        """Whether this process acts on servers (kill, restart, sampling)."""
        return self.index == 0


def ramp_of(args: argparse.Namespace, share: Share = Share()) -> Ramp:
    """The stress ramp (rates are this process's share)."""
    return Ramp(
        start_rate=share.of_rate(args.start_rate),
        step_rate=share.of_rate(args.step_rate),
        step_s=args.step_seconds,
        max_steps=args.max_steps,
        slo_p99_ms=args.slo_p99_ms if args.slo_p99_ms is not None else 10.0,
        max_error_rate=args.max_error_rate,
        refine_steps=args.refine_steps,
        refine_s=args.refine_seconds or args.step_seconds / 2,
    )


def _start_streams(
    args: argparse.Namespace, reactor: Any, share: Share, connections: int
) -> Deferred[dict[str, Any]]:
    """This process's characters (ids after the earlier processes') and connections."""
    host, port = args.server
    earlier = sum(Share(i, share.count).of_int(args.characters) for i in range(share.index))
    plan = StreamPlan(
        host,
        port,
        args.model,
        characters=share.of_int(args.characters),
        connections=connections,
        hz=args.hz,
        duration_s=args.duration,
        warmup_s=args.warmup,
        lead_s=args.lead_ms / 1000.0,
        align=not args.no_align,
        adapt_lead=not args.fixed_lead,
        first_id=1 + earlier,
        udp_listen=None if args.udp_listen is None else args.udp_listen + share.index,
        udp_host=args.udp_host,
        udp_datagram_bytes=args.udp_datagram_bytes,
        metrics_url=args.metrics_url if share.first else None,
    )
    min_on_time = args.min_on_time / 100.0
    d = run_streams(reactor, plan, min_on_time, args.slo_p99_ms, args.find_max, args.max_steps)
    return d.addCallback(lambda report: {**report, "min_on_time": min_on_time})


def payload_of(args: argparse.Namespace) -> Payload:
    """What the requests carry, from --series-length, --config and --raw-values."""
    config: dict[str, dict[str, Any]] = {}
    for model, key, value in getattr(args, "config", None) or []:
        config.setdefault(model, {})[key] = value
    return Payload(getattr(args, "series_length", None), config, getattr(args, "raw_values", False))


def start_scenario(
    args: argparse.Namespace, reactor: Any, share: Share, gate: StepGate | None = None
) -> Deferred[dict[str, Any]]:
    """Start this process's part of the scenario; fires with its report."""
    connections = max(1, share.of_int(args.connections))
    if args.scenario == "streams":
        return _start_streams(args, reactor, share, connections)
    models, weights = args.models
    specs = request_mix(models, weights=weights, payload=payload_of(args))
    d = _start_requests(args, reactor, share, connections, specs, gate)
    return d.addCallback(lambda report: {**report, "payload": describe_payload(specs)})


def _start_requests(
    args: argparse.Namespace,
    reactor: Any,
    share: Share,
    connections: int,
    specs: list[RequestSpec],
    gate: StepGate | None,
) -> Deferred[dict[str, Any]]:
    """The scenarios that send inference requests (all but streams)."""
    if args.scenario == "failover":
        plan = FailoverPlan(
            addresses=args.servers,
            specs=specs,
            clients=connections,
            inflight=args.inflight,
            duration_s=args.duration,
            kill_after_s=args.kill_after,
            kill_pid=args.kill_pid if share.first else None,
            kill_cmd=args.kill_cmd if share.first else None,
            restart_after_s=args.restart_after,
            restart_cmd=args.restart_cmd if share.first else None,
            grace_s=args.grace,
            id_start=share.index + 1,
            id_step=share.count,
            warmup_s=args.warmup,
        )
        return run_failover(reactor, plan)
    host, port = args.server
    if args.scenario == "concurrency" and args.sweep:
        sweep: Deferred[dict[str, Any]] = run_sweep(
            reactor, host, port, args.sweep, specs, args.connect_timeout, args.retry_budget
        )
        return sweep
    if args.scenario == "concurrency":
        d: Deferred[dict[str, Any]] = run_concurrency(
            reactor,
            host,
            port,
            connections,
            specs,
            args.connect_timeout,
            RetryPolicy(budget_s=args.retry_budget, seed=share.index),
        )
        return d
    load = LoadPlan(
        host,
        port,
        specs,
        connections=connections,
        duration_s=args.duration,
        rate=share.of_rate(args.rate),
        inflight=args.inflight,
        warmup_s=getattr(args, "warmup", 0.0),
        stages=args.stages.scaled(1 / share.count) if getattr(args, "stages", None) else None,
    )
    if args.scenario == "stress":
        d = run_stress(reactor, load, ramp_of(args, share), gate)
        return d
    if args.scenario == "soak":
        pid = args.pid if args.pid is not None else read_pid(args.pid_file)
        d = run_soak(
            reactor,
            load,
            pid if share.first else None,
            args.sample_seconds,
            args.rss_warmup,
            args.max_rss_slope_mib_per_h,
        )
        return d
    return run_load(reactor, load)
