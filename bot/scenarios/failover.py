"""failover: kill one of several servers mid-run; clients reconnect elsewhere and retry.

Each virtual client keeps ``inflight`` requests outstanding on its current server.
When its connection drops it reconnects, with exponential backoff, to the next
address and re-sends every unanswered request with the same request id. A request
counts as lost only if it is still unanswered when the run ends.
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from bot.client import BotProtocol, ConnectionLostError, connect
from bot.commands import RequestSpec, judge
from bot.stats import RunStats
from commonlib.wire import pb

BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0)


@dataclass
class FailoverPlan:
    """Servers, load, and how and when to kill and restart one of them."""

    addresses: Sequence[tuple[str, int]]
    specs: Sequence[RequestSpec]
    clients: int = 8
    inflight: int = 8
    duration_s: float = 10.0
    kill_after_s: float = 3.0
    kill_pid: int | None = None
    kill_cmd: str | None = None
    restart_after_s: float | None = 6.0
    restart_cmd: str | None = None
    grace_s: float = 10.0


@dataclass
class _Client:
    index: int
    address_index: int
    protocol: BotProtocol | None = None
    unanswered: dict[int, tuple[RequestSpec, float]] = field(default_factory=dict)
    reconnecting: bool = False


class FailoverRun:
    """State of one failover scenario."""

    def __init__(self, reactor: Any, plan: FailoverPlan) -> None:
        self.reactor = reactor
        self.plan = plan
        self.stats = RunStats(started=reactor.seconds())
        self.ids = itertools.count(1)
        self.specs = itertools.cycle(plan.specs)
        self.answered: set[int] = set()
        self.clients = [_Client(i, i % len(plan.addresses)) for i in range(plan.clients)]
        self.stopping = False
        self.killed_at: float | None = None
        self.recovered_at: float | None = None
        self.actions: list[str] = []

    def start(self) -> Deferred[dict[str, Any]]:
        """Run to the end; fires with the report."""
        connects = [self._connect(c, attempt=0) for c in self.clients]
        done: Deferred[dict[str, Any]] = Deferred()

        def begin(_: object) -> None:
            for client in self.clients:
                for _ in range(self.plan.inflight):
                    self._send_new(client)
            self.reactor.callLater(self.plan.kill_after_s, self._kill)
            if self.plan.restart_after_s is not None and self.plan.restart_cmd:
                self.reactor.callLater(self.plan.restart_after_s, self._restart)
            self.reactor.callLater(self.plan.duration_s, self._finish, done)

        DeferredList(connects).addCallback(begin)
        return done

    # -- connections -----------------------------------------------------------
    def _connect(self, client: _Client, attempt: int) -> Deferred[None]:
        host, port = self.plan.addresses[client.address_index]
        d = connect(self.reactor, host, port, timeout=2)

        def up(protocol: BotProtocol) -> None:
            client.protocol = protocol
            client.reconnecting = False
            protocol.closed.addCallback(lambda _: self._dropped(client, protocol))
            for request_id, (spec, _) in sorted(client.unanswered.items()):
                self.stats.retried += 1
                self._transmit(client, request_id, spec)

        def down(failure: Failure) -> None:
            client.address_index = (client.address_index + 1) % len(self.plan.addresses)
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            if not self.stopping:
                self.reactor.callLater(delay, self._connect, client, attempt + 1)

        return d.addCallbacks(up, down)

    def _dropped(self, client: _Client, protocol: BotProtocol) -> None:
        if client.protocol is protocol:
            client.protocol = None
        if self.stopping or client.reconnecting:
            return
        client.reconnecting = True
        client.address_index = (client.address_index + 1) % len(self.plan.addresses)
        self.reactor.callLater(BACKOFF_S[0], self._connect, client, 1)

    # -- requests ----------------------------------------------------------------
    def _send_new(self, client: _Client) -> None:
        if self.stopping:
            return
        request_id = next(self.ids)
        spec = next(self.specs)
        client.unanswered[request_id] = (spec, self.reactor.seconds())
        self.stats.on_sent(self.reactor.seconds())
        self._transmit(client, request_id, spec)

    def _transmit(self, client: _Client, request_id: int, spec: RequestSpec) -> None:
        protocol = client.protocol
        if protocol is None or not protocol.connected:
            return  # re-sent when the client reconnects
        d = protocol.request(spec.envelope(request_id))
        d.addCallbacks(self._reply, self._lost, callbackArgs=(client, request_id, spec))

    def _reply(
        self, reply: pb.Envelope, client: _Client, request_id: int, spec: RequestSpec
    ) -> None:
        now = self.reactor.seconds()
        if request_id in self.answered:
            self.stats.duplicates += 1
            return
        entry = client.unanswered.pop(request_id, None)
        if entry is None:
            self.stats.duplicates += 1
            return
        self.answered.add(request_id)
        verdict = judge(spec, request_id, reply)
        if verdict == "ok":
            self.stats.on_answer(now, now - entry[1])
            if self.killed_at is not None and self.recovered_at is None and self.stats.retried:
                self.recovered_at = now
        else:
            if verdict == "WRONG_ANSWER":
                self.stats.wrong += 1
            self.stats.on_error(now, verdict)
        self._send_new(client)

    def _lost(self, failure: Failure) -> None:
        failure.trap(ConnectionLostError)  # the request stays in `unanswered` and is retried

    # -- the fault -----------------------------------------------------------------
    def _kill(self) -> None:
        self.killed_at = self.reactor.seconds()
        if self.plan.kill_pid is not None:
            os.kill(self.plan.kill_pid, signal.SIGKILL)
            self.actions.append(f"SIGKILL pid {self.plan.kill_pid}")
        elif self.plan.kill_cmd:
            subprocess.run(shlex.split(self.plan.kill_cmd), check=False, timeout=30)
            self.actions.append(f"ran {self.plan.kill_cmd!r}")

    def _restart(self) -> None:
        assert self.plan.restart_cmd
        subprocess.run(shlex.split(self.plan.restart_cmd), check=False, timeout=60)
        self.actions.append(f"ran {self.plan.restart_cmd!r}")

    def _finish(self, done: Deferred[dict[str, Any]]) -> None:
        self.stopping = True
        deadline = self.reactor.seconds() + self.plan.grace_s

        def check() -> None:
            waiting = sum(len(c.unanswered) for c in self.clients)
            if waiting and self.reactor.seconds() < deadline:
                self.reactor.callLater(0.05, check)
                return
            self.stats.lost = waiting
            for client in self.clients:
                if client.protocol is not None:
                    client.protocol.close()
            recover = (
                self.recovered_at - self.killed_at
                if self.recovered_at is not None and self.killed_at is not None
                else None
            )
            done.callback(
                {
                    "scenario": "failover",
                    **self.stats.to_json(),
                    "addresses": [f"{h}:{p}" for h, p in self.plan.addresses],
                    "actions": self.actions,
                    "time_to_recover_s": recover,
                }
            )

        check()


def run_failover(reactor: Any, plan: FailoverPlan) -> Deferred[dict[str, Any]]:
    """Run the failover scenario."""
    return FailoverRun(reactor, plan).start()
