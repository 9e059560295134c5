"""The load engine shared by the scenarios: connections, open and closed loops.

Open loop: requests leave on a fixed schedule (``rate``) whether or not replies
came back, and each latency is measured from its *scheduled* time, so a stalled
server cannot hide behind coordinated omission. Closed loop: each connection
keeps ``inflight`` requests outstanding.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from bot.client import BotProtocol, ConnectionLostError, Session
from bot.commands import Connect, Disconnect, RequestSpec, judge
from bot.errors import BotRunError
from bot.stages import Stages
from bot.stats import RunStats
from commonlib.wire import pb

TICK_S = 0.002


@dataclass
class LoadPlan:
    """What to send: where, how hard, for how long."""

    host: str
    port: int
    specs: Sequence[RequestSpec]
    connections: int = 4
    duration_s: float = 10.0
    rate: float = 0.0  # open loop when > 0 (requests/s over all connections)
    inflight: int = 16  # closed loop: outstanding requests per connection
    grace_s: float = 5.0  # after the end, how long replies may still arrive
    stages: Stages | None = None  # open loop with a ramping rate (replaces ``rate``)
    warmup_s: float = 0.0  # answers to requests sent before this are reported apart


@dataclass
class LoadRun:
    """One execution of a LoadPlan."""

    reactor: Any
    plan: LoadPlan
    stats: RunStats
    sessions: list[Session] = field(default_factory=list)
    protocols: list[BotProtocol] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _spec_cycle: Any = None
    _stopping: bool = False
    _gave_up: bool = False
    _outstanding: int = 0
    _idle: Deferred[None] | None = None

    def __post_init__(self) -> None:
        self._spec_cycle = itertools.cycle(self.plan.specs)

    def start(self) -> Deferred[RunStats]:
        """Connect, run for the duration, wait for the stragglers; fires with the stats.

        Every connection is a Session opened by the Connect command and closed by
        Disconnect; fails with BotRunError when the server cannot be reached.
        """
        self.sessions = [
            Session(self.reactor, self.plan.host, self.plan.port)
            for _ in range(self.plan.connections)
        ]
        connects = [Connect(timeout=10).execute(s, self.stats) for s in self.sessions]
        connected: Deferred[Any] = gatherResults(connects, consumeErrors=True)
        return connected.addCallbacks(self._connected, self._unreachable)

    def _unreachable(self, failure: Failure) -> Failure:
        self._stopping = True
        for session in self.sessions:
            Disconnect().execute(session, self.stats)
        reason = failure.value.subFailure.value if isinstance(failure.value, FirstError) else None
        where = f"{self.plan.host}:{self.plan.port}"
        return Failure(BotRunError(f"cannot connect to {where}: {reason or failure.value}"))

    def _connected(self, _: object) -> Deferred[RunStats]:
        self.protocols = [s.protocol for s in self.sessions if s.protocol is not None]
        started = self.reactor.seconds()
        self.stats.warmup_s = self.plan.warmup_s
        self.stats.load_started(started)
        if self.plan.rate > 0 or self.plan.stages is not None:
            self._open_loop(started)
        else:
            for protocol in self.protocols:
                for _ in range(self.plan.inflight):
                    self._send(protocol, self.reactor.seconds(), refill=True)
        done: Deferred[RunStats] = Deferred()
        self.reactor.callLater(self.plan.duration_s, self._finish, done)
        return done

    def _open_loop(self, started: float) -> None:
        sent = [0]
        counter = itertools.count()

        def tick() -> None:
            if self._stopping:
                return
            now = self.reactor.seconds()
            elapsed = now - started
            self.stats.second(now).target_rate = self._rate(elapsed)
            due = int(self._scheduled_total(elapsed)) - sent[0]
            for _ in range(max(0, due)):
                scheduled = started + self._schedule_time(sent[0])
                protocol = self.protocols[next(counter) % len(self.protocols)]
                self._send(protocol, scheduled, refill=False)
                sent[0] += 1

        self._loop = LoopingCall(tick)
        self._loop.clock = self.reactor
        self._loop.start(TICK_S, now=True)

    def _rate(self, elapsed: float) -> float:
        stages = self.plan.stages
        return stages.rate(elapsed) if stages is not None else self.plan.rate

    def _scheduled_total(self, elapsed: float) -> float:
        """Requests due by ``elapsed``: the integral of the rate."""
        stages = self.plan.stages
        return stages.total(elapsed) if stages is not None else elapsed * self.plan.rate

    def _schedule_time(self, index: int) -> float:
        """When request number ``index`` was due (inverts _scheduled_total)."""
        stages = self.plan.stages
        return stages.time_of(index) if stages is not None else index / self.plan.rate

    def _send(self, protocol: BotProtocol, scheduled: float, refill: bool) -> None:
        spec = next(self._spec_cycle)
        if protocol.transport is None or not protocol.connected:
            self.stats.on_sent(scheduled, spec.model)
            self.stats.lost += 1
            return
        request_id = next(self._ids)
        self.stats.on_sent(scheduled, spec.model)
        self._outstanding += 1
        d = protocol.send_request(request_id, spec.payload(request_id))
        d.addCallbacks(
            self._answered,
            self._lost,
            callbackArgs=(spec, request_id, scheduled, protocol, refill),
            errbackArgs=(protocol, refill),
        )

    def _answered(
        self,
        reply: pb.Envelope,
        spec: RequestSpec,
        request_id: int,
        scheduled: float,
        protocol: BotProtocol,
        refill: bool,
    ) -> None:
        now = self.reactor.seconds()
        verdict = judge(spec, request_id, reply)
        if verdict == "ok":
            self.stats.on_answer(now, now - scheduled, spec.model, reply.infer_response.timings)
        else:
            if verdict == "WRONG_ANSWER":
                self.stats.wrong += 1
            self.stats.on_error(now, verdict, spec.model)
        self._settled()
        if refill and not self._stopping:
            self._send(protocol, now, refill=True)

    def _lost(self, failure: Failure, protocol: BotProtocol, refill: bool) -> None:
        failure.trap(ConnectionLostError)
        self.stats.lost += 1
        self._settled()

    def _settled(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0 and self._idle is not None and not self._idle.called:
            self._idle.callback(None)

    def _finish(self, done: Deferred[RunStats]) -> None:
        self._stopping = True
        self.stats.load_ended(self.reactor.seconds())
        loop = getattr(self, "_loop", None)
        if loop is not None and loop.running:
            loop.stop()
        self._idle = Deferred()
        if self._outstanding == 0:
            self._idle.callback(None)
        timer = self.reactor.callLater(self.plan.grace_s, self._give_up)

        def close(_: object) -> None:
            if timer.active():
                timer.cancel()
            abort = self._gave_up  # a stalled server may never read what is still queued
            closes = [Disconnect(abort).execute(s, self.stats) for s in self.sessions]
            gatherResults(closes).addCallback(lambda _: done.callback(self.stats))

        self._idle.addCallback(close)

    def _give_up(self) -> None:
        # Requests still unanswered after the grace period are lost.
        if self._idle is not None and not self._idle.called:
            self._gave_up = True
            self.stats.notes.append(f"{self._outstanding} requests unanswered after grace period")
            self._idle.callback(None)
