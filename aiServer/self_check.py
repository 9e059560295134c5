"""A loopback self-check at start: one request per model through the real TCP port.

It warms the code paths a request takes (framing, dispatch, encoding), which are
otherwise slow for the process's first request, and proves the port answers
before the server reports ready. It fails (never hangs) when a reply does not
come within its timeout or the connection closes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from commonlib.wire import pb

SELF_CHECK_TIMEOUT_S = 10.0
"""The whole self-check (connect and every reply) must finish within this."""


class SelfCheckFailed(Exception):
    """The self-check got no answer, a dropped connection or an error reply."""


class _SelfCheckClient(Int32StringReceiver):
    def __init__(self) -> None:
        self.waiting: dict[int, Deferred[pb.Envelope]] = {}
        self.lost: str | None = None

    def stringReceived(self, string: bytes) -> None:
        reply = pb.Envelope.FromString(string)
        waiting = self.waiting.pop(reply.request_id, None)
        if waiting is not None:
            waiting.callback(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = f"the server closed the connection before replying ({reason.getErrorMessage()})"
        waiting, self.waiting = self.waiting, {}
        for d in waiting.values():
            d.errback(SelfCheckFailed(self.lost))

    def ask(self, envelope: pb.Envelope) -> Deferred[pb.Envelope]:
        if self.lost is not None:
            return fail(SelfCheckFailed(self.lost))
        d: Deferred[pb.Envelope] = Deferred()
        self.waiting[envelope.request_id] = d
        self.sendString(envelope.SerializeToString())
        return d

    def close(self) -> None:
        if self.transport is not None and self.lost is None:
            self.transport.loseConnection()


def self_check(
    reactor: Any,
    host: str,
    port: int,
    requests: Sequence[pb.Envelope],
    timeout: float = SELF_CHECK_TIMEOUT_S,
) -> Deferred[None]:
    """Connect to ``host:port``, send ``requests`` (each must succeed), disconnect.

    One at a time, so that any ``max_inflight_per_connection`` (even 1) lets them all in.
    Fails with SelfCheckFailed: an error reply, a dropped connection, or no reply
    within ``timeout`` seconds.
    """
    client = _SelfCheckClient()
    connected: Deferred[Any] = connectProtocol(
        TCP4ClientEndpoint(reactor, host, port, timeout=timeout), client
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
        failed = [r for r in replies if r.HasField("error")]
        if failed:
            raise SelfCheckFailed(f"a self-check request failed: {failed[0].error.message}")

    def timed_out(failure: Failure) -> Failure:
        if failure.check(TimeoutError):
            return Failure(
                SelfCheckFailed(
                    f"no reply within {timeout:g} s ({len(replies)} of {len(requests)})"
                )
            )
        return failure

    def close(result: object) -> object:
        client.close()
        return result

    done = connected.addCallback(ask_all).addCallback(check)
    done.addTimeout(timeout, reactor)
    return done.addErrback(timed_out).addBoth(close)
