"""failover: kill one of several servers mid-run; clients reconnect elsewhere and retry.

Each virtual client keeps ``inflight`` requests outstanding on its current server.
When its connection drops it reconnects, with exponential backoff, to the next
address and re-sends every unanswered request with the same request id. A client
that left its own server (its *home*) probes it with backoff and moves back once it
accepts connections again (a restarted server gets its share of the clients back);
the old connection is closed once its last reply came.

Every request has a ledger entry (:class:`LedgerEntry`): where each transmission
went, its outcome (``answered``, ``retried-then-answered``, an error code, or
``lost``) and how many replies came. Lost and duplicated are counted from the
ledger, which is written beside the report (bot/ledger.py).

Time to recover: from the first connection the kill broke until every request
that had to be re-sent has been answered (what a client sees as the outage). Kill
and restart commands run as child processes, so the bot's reactor never waits for
them.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter
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
PROBE_BACKOFF_S = (0.1, 0.2, 0.4, 0.8, 1.0)  # between probes of a client's home server
PROBE_TIMEOUT_S = 1.0
ANSWERED, RETRIED_THEN_ANSWERED, LOST = "answered", "retried-then-answered", "lost"


@dataclass(slots=True)
class LedgerEntry:
    """One request: where it was sent, what came back."""

    request_id: int
    sent_s: float  # first send, seconds into the run
    servers: list[str] = field(default_factory=list)  # one per transmission
    outcome: str = LOST
    answered_by: str | None = None
    answered_s: float | None = None
    answers: int = 0  # replies received; more than one is a duplicate

    def to_json(self) -> dict[str, Any]:
        """The ledger line."""
        return {
            "id": self.request_id,
            "outcome": self.outcome,
            "sends": len(self.servers),
            "servers": self.servers,
            "answered_by": self.answered_by,
            "sent_s": round(self.sent_s, 6),
            "answered_s": None if self.answered_s is None else round(self.answered_s, 6),
            "answers": self.answers,
        }


def ledger_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Outcomes counted from ledger lines, with ``duplicated`` (replies beyond the first)."""
    counts: Counter[str] = Counter(row["outcome"] for row in rows)
    counts["duplicated"] = sum(max(0, int(row["answers"]) - 1) for row in rows)
    counts.setdefault(LOST, 0)
    return dict(counts)


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
    id_start: int = 1  # request ids id_start, id_start + id_step, ... (unique over workers)
    id_step: int = 1
    warmup_s: float = 0.0


@dataclass
class _Client:
    index: int
    address_index: int
    home: int = 0  # the address it started on, and goes back to
    protocol: BotProtocol | None = None
    unanswered: dict[int, tuple[RequestSpec, float]] = field(default_factory=dict)
    reconnecting: bool = False
    probing: bool = False


class FailoverRun:
    """State of one failover scenario."""

    def __init__(self, reactor: Any, plan: FailoverPlan) -> None:
        self.reactor = reactor
        self.plan = plan
        self.stats = RunStats(started=reactor.seconds(), warmup_s=plan.warmup_s)
        self.ids = itertools.count(plan.id_start, plan.id_step)
        self.specs = itertools.cycle(plan.specs)
        self.ledger: dict[int, LedgerEntry] = {}
        n = len(plan.addresses)
        self.clients = [_Client(i, i % n, home=i % n) for i in range(plan.clients)]
        self.per_second: dict[str, Counter[int]] = {}
        self.restarted_at: float | None = None
        self.back_home_at: float | None = None
        self.stopping = False
        self.killed_at: float | None = None
        self.first_drop_at: float | None = None
        self.recovered_at: float | None = None
        self.retry_pending: set[int] = set()
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
    def _server(self, index: int) -> str:
        host, port = self.plan.addresses[index]
        return f"{host}:{port}"

    def _connect(self, client: _Client, attempt: int) -> Deferred[None]:
        host, port = self.plan.addresses[client.address_index]
        d = connect(self.reactor, host, port, timeout=2)

        def up(protocol: BotProtocol) -> None:
            client.protocol = protocol
            client.reconnecting = False
            protocol.closed.addCallback(lambda _: self._dropped(client, protocol))
            for request_id, (spec, _) in sorted(client.unanswered.items()):
                self._resend(client, request_id, spec)
            self._probe_later(client, 0)

        def down(failure: Failure) -> None:
            client.address_index = (client.address_index + 1) % len(self.plan.addresses)
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            if not self.stopping:
                self.reactor.callLater(delay, self._connect, client, attempt + 1)

        return d.addCallbacks(up, down)

    def _dropped(self, client: _Client, protocol: BotProtocol) -> None:
        self.stats.unexpected += protocol.unexpected
        protocol.unexpected = 0
        if client.protocol is not None and client.protocol is not protocol:
            return  # a connection the client had moved away from
        if self.killed_at is not None and self.first_drop_at is None:
            self.first_drop_at = self.reactor.seconds()
        client.protocol = None
        if self.stopping or client.reconnecting:
            return
        client.reconnecting = True
        client.address_index = (client.address_index + 1) % len(self.plan.addresses)
        self.reactor.callLater(BACKOFF_S[0], self._connect, client, 1)

    def _probe_later(self, client: _Client, attempt: int) -> None:
        """Try the client's home server again later, if it is away from it."""
        if client.address_index == client.home or client.probing or self.stopping:
            return
        client.probing = True
        delay = PROBE_BACKOFF_S[min(attempt, len(PROBE_BACKOFF_S) - 1)]
        self.reactor.callLater(delay, self._probe_home, client, attempt)

    def _probe_home(self, client: _Client, attempt: int) -> None:
        client.probing = False
        if self.stopping or client.address_index == client.home or client.reconnecting:
            return
        host, port = self.plan.addresses[client.home]
        d = connect(self.reactor, host, port, timeout=PROBE_TIMEOUT_S)

        def home(protocol: BotProtocol) -> None:
            if self.stopping or client.reconnecting or client.protocol is None:
                protocol.close()  # the client is between connections: it reconnects itself
                return
            old, client.protocol = client.protocol, protocol
            client.address_index = client.home
            protocol.closed.addCallback(lambda _: self._dropped(client, protocol))
            if not old.pending:
                old.close()  # otherwise closed after its last reply (_reply)
            self._action(f"client {client.index} back on {self._server(client.home)}")
            if self.killed_at is not None and all(c.address_index == c.home for c in self.clients):
                self.back_home_at = self.reactor.seconds()

        def away(failure: Failure) -> None:
            self._probe_later(client, attempt + 1)

        d.addCallbacks(home, away)

    # -- requests ----------------------------------------------------------------
    def _send_new(self, client: _Client) -> None:
        if self.stopping:
            return
        request_id = next(self.ids)
        spec = next(self.specs)
        now = self.reactor.seconds()
        client.unanswered[request_id] = (spec, now)
        self.ledger[request_id] = LedgerEntry(request_id, now - self.stats.started)
        self.stats.on_sent(now, spec.model)
        self._transmit(client, request_id, spec)

    def _resend(self, client: _Client, request_id: int, spec: RequestSpec) -> None:
        self.stats.retried += 1
        self.retry_pending.add(request_id)
        self._transmit(client, request_id, spec)

    def _transmit(self, client: _Client, request_id: int, spec: RequestSpec) -> None:
        protocol = client.protocol
        if protocol is None or not protocol.connected:
            return  # re-sent when the client reconnects
        server = self._server(client.address_index)
        self.ledger[request_id].servers.append(server)
        d = protocol.send_request(request_id, spec.payload(request_id))
        d.addCallbacks(
            self._reply,
            self._lost,
            callbackArgs=(client, request_id, spec, server, protocol),
            errbackArgs=(client, request_id, spec, protocol),
        )

    def _reply(
        self,
        reply: pb.Envelope,
        client: _Client,
        request_id: int,
        spec: RequestSpec,
        server: str,
        protocol: BotProtocol,
    ) -> None:
        now = self.reactor.seconds()
        if protocol is not client.protocol and not protocol.pending:
            protocol.close()  # the client moved back home; this was the last reply here
        entry = self.ledger[request_id]
        entry.answers += 1
        pending = client.unanswered.pop(request_id, None)
        if entry.answers > 1 or pending is None:
            return
        entry.answered_by = server
        entry.answered_s = now - self.stats.started
        counter = self.per_second.setdefault(server, Counter())
        counter[int(entry.answered_s)] += 1
        if request_id in self.retry_pending:
            self.retry_pending.discard(request_id)
            if not self.retry_pending and self.killed_at is not None:
                self.recovered_at = now
        verdict = judge(spec, request_id, reply)
        if verdict == "ok":
            entry.outcome = RETRIED_THEN_ANSWERED if len(entry.servers) > 1 else ANSWERED
            self.stats.on_answer(now, now - pending[1], spec.model, reply.infer_response.timings)
        else:
            entry.outcome = verdict
            if verdict == "WRONG_ANSWER":
                self.stats.wrong += 1
            self.stats.on_error(now, verdict, spec.model)
        self._send_new(client)

    def _lost(
        self,
        failure: Failure,
        client: _Client,
        request_id: int,
        spec: RequestSpec,
        protocol: BotProtocol,
    ) -> None:
        failure.trap(ConnectionLostError)
        current = client.protocol
        if request_id in client.unanswered and current is not None and current is not protocol:
            # It was still on the connection the client had moved away from.
            self._resend(client, request_id, spec)
        # Otherwise it stays in ``unanswered`` and is re-sent when the client reconnects.

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
        self.restarted_at = self.reactor.seconds()
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
            rows = [self.ledger[i].to_json() for i in sorted(self.ledger)]
            counts = ledger_counts(rows)
            self.stats.lost = counts[LOST]
            self.stats.duplicates = counts["duplicated"]
            if waiting:
                self.stats.notes.append(f"{waiting} requests never answered")
            for client in self.clients:
                if client.protocol is not None:
                    self.stats.unexpected += client.protocol.unexpected
                    client.protocol.unexpected = 0
                    client.protocol.close()
            done.callback(self._report(rows, counts))

        check()

    def _report(self, rows: list[dict[str, Any]], counts: dict[str, int]) -> dict[str, Any]:
        outage_from = self.first_drop_at or self.killed_at
        recover = (
            self.recovered_at - outage_from
            if self.recovered_at is not None and outage_from is not None
            else None
        )

        def since_start(at: float | None) -> float | None:
            return None if at is None else at - self.stats.started

        answered_by = Counter(row["answered_by"] for row in rows if row["answered_by"])
        return {
            "scenario": "failover",
            **self.stats.to_json(),
            "addresses": [f"{h}:{p}" for h, p in self.plan.addresses],
            "actions": self.actions,
            "answered_by_server": dict(answered_by),
            "time_to_recover_s": recover,
            "kill_to_first_drop_s": (
                self.first_drop_at - self.killed_at
                if self.first_drop_at is not None and self.killed_at is not None
                else None
            ),
            "markers": {
                "kill_s": since_start(self.killed_at),
                "first_drop_s": since_start(self.first_drop_at),
                "recovered_s": since_start(self.recovered_at),
                "restart_s": since_start(self.restarted_at),
                "back_home_s": since_start(self.back_home_at),
            },
            "server_series": {
                server: sorted(counter.items()) for server, counter in self.per_second.items()
            },
            "ledger_counts": counts,
            "ledger": rows,
        }


def run_failover(reactor: Any, plan: FailoverPlan) -> Deferred[dict[str, Any]]:
    """Run the failover scenario."""
    return FailoverRun(reactor, plan).start()


def merge_failover(merged: dict[str, Any], parts: Sequence[dict[str, Any]]) -> None:
    """Add the workers' ledgers, markers and per-server series into ``merged``.

    Lost and duplicated are counted again from the merged ledger (request ids are
    unique over the workers).
    """
    rows = sorted((row for p in parts for row in p["ledger"]), key=lambda row: row["id"])
    counts = ledger_counts(rows)
    merged["ledger"] = rows
    merged["ledger_counts"] = counts
    merged["lost"], merged["duplicates"] = counts[LOST], counts["duplicated"]
    markers: dict[str, float | None] = {}
    for key in ("kill_s", "first_drop_s", "restart_s"):
        found = [p["markers"][key] for p in parts if p["markers"][key] is not None]
        markers[key] = min(found) if found else None
    for key in ("recovered_s", "back_home_s"):  # the fleet is back when the last worker is
        found = [p["markers"][key] for p in parts if p["markers"][key] is not None]
        markers[key] = max(found) if found else None
    merged["markers"] = markers
    series: dict[str, Counter[int]] = {}
    for part in parts:
        for server, points in part["server_series"].items():
            counter = series.setdefault(server, Counter())
            for t, n in points:
                counter[int(t)] += int(n)
    merged["server_series"] = {server: sorted(c.items()) for server, c in series.items()}
