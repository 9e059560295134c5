"""concurrency: open N connections at once; each pings (handshake) and sends one request.

Every virtual client runs the script Connect, Ping, SendInference (retrying BUSY
and DEADLINE_EXCEEDED with exponential backoff and jitter, as a well-behaved client
does: bot/retry.py) and stays connected until all are done, so the server holds all
N at the same time. The report says how many were
served and gives the connect and first-reply latency distributions (encoded too,
so several bot processes merge them exactly).
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import DeferredList, inlineCallbacks

from bot.client import Session
from bot.commands import Connect, Disconnect, Ping, RequestSpec, SendInference, run_script
from bot.histogram import encode, new_histogram, record_seconds, summary_ms
from bot.retry import RetryPolicy
from bot.stats import RunStats

FD_HEADROOM = 64


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit toward ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


@inlineCallbacks
def run_concurrency(
    reactor: Any,
    host: str,
    port: int,
    connections: int,
    specs: Sequence[RequestSpec],
    connect_timeout_s: float = 30.0,
    retry: RetryPolicy | None = None,
) -> Any:
    """Every virtual client runs Connect, Ping, SendInference at once; fires with the report."""
    retry = retry or RetryPolicy()
    limit = raise_fd_limit(connections + FD_HEADROOM)
    stats = RunStats(started=reactor.seconds())
    connect_hist = new_histogram()
    first_reply_hist = new_histogram()
    sessions = [Session(reactor, host, port) for _ in range(connections)]
    failures: Counter[str] = Counter()

    def one(index: int, session: Session) -> Any:
        started = reactor.seconds()
        spec = specs[index % len(specs)]
        script = [
            Connect(connect_timeout_s),
            Ping(),
            SendInference(spec, retry),
        ]

        def record(results: list[Any]) -> None:
            connect_s, _, verdict = results
            record_seconds(connect_hist, connect_s)
            if verdict == "ok":
                record_seconds(first_reply_hist, reactor.seconds() - started)

        def failed(failure: Any) -> None:
            failures[type(failure.value).__name__] += 1

        return run_script(script, session, stats).addCallbacks(record, failed)

    yield DeferredList([one(i, session) for i, session in enumerate(sessions)])
    served = stats.answered
    yield DeferredList([Disconnect().execute(session, stats) for session in sessions])
    # One request per virtual client, whether or not it got as far as sending it.
    stats.sent = connections
    stats.lost = connections - stats.answered - stats.error_count
    return {
        "scenario": "concurrency",
        **stats.to_json(),
        "connections": connections,
        "served": served,
        "fd_limit": limit,
        "connect_failures": dict(failures),
        "retried_by_code": dict(retry.retried),
        "retries_given_up": dict(retry.gave_up),
        "connect_latency": summary_ms(connect_hist),
        "first_reply_latency": summary_ms(first_reply_hist),
        "connect_histogram": encode(connect_hist),
        "first_reply_histogram": encode(first_reply_hist),
    }
