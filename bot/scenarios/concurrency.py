"""concurrency: open N connections at once; each pings (handshake) and sends one request."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import deferLater

from bot.client import connect
from bot.commands import RequestSpec, judge
from bot.stats import RunStats, new_histogram, summary_ms
from commonlib.wire import pb

BUSY_RETRIES = 20
BUSY_BACKOFF_S = 0.05


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit toward ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


@inlineCallbacks
def run_concurrency(
    reactor: Any, host: str, port: int, connections: int, specs: Sequence[RequestSpec]
) -> Any:
    """Connect everything at once, then handshake and one request on each."""
    limit = raise_fd_limit(connections + 64)
    stats = RunStats(started=reactor.seconds())
    connect_hist = new_histogram()
    first_reply_hist = new_histogram()
    protocols: list[Any] = []
    failures: dict[str, int] = {}

    def one(index: int) -> Any:
        started = reactor.seconds()
        spec = specs[index % len(specs)]

        @inlineCallbacks
        def session() -> Any:
            protocol = yield connect(reactor, host, port, timeout=30)
            protocols.append(protocol)
            connected = reactor.seconds()
            connect_hist.record_value(max(1, int((connected - started) * 1e6)))
            yield protocol.request(pb.Envelope(request_id=1, ping=pb.Ping()))
            stats.on_sent(reactor.seconds())
            request_id = 2
            reply = yield protocol.request(spec.envelope(request_id))
            # BUSY means "retry later" (docs/protocol.md): a real client backs off and retries.
            for attempt in range(BUSY_RETRIES):
                if not (reply.HasField("error") and reply.error.code == pb.ERROR_CODE_BUSY):
                    break
                stats.retried += 1
                yield deferLater(reactor, BUSY_BACKOFF_S * (attempt + 1) * (1 + index % 7) / 4)
                request_id += 1
                reply = yield protocol.request(spec.envelope(request_id))
            now = reactor.seconds()
            verdict = judge(spec, request_id, reply)
            if verdict == "ok":
                stats.on_answer(now, now - connected)
                first_reply_hist.record_value(max(1, int((now - started) * 1e6)))
            else:
                stats.on_error(now, verdict)

        def failed(failure: Any) -> None:
            name = type(failure.value).__name__
            failures[name] = failures.get(name, 0) + 1

        return session().addErrback(failed)

    yield DeferredList([one(i) for i in range(connections)])
    served = stats.answered
    for protocol in protocols:
        protocol.close()
    yield DeferredList([p.closed for p in protocols])
    stats.lost = connections - stats.answered - stats.error_count
    return {
        "scenario": "concurrency",
        **stats.to_json(),
        "connections": connections,
        "served": served,
        "fd_limit": limit,
        "connect_failures": failures,
        "connect_latency": summary_ms(connect_hist),
        "first_reply_latency": summary_ms(first_reply_hist),
    }
