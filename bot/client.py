"""The bot's Twisted client: pipelined requests matched to replies by request id."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.python.failure import Failure

from commonlib.wire import pb
from factory.client_protocol import EnvelopeClientProtocol


class ConnectionLostError(Exception):
    """The connection closed before the reply came."""


@dataclass
class Pending:
    """A request waiting for its reply."""

    deferred: Deferred[pb.Envelope]
    sent_at: float


class BotProtocol(EnvelopeClientProtocol):
    """Sends Envelopes and fires each request's Deferred with the reply of the same id.

    Replies with an unknown id (or a second reply to the same id) are counted as
    ``unexpected``: the server must answer every request exactly once. A frame that
    is not an Envelope aborts the connection: every pending request fails naming it.
    """

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock
        self.pending: dict[int, Pending] = {}
        self.unexpected = 0
        self.connected_at = 0.0
        self.closed: Deferred[None] = Deferred()
        self.on_unsolicited: Callable[[pb.Envelope], None] | None = None

    def connectionMade(self) -> None:
        self.connected_at = self.clock.seconds()

    def envelope_received(self, envelope: pb.Envelope) -> None:
        waiting = self.pending.pop(envelope.request_id, None)
        if waiting is None:
            self.unexpected += 1
            if self.on_unsolicited is not None:
                self.on_unsolicited(envelope)
            return
        waiting.deferred.callback(envelope)

    def connectionLost(self, reason: Failure = Failure(ConnectionLostError())) -> None:  # noqa: B008
        pending, self.pending = self.pending, {}
        cause = self.lost_because(reason)
        for waiting in pending.values():
            waiting.deferred.errback(Failure(ConnectionLostError(cause)))
        if not self.closed.called:
            self.closed.callback(None)

    def request(self, envelope: pb.Envelope) -> Deferred[pb.Envelope]:
        """Send ``envelope``; fires with the reply of the same request id."""
        return self.send_request(envelope.request_id, envelope.SerializeToString())

    def send_request(self, request_id: int, payload: bytes) -> Deferred[pb.Envelope]:
        """Send a serialized Envelope whose id is ``request_id``; fires with the reply."""
        d: Deferred[pb.Envelope] = Deferred()
        self.pending[request_id] = Pending(d, self.clock.seconds())
        self.send_payload(payload)
        return d

    def close(self, abort: bool = False) -> None:
        """Close the connection (``abort``: at once, dropping unsent bytes)."""
        if self.transport is None:
            return
        if abort:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        else:
            self.transport.loseConnection()


@dataclass
class Session:
    """One bot connection with the state its commands share."""

    reactor: Any
    host: str
    port: int
    protocol: BotProtocol | None = None
    connected_at: float = 0.0
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> int:
        """A request id unique on this session."""
        return next(self.ids)

    @property
    def connected(self) -> bool:
        """Whether the connection is up."""
        return (
            self.protocol is not None
            and self.protocol.transport is not None
            and (self.protocol.connected == 1)
        )


def connect(reactor: Any, host: str, port: int, timeout: float = 10.0) -> Deferred[BotProtocol]:
    """Open one connection; fires with its BotProtocol."""
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    protocol = BotProtocol(reactor)
    connected: Deferred[Any] = connectProtocol(endpoint, protocol)
    return connected.addCallback(lambda _: protocol)
