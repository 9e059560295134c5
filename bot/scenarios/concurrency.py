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
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import deferLater

from bot.client import Session
from bot.commands import Connect, Disconnect, Ping, RequestSpec, SendInference, run_script
from bot.histogram import encode, new_histogram, record_seconds, summary_ms
from bot.retry import RetryPolicy
from bot.stats import RunStats

FD_HEADROOM = 64
TIMELINE_BUCKETS = 100


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

    began = reactor.seconds()
    established: list[float] = []  # seconds after the start, per connection
    first_replies: list[float] = []

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
            established.append(started + connect_s - began)
            if verdict == "ok":
                now = reactor.seconds()
                record_seconds(first_reply_hist, now - started)
                first_replies.append(now - began)

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
        "timeline": timeline(established, first_replies),
    }


def timeline(
    established: list[float], first_replies: list[float], buckets: int = TIMELINE_BUCKETS
) -> list[dict[str, float]]:
    """Connections established and first replies so far, at ``buckets`` even instants."""
    end = max([*established, *first_replies], default=0.0)
    if end <= 0:
        return []
    connected, answered = sorted(established), sorted(first_replies)
    out = []
    for i in range(1, buckets + 1):
        t = end * i / buckets
        out.append(
            {
                "t": round(t, 6),
                "established": bisect_right(connected, t),
                "first_replies": bisect_right(answered, t),
            }
        )
    return out


SWEEP_PAUSE_S = 1.0  # between sweep steps: the server closes the last step's connections


@inlineCallbacks
def run_sweep(
    reactor: Any,
    host: str,
    port: int,
    sizes: Sequence[int],
    specs: Sequence[RequestSpec],
    connect_timeout_s: float = 30.0,
    retry_budget_s: float = 30.0,
) -> Any:
    """The concurrency scenario at each of ``sizes`` in turn; the report of all of them.

    ``sweep`` has one row per size (served, connect and first-reply percentiles,
    retries); the totals and histograms are those of every step together.
    """
    from bot.merge import merge_worker_reports

    began = reactor.seconds()
    steps = []
    for size in sizes:
        offset = int(reactor.seconds() - began)
        retry = RetryPolicy(budget_s=retry_budget_s)
        step = yield run_concurrency(reactor, host, port, size, specs, connect_timeout_s, retry)
        step["series"] = [{**row, "t": row["t"] + offset} for row in step["series"]]
        steps.append(step)
        if size != sizes[-1]:
            yield deferLater(reactor, SWEEP_PAUSE_S, lambda: None)
    merged = merge_worker_reports("concurrency", steps)
    merged.pop("processes", None)
    merged["timeline"] = steps[-1]["timeline"]  # the largest step's, to be plotted
    merged["sweep"] = [sweep_row(step) for step in steps]
    return merged


def sweep_row(step: dict[str, Any]) -> dict[str, Any]:
    """One size of a sweep: how many were served and how fast."""
    return {
        "connections": step["connections"],
        "served": step["served"],
        "errors": step["error_count"],
        "lost": step["lost"],
        "retried": sum(step["retried_by_code"].values()),
        **{f"connect_{k}": v for k, v in step["connect_latency"].items() if k != "count"},
        **{f"first_reply_{k}": v for k, v in step["first_reply_latency"].items() if k != "count"},
    }
