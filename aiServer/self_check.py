"""A loopback self-check at start: one request per model through the real TCP port.

It warms the code paths a request takes (framing, dispatch, encoding), which are
otherwise slow for the process's first request, and proves the port answers
before the server reports ready.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import Int32StringReceiver

from commonlib.wire import pb


class _SelfCheckClient(Int32StringReceiver):
    def __init__(self) -> None:
        self.waiting: dict[int, Deferred[pb.Envelope]] = {}

    def stringReceived(self, string: bytes) -> None:
        reply = pb.Envelope.FromString(string)
        waiting = self.waiting.pop(reply.request_id, None)
        if waiting is not None:
            waiting.callback(reply)

    def ask(self, envelope: pb.Envelope) -> Deferred[pb.Envelope]:
        d: Deferred[pb.Envelope] = Deferred()
        self.waiting[envelope.request_id] = d
        self.sendString(envelope.SerializeToString())
        return d


def self_check(
    reactor: Any, host: str, port: int, requests: Sequence[pb.Envelope]
) -> Deferred[None]:
    """Connect to ``host:port``, send ``requests`` (each must succeed), disconnect."""
    client = _SelfCheckClient()
    connected: Deferred[Any] = connectProtocol(
        TCP4ClientEndpoint(reactor, host, port, timeout=10), client
    )

    def ask_all(_: object) -> Deferred[list[pb.Envelope]]:
        return gatherResults([client.ask(r) for r in requests], consumeErrors=True)

    def check(replies: list[pb.Envelope]) -> None:
        client.transport.loseConnection()  # type: ignore[union-attr]
        failed = [r for r in replies if r.HasField("error")]
        if failed:
            raise RuntimeError(f"self-check request failed: {failed[0].error.message}")

    return connected.addCallback(ask_all).addCallback(check)
