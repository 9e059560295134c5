"""A loopback self-check at start: one request per model through the real TCP port.

It warms the code paths a request takes (framing, dispatch, encoding), which are
otherwise slow for the process's first request, and proves the port answers
before the server reports ready. It fails (never hangs) when a reply does not
come within its timeout or the connection closes first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from twisted.internet.defer import Deferred, TimeoutError, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from commonlib.wire import pb
from factory.client_codec import ConfigScalar, infer_envelope, ping_envelope
from factory.client_protocol import EnvelopeClientProtocol

SELF_CHECK_TIMEOUT_S = 10.0
"""The whole self-check (connect and every reply) must finish within this."""


class SelfCheckFailed(Exception):
    """The self-check got no answer, a dropped connection or an error reply."""


def self_check_requests(
    warmup: Sequence[tuple[str, npt.NDArray[np.floating], Mapping[str, ConfigScalar]]],
) -> list[pb.Envelope]:
    """A Ping, then one InferRequest per (model, input, config) of ``warmup``.

    The requests bypass the result cache: the check is of the model path, and a
    cached (or shared Redis) answer proves less.
    """
    requests = [ping_envelope(1)]
    for i, (name, values, config) in enumerate(warmup):
        requests.append(infer_envelope(2 + i, name, values, config, cache=pb.CACHE_MODE_BYPASS))
    return requests


class _SelfCheckClient(EnvelopeClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.waiting: dict[int, Deferred[pb.Envelope]] = {}
        self.lost: str | None = None

    def envelope_received(self, envelope: pb.Envelope) -> None:
        waiting = self.waiting.pop(envelope.request_id, None)
        if waiting is not None:
            waiting.callback(envelope)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.frame_error is not None:
            self.lost = f"the server sent a frame the check cannot read ({self.frame_error})"
        else:
            cause = reason.getErrorMessage()
            self.lost = f"the server closed the connection before replying ({cause})"
        waiting, self.waiting = self.waiting, {}
        for d in waiting.values():
            d.errback(SelfCheckFailed(self.lost))

    def ask(self, envelope: pb.Envelope) -> Deferred[pb.Envelope]:
        if self.lost is not None:
            return fail(SelfCheckFailed(self.lost))
        d: Deferred[pb.Envelope] = Deferred()
        self.waiting[envelope.request_id] = d
        self.send_envelope(envelope)
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
        # The timeout cancelled a connection attempt still pending (or the connect
        # itself timed out): not connected, rather than a traceback.
        if failure.check(ConnectingCancelledError, ConnectTimeoutError):
            return Failure(SelfCheckFailed(f"could not connect within {timeout:g} s"))
        return failure

    def close(result: object) -> object:
        client.close()
        return result

    done = connected.addCallback(ask_all).addCallback(check)
    done.addTimeout(timeout, reactor)
    return done.addErrback(timed_out).addBoth(close)
