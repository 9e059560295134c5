"""Keeps the bot's UDP listener subscribed on every server for the whole run.

A Subscribe target is a lease (``udp.lease_s``) that ends with the connection that
added it, and an idle connection is closed by the server. So each server gets its
own Session running Connect + Subscribe, and the Subscribe is sent again every
third of the lease, which renews it and keeps the connection busy. A connection
that drops (a server killed in a failover run) is re-opened and re-subscribed at
once, then with backoff (0.1 s … 1 s) until the server is back. Per server the
report counts the drops, the attempts and the re-subscriptions the server
acknowledged (a restarted server subscribed again).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from bot.client import Session
from bot.commands import Connect, Disconnect, Subscribe, run_script
from bot.errors import BotRunError
from bot.stats import RunStats

DEFAULT_RENEW_S = 15.0
RESUBSCRIBE_BACKOFF_S = (0.1, 0.2, 0.4, 0.8, 1.0)


class UdpSubscriptions:
    """One subscribing Session per server, renewed until :meth:`stop`."""

    def __init__(
        self,
        reactor: Any,
        servers: Sequence[tuple[str, int]],
        listen_host: str,
        listen_port: int,
        json_encoding: bool = False,
        max_datagram_bytes: int = 0,
    ) -> None:
        self.reactor = reactor
        self.subscribe = Subscribe(
            listen_host, listen_port, json_encoding, max_datagram_bytes=max_datagram_bytes
        )
        self.sessions = [Session(reactor, host, port) for host, port in servers]
        self.stats = RunStats(started=reactor.seconds(), live=False)
        self.servers = [f"{host}:{port}" for host, port in servers]
        self.renewals = 0
        self.per_server = {server: Counter[str]() for server in self.servers}
        self.renew_s = DEFAULT_RENEW_S
        self._loop: LoopingCall | None = None
        self._busy: set[int] = set()
        self._stopped = False

    @inlineCallbacks
    def start(self) -> Any:
        """Subscribe on every server; fails with BotRunError if one refuses or is down."""
        try:
            acks = yield gatherResults(
                [run_script([Connect(10), self.subscribe], s, self.stats) for s in self.sessions],
                consumeErrors=True,
            )
        except Exception as exc:
            reason = getattr(getattr(exc, "subFailure", None), "value", exc)
            raise BotRunError(f"cannot subscribe the UDP listener: {reason}") from None
        for index in range(len(self.sessions)):
            self._watch(index)
        leases = [ack.lease_s for _, ack in acks if ack.lease_s > 0]
        if leases:
            self.renew_s = max(0.05, min(leases) / 3.0)
        self._loop = LoopingCall(self._renew)
        self._loop.clock = self.reactor
        self._loop.start(self.renew_s, now=False)

    def _renew(self) -> None:
        for index, session in enumerate(self.sessions):
            if index in self._busy or not session.connected:
                continue  # a dropped server is re-subscribed by _resubscribe
            self.renewals += 1
            self.per_server[self.servers[index]]["renewals"] += 1
            d: Deferred[Any] = self.subscribe.execute(session, self.stats)
            self._busy.add(index)
            d.addErrback(self._ignore)
            d.addBoth(self._done, index)

    def _watch(self, index: int) -> None:
        """Re-subscribe when this server's connection drops."""
        protocol = self.sessions[index].protocol
        if protocol is not None:
            protocol.closed.addCallback(lambda _: self._dropped(index))

    def _dropped(self, index: int) -> None:
        if self._stopped:
            return
        self.per_server[self.servers[index]]["drops"] += 1
        self.reactor.callLater(RESUBSCRIBE_BACKOFF_S[0], self._resubscribe, index, 0)

    def _resubscribe(self, index: int, attempt: int) -> None:
        if self._stopped:
            return
        session = self.sessions[index]
        counts = self.per_server[self.servers[index]]
        session.protocol = None
        counts["resubscribe_attempts"] += 1
        self._busy.add(index)

        def subscribed(_: object) -> None:
            counts["resubscribed"] += 1
            self._busy.discard(index)
            self._watch(index)

        def failed(_: Failure) -> None:
            self._busy.discard(index)
            delay = RESUBSCRIBE_BACKOFF_S[min(attempt + 1, len(RESUBSCRIBE_BACKOFF_S) - 1)]
            if not self._stopped:
                self.reactor.callLater(delay, self._resubscribe, index, attempt + 1)

        run_script([Connect(2), self.subscribe], session, self.stats).addCallbacks(
            subscribed, failed
        )

    def _done(self, _: object, index: int) -> None:
        self._busy.discard(index)

    def _ignore(self, failure: Failure) -> None:
        self.stats.notes.append(f"UDP subscription renewal failed: {failure.getErrorMessage()}")

    def stop(self) -> Deferred[Any]:
        """Stop renewing and close the connections (the server drops their targets)."""
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return gatherResults([Disconnect().execute(s, self.stats) for s in self.sessions])

    def report(self) -> dict[str, Any]:
        """How the subscriptions were kept."""
        return {
            "renew_s": self.renew_s,
            "renewals": self.renewals,
            "resubscribe_attempts": sum(
                c["resubscribe_attempts"] for c in self.per_server.values()
            ),
            "resubscribed": sum(c["resubscribed"] for c in self.per_server.values()),
            "renewal_failures": len(self.stats.notes),
            "per_server": {
                server: {
                    key: counts[key]
                    for key in ("renewals", "drops", "resubscribe_attempts", "resubscribed")
                }
                for server, counts in self.per_server.items()
            },
        }
