"""A loopback self-check at start: one request per model through the real TCP port.

It warms the code paths a request takes (framing, dispatch, encoding), which are
otherwise slow for the process's first request, and proves the port answers
before the server reports ready.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
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
    """Connect to ``host:port``, send ``requests`` (each must succeed), disconnect.

    One at a time, so that any ``max_inflight_per_connection`` (even 1) lets them all in.
    """
    client = _SelfCheckClient()
    connected: Deferred[Any] = connectProtocol(
        TCP4ClientEndpoint(reactor, host, port, timeout=10), client
    )

    replies: list[pb.Envelope] = []

    def ask_next(reply: pb.Envelope | None) -> Deferred[Any] | list[pb.Envelope]:
        if reply is not None:
            replies.append(reply)
        if len(replies) == len(requests):
            return replies
        return client.ask(requests[len(replies)]).addCallback(ask_next)

    def ask_all(_: object) -> Deferred[Any] | list[pb.Envelope]:
        return ask_next(None)

    def check(replies: list[pb.Envelope]) -> None:
        client.transport.loseConnection()  # type: ignore[union-attr]
        failed = [r for r in replies if r.HasField("error")]
        if failed:
            raise RuntimeError(f"self-check request failed: {failed[0].error.message}")

    return connected.addCallback(ask_all).addCallback(check)
