"""Keeps the bot's UDP listener subscribed on every server for the whole run.

A Subscribe target is a lease (``udp.lease_s``) that ends with the connection that
added it, and an idle connection is closed by the server. So each server gets its
own Session running Connect + Subscribe, and the Subscribe is sent again every
third of the lease, which renews it and keeps the connection busy. A connection
that drops (a server killed in a failover run) is re-opened and re-subscribed at
the next renewal.
"""

from __future__ import annotations

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


class UdpSubscriptions:
    """One subscribing Session per server, renewed until :meth:`stop`."""

    def __init__(
        self,
        reactor: Any,
        servers: Sequence[tuple[str, int]],
        listen_host: str,
        listen_port: int,
        json_encoding: bool = False,
    ) -> None:
        self.reactor = reactor
        self.subscribe = Subscribe(listen_host, listen_port, json_encoding)
        self.sessions = [Session(reactor, host, port) for host, port in servers]
        self.stats = RunStats(started=reactor.seconds(), live=False)
        self.renewals = 0
        self.resubscribed = 0
        self.renew_s = DEFAULT_RENEW_S
        self._loop: LoopingCall | None = None
        self._busy: set[int] = set()

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
        leases = [ack.lease_s for _, ack in acks if ack.lease_s > 0]
        if leases:
            self.renew_s = max(0.05, min(leases) / 3.0)
        self._loop = LoopingCall(self._renew)
        self._loop.clock = self.reactor
        self._loop.start(self.renew_s, now=False)

    def _renew(self) -> None:
        for index, session in enumerate(self.sessions):
            if index in self._busy:
                continue
            if session.connected:
                self.renewals += 1
                d: Deferred[Any] = self.subscribe.execute(session, self.stats)
            else:
                session.protocol = None
                self.resubscribed += 1
                d = run_script([Connect(2), self.subscribe], session, self.stats)
            self._busy.add(index)
            d.addErrback(self._ignore)  # a server that is down: try again next time
            d.addBoth(self._done, index)

    def _done(self, _: object, index: int) -> None:
        self._busy.discard(index)

    def _ignore(self, failure: Failure) -> None:
        self.stats.notes.append(f"UDP subscription renewal failed: {failure.getErrorMessage()}")

    def stop(self) -> Deferred[Any]:
        """Stop renewing and close the connections (the server drops their targets)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return gatherResults([Disconnect().execute(s, self.stats) for s in self.sessions])

    def report(self) -> dict[str, Any]:
        """How the subscriptions were kept."""
        return {
            "renew_s": self.renew_s,
            "renewals": self.renewals,
            "resubscribed": self.resubscribed,
            "renewal_failures": len(self.stats.notes),
        }
