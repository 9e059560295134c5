"""failover: kill one of several servers mid-run; clients reconnect elsewhere and retry.

Each virtual client keeps ``inflight`` requests outstanding on its current server.
When its connection drops it reconnects, with exponential backoff, to the next
address and re-sends every unanswered request with the same request id. A request
counts as lost only if it is still unanswered when the run ends; a second answer to
the same id (from either server) counts as a duplicate.

Time to recover: from the first connection the kill broke until every request
that had to be re-sent has been answered (what a client sees as the outage). Kill
and restart commands run as child processes, so the bot's reactor never waits for
them.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.utils import getProcessOutputAndValue
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
    warmup_s: float = 0.0


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
        self.stats = RunStats(started=reactor.seconds(), warmup_s=plan.warmup_s)
        self.ids = itertools.count(1)
        self.specs = itertools.cycle(plan.specs)
        self.answered: set[int] = set()
        self.clients = [_Client(i, i % len(plan.addresses)) for i in range(plan.clients)]
        self.stopping = False
        self.killed_at: float | None = None
        self.first_drop_at: float | None = None
        self.recovered_at: float | None = None
        self.retry_pending: set[int] = set()
        self.answered_by: dict[str, int] = {}
        self.actions: list[str] = []

    def start(self) -> Deferred[dict[str, Any]]:
        """Run to the end; fires with the report."""
        connects = [self._connect(c, attempt=0) for c in self.clients]
        done: Deferred[dict[str, Any]] = Deferred()

        def begin(_: object) -> None:
            self.stats.load_started(self.reactor.seconds())
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
                self.retry_pending.add(request_id)
                self._transmit(client, request_id, spec)

        def down(failure: Failure) -> None:
            client.address_index = (client.address_index + 1) % len(self.plan.addresses)
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            if not self.stopping:
                self.reactor.callLater(delay, self._connect, client, attempt + 1)

        return d.addCallbacks(up, down)

    def _dropped(self, client: _Client, protocol: BotProtocol) -> None:
        if self.killed_at is not None and self.first_drop_at is None:
            self.first_drop_at = self.reactor.seconds()
        self.stats.unexpected += protocol.unexpected
        protocol.unexpected = 0
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
        host, port = self.plan.addresses[client.address_index]
        d = protocol.send_request(request_id, spec.payload(request_id))
        d.addCallbacks(
            self._reply, self._lost, callbackArgs=(client, request_id, spec, f"{host}:{port}")
        )

    def _reply(
        self, reply: pb.Envelope, client: _Client, request_id: int, spec: RequestSpec, server: str
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
        self.answered_by[server] = self.answered_by.get(server, 0) + 1
        if request_id in self.retry_pending:
            self.retry_pending.discard(request_id)
            if not self.retry_pending and self.killed_at is not None:
                self.recovered_at = now
        verdict = judge(spec, request_id, reply)
        if verdict == "ok":
            self.stats.on_answer(now, now - entry[1])
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
            try:
                os.kill(self.plan.kill_pid, signal.SIGKILL)
                self._action(f"SIGKILL pid {self.plan.kill_pid}")
            except OSError as exc:
                self._action(f"SIGKILL pid {self.plan.kill_pid} failed: {exc}")
        elif self.plan.kill_cmd:
            self._run(self.plan.kill_cmd, 30)

    def _restart(self) -> None:
        assert self.plan.restart_cmd
        self._run(self.plan.restart_cmd, 60)

    def _run(self, command: str, timeout: float) -> None:
        """Run ``command`` with /bin/sh as a child process; log its exit code."""
        self._action(f"running {command!r}")
        d: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
            "/bin/sh", ["-c", command], env=dict(os.environ), reactor=self.reactor
        )
        timer = self.reactor.callLater(timeout, d.cancel)

        def finished(result: tuple[bytes, bytes, int]) -> None:
            if timer.active():
                timer.cancel()
            _, err, code = result
            detail = f": {err.decode(errors='replace').strip()[-200:]}" if code else ""
            self._action(f"{command!r} exited {code}{detail}")

        def failed(failure: Failure) -> None:
            if timer.active():
                timer.cancel()
            self._action(f"{command!r} failed: {failure.getErrorMessage()}")

        d.addCallbacks(finished, failed)

    def _action(self, text: str) -> None:
        self.actions.append(f"{self.reactor.seconds() - self.stats.started:.2f}s {text}")

    def _finish(self, done: Deferred[dict[str, Any]]) -> None:
        self.stopping = True
        self.stats.load_ended(self.reactor.seconds())
        deadline = self.reactor.seconds() + self.plan.grace_s

        def check() -> None:
            waiting = sum(len(c.unanswered) for c in self.clients)
            if waiting and self.reactor.seconds() < deadline:
                self.reactor.callLater(0.05, check)
                return
            self.stats.lost = waiting
            if waiting:
                self.stats.notes.append(f"{waiting} requests never answered")
            for client in self.clients:
                if client.protocol is not None:
                    self.stats.unexpected += client.protocol.unexpected
                    client.protocol.unexpected = 0
                    client.protocol.close()
            outage_from = self.first_drop_at or self.killed_at
            recover = (
                self.recovered_at - outage_from
                if self.recovered_at is not None and outage_from is not None
                else None
            )
            done.callback(
                {
                    "scenario": "failover",
                    **self.stats.to_json(),
                    "addresses": [f"{h}:{p}" for h, p in self.plan.addresses],
                    "actions": self.actions,
                    "answered_by_server": self.answered_by,
                    "time_to_recover_s": recover,
                    "kill_to_first_drop_s": (
                        self.first_drop_at - self.killed_at
                        if self.first_drop_at is not None and self.killed_at is not None
                        else None
                    ),
                }
            )

        check()


def run_failover(reactor: Any, plan: FailoverPlan) -> Deferred[dict[str, Any]]:
    """Run the failover scenario."""
    return FailoverRun(reactor, plan).start()
