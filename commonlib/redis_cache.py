"""The result cache's shared tier: Redis, looked up off the reactor thread.

Every Redis call runs on a few dedicated threads (``cache.redis_threads``) with
socket timeouts of ``cache.redis_timeout_ms``; the reactor also gives each lookup
that long (queueing included) before it sends the request to the batcher anyway.
Past ``cache.redis_max_pending`` calls queued or running, requests skip Redis.
After any failure Redis is skipped for ``cache.redis_retry_s``, so a down Redis
costs one failed call per interval rather than one per request. Every skip and
failure is counted per model and reason; a warning is logged at most once a minute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from commonlib.batcher import BatchRunner
from commonlib.result_cache import decode_output

log = Logger()

LOG_INTERVAL_S = 60.0
"""At most one warning about Redis failures per this many seconds."""

Found = tuple[bytes, float] | None


class RedisStore:
    """Blocking GET/SET of encoded results; call it only from the tier's threads."""

    def __init__(self, url: str, timeout_s: float, max_connections: int) -> None:
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # a failure is reported, not retried: the model runs
            max_connections=max_connections,
            health_check_interval=0,
        )

    def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, milliseconds to live; -1 = no expiry) or None when absent."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        value, pttl = pipe.execute()
        return None if value is None else (bytes(value), int(pttl))

    def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms`` milliseconds."""
        self.client.set(key, value, px=max(ttl_ms, 1))

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


class RedisTier:
    """A RemoteTier (commonlib.result_cache) over a :class:`RedisStore` on ``runner``'s threads.

    ``failures`` counts, by (model, reason), the lookups that did not reach Redis
    (reason ``down``: skipped during the retry interval; ``overloaded``: the pool
    was full; ``timeout``; ``error``; ``unreadable``: a value not in our format) and
    the stores that failed or were skipped (``store_error``, ``store_skipped``).
    """

    def __init__(
        self,
        store: RedisStore,
        runner: BatchRunner,
        clock: IReactorTime,
        timeout_s: float,
        max_pending: int,
        retry_s: float,
        key_prefix: str,
    ) -> None:
        self.backend = store
        self._runner = runner
        self._clock = clock
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.retry_s = retry_s
        self.key_prefix = key_prefix
        self.pending = 0
        self._down_until = 0.0
        self._failing = False
        self._last_logged: float | None = None
        self._unlogged = 0
        self.failures: Counter[tuple[str, str]] = Counter()
        self.lookups: Counter[tuple[str, str]] = Counter()  # (model, "hit" or "miss")

    def start(self) -> None:
        """Start the threads."""
        self._runner.start()

    def stop(self) -> None:
        """Let queued calls finish (each bounded by the timeout), then close the connections."""
        self._runner.stop()
        self.backend.close()

    def redis_key(self, model: str, version: str, key: bytes) -> str:
        """The Redis key of a result: prefix, model, version and the digest in hex."""
        return f"{self.key_prefix}{model}:{version}:{key.hex()}"

    def _skip_reason(self) -> str | None:
        if self._clock.seconds() < self._down_until:
            return "down"
        if self.pending >= self.max_pending:
            return "overloaded"
        return None

    def lookup(self, model: str, version: str, key: bytes) -> Deferred[Found]:
        """(output, seconds it stays valid) or None; fires within ``timeout_s``, never fails."""
        skip = self._skip_reason()
        if skip is not None:
            self.failures[(model, skip)] += 1
            return succeed(None)
        self.pending += 1
        get = self.backend.get
        redis_key = self.redis_key(model, version, key)
        result: Deferred[Found] = Deferred()
        timer = self._clock.callLater(self.timeout_s, self._timed_out, result, model)
        self._runner.run(lambda: get(redis_key)).addBoth(self._looked_up, result, timer, model)
        return result

    def _timed_out(self, result: Deferred[Found], model: str) -> None:
        self._failed(model, "timeout", f"no answer within {self.timeout_s * 1000:g} ms")
        result.callback(None)

    def _looked_up(
        self,
        outcome: tuple[bytes, int] | Failure | None,
        result: Deferred[Found],
        timer: IDelayedCall,
        model: str,
    ) -> None:
        self.pending -= 1
        if result.called:  # timed out: the request went on without this answer
            return None
        timer.cancel()
        if isinstance(outcome, Failure):
            reason = "timeout" if outcome.check(redis.TimeoutError) else "error"
            self._failed(model, reason, _describe(outcome))
            result.callback(None)
            return None
        self._recovered()
        if outcome is None:
            self.lookups[(model, "miss")] += 1
            result.callback(None)
            return None
        value, ttl_ms = outcome
        try:
            decode_output(value)  # only to check it: the LRU keeps the bytes
        except ValueError as exc:
            # Redis works; the value does not (another format): recompute, overwrite it.
            self._failed(model, "unreadable", f"an unreadable value: {exc}", down=False)
            result.callback(None)
            return None
        self.lookups[(model, "hit")] += 1
        result.callback((value, ttl_ms / 1000.0 if ttl_ms > 0 else float("inf")))
        return None

    def store(self, model: str, version: str, key: bytes, data: bytes, ttl_s: float) -> None:
        """SET the result with its TTL on the threads; skipped when Redis is down or busy."""
        if self._skip_reason() is not None:
            self.failures[(model, "store_skipped")] += 1
            return
        self.pending += 1
        put = self.backend.set
        redis_key = self.redis_key(model, version, key)
        ttl_ms = int(ttl_s * 1000)
        self._runner.run(lambda: put(redis_key, data, ttl_ms)).addBoth(self._stored, model)

    def _stored(self, outcome: Any, model: str) -> None:
        self.pending -= 1
        if isinstance(outcome, Failure):
            self._failed(model, "store_error", _describe(outcome))
        return None

    def _failed(self, model: str, reason: str, detail: str, down: bool = True) -> None:
        self.failures[(model, reason)] += 1
        now = self._clock.seconds()
        if down:
            self._down_until = now + self.retry_s
            self._failing = True
        self._unlogged += 1
        if self._last_logged is not None and now - self._last_logged < LOG_INTERVAL_S:
            return
        log.warn(
            "Redis result cache unavailable ({reason}: {detail}): serving without it, "
            "retrying every {retry_s:g} s ({count} failures since the last such line; "
            "logged at most once a minute)",
            reason=reason,
            detail=detail,
            retry_s=self.retry_s,
            count=self._unlogged,
        )
        self._last_logged = now
        self._unlogged = 0

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("Redis result cache reachable again")


def _describe(failure: Failure) -> str:
    error = failure.value
    return f"{type(error).__name__}: {error}"


def redis_tier(
    url: str,
    timeout_s: float,
    threads: int,
    max_pending: int,
    retry_s: float,
    key_prefix: str,
    clock: IReactorTime,
    make_runner: Callable[[int], BatchRunner],
) -> RedisTier:
    """A RedisTier for ``url`` whose calls run on ``make_runner(threads)``."""
    store = RedisStore(url, timeout_s, max_connections=threads)
    return RedisTier(
        store, make_runner(threads), clock, timeout_s, max_pending, retry_s, key_prefix
    )
