"""concurrency: open N connections at once; each pings (handshake) and sends one request."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import DeferredList, inlineCallbacks

from bot.client import Session
from bot.commands import Connect, Disconnect, Ping, RequestSpec, SendInference, run_script
from bot.stats import RunStats, new_histogram, summary_ms

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
    """Every virtual client runs the script Connect, Ping, SendInference at once."""
    limit = raise_fd_limit(connections + 64)
    stats = RunStats(started=reactor.seconds())
    connect_hist = new_histogram()
    first_reply_hist = new_histogram()
    sessions = [Session(reactor, host, port) for _ in range(connections)]
    failures: dict[str, int] = {}

    def one(index: int, session: Session) -> Any:
        started = reactor.seconds()
        spec = specs[index % len(specs)]
        script = [Connect(), Ping(), SendInference(spec, BUSY_RETRIES, BUSY_BACKOFF_S)]

        def record(results: list[Any]) -> None:
            connect_s, _, verdict = results
            connect_hist.record_value(max(1, int(connect_s * 1e6)))
            if verdict == "ok":
                first_reply_hist.record_value(max(1, int((reactor.seconds() - started) * 1e6)))

        def failed(failure: Any) -> None:
            name = type(failure.value).__name__
            failures[name] = failures.get(name, 0) + 1

        return run_script(script, session, stats).addCallbacks(record, failed)

    yield DeferredList([one(i, session) for i, session in enumerate(sessions)])
    served = stats.answered
    yield DeferredList([Disconnect().execute(session, stats) for session in sessions])
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
