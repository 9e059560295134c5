"""The result cache's Redis tier against a real redis-server, step by step.

Each "node" is what one daemon process holds (its own LRU, batcher and Redis
threads); the Redis calls run on a ManualRunner, so a test chooses when Redis
answers, and time comes from task.Clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from commonlib.batcher import BatchedResult, BatchPolicy, DynamicBatcher
from commonlib.models.base import ModelOutput, PreparedInput
from commonlib.models.moving_average import MovingAverageModel
from commonlib.redis_cache import LOG_INTERVAL_S, RedisStore, RedisTier
from commonlib.result_cache import ResultCache, cache_key, decode_output
from tests.redis_server import RedisServer, free_port, needs_redis, run_redis
from tests.support import ManualRunner
from tests.test_ops_unit import Events, events  # noqa: F401 - events: the log-recording fixture
from util.errors import ErrorCode, ServiceError

pytestmark = needs_redis

MODEL = "moving_average"
TIMEOUT_S = 0.02
RETRY_S = 1.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis(tmp_path / "redis") as server:
        yield server


@dataclass
class Node:
    """One process's cache: LRU, Redis tier and model batcher, on a shared clock."""

    cache: ResultCache
    tier: RedisTier
    redis_runner: ManualRunner
    model_runner: ManualRunner
    batcher: DynamicBatcher[PreparedInput, ModelOutput]
    clock: Clock

    def infer(self, values: list[float]) -> Deferred[BatchedResult[ModelOutput]]:
        prepared = MovingAverageModel().prepare(values, {})
        submit = partial(self.batcher.submit, prepared.batch_key, prepared)
        return self.cache.infer(MODEL, "1", prepared, submit)

    def run_model(self) -> int:
        self.clock.advance(0)
        return self.model_runner.run_pending()


def make_node(url: str, clock: Clock, max_pending: int = 16, max_queue: int = 64) -> Node:
    model = MovingAverageModel()
    model_runner, redis_runner = ManualRunner(), ManualRunner()
    batcher: DynamicBatcher[PreparedInput, ModelOutput] = DynamicBatcher(
        MODEL,
        model.run_batch,
        model_runner,
        clock,
        BatchPolicy(max_batch_size=64, max_queue=max_queue),
    )
    store = RedisStore(url, timeout_s=1.0, max_connections=2)
    tier = RedisTier(store, redis_runner, clock, TIMEOUT_S, max_pending, RETRY_S, "test:")
    cache = ResultCache(100, {MODEL: 300.0}, clock, tier)
    return Node(cache, tier, redis_runner, model_runner, batcher, clock)


def result_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


SERIES = [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_result_computed_by_one_process_is_a_hit_in_another(
    redis_server: RedisServer,
) -> None:
    clock = Clock()
    a, b = make_node(redis_server.url, clock), make_node(redis_server.url, clock)
    d = a.infer(SERIES)
    assert a.redis_runner.run_pending() == 1  # the lookup: a miss
    assert a.run_model() == 1
    computed = result_of(d)
    assert not computed.cache_hit
    assert a.redis_runner.run_pending() == 1  # the store
    key = a.tier.redis_key(
        MODEL, "1", cache_key(MODEL, "1", MovingAverageModel().prepare(SERIES, {}))
    )
    assert key.startswith("test:moving_average:1:")
    assert 299_000 < redis_server.client().pttl(key) <= 300_000

    d = b.infer(SERIES)
    assert b.redis_runner.run_pending() == 1
    found = result_of(d)
    assert found.cache_hit and (found.queue_wait_s, found.batch_size) == (0.0, 0)
    assert found.output.predictions.tolist() == computed.output.predictions.tolist()
    assert b.run_model() == 0  # no batch ran it
    assert result_of(b.infer(SERIES)).cache_hit  # now from b's own LRU
    assert b.redis_runner.pending == []
    assert b.cache.stats[MODEL].hits == {"redis": 1, "local": 1}
    assert b.tier.lookups[(MODEL, "hit")] == 1 and a.tier.lookups[(MODEL, "miss")] == 1


def test_a_slow_lookup_times_out_to_the_batcher_and_its_late_answer_is_ignored(
    redis_server: RedisServer,
) -> None:
    clock = Clock()
    node = make_node(redis_server.url, clock)
    d = node.infer(SERIES)
    assert not d.called and node.tier.pending == 1
    clock.advance(TIMEOUT_S)
    assert node.run_model() == 1
    assert not result_of(d).cache_hit
    # Redis counts as down for redis_retry_s: the result is not stored there either.
    assert node.tier.failures == {(MODEL, "timeout"): 1, (MODEL, "store_skipped"): 1}
    assert node.redis_runner.run_pending() == 1  # the late lookup, answered now: ignored
    assert node.tier.pending == 0 and len(node.tier.failures) == 2


def redis_warnings(recorded: Events) -> list[str]:
    return [
        formatEvent(e)
        for e in recorded.items
        if e.get("log_level") == LogLevel.warn and "Redis" in e.get("log_format", "")
    ]


def test_a_down_redis_is_skipped_for_the_retry_interval_and_logged_once_a_minute(
    events: Events,  # noqa: F811 - the imported fixture
) -> None:
    clock = Clock()
    node = make_node(f"redis://127.0.0.1:{free_port()}/0", clock)  # nothing listens there

    def one_request(redis_calls: int) -> None:
        d = node.infer([*SERIES, clock.seconds()])  # a new input each time: an LRU miss
        assert node.redis_runner.run_pending() == redis_calls
        assert node.run_model() == 1 and not result_of(d).cache_hit

    one_request(redis_calls=1)  # tried: connection refused; its result is not stored
    assert node.tier.failures == {(MODEL, "error"): 1, (MODEL, "store_skipped"): 1}
    assert len(redis_warnings(events)) == 1 and "ConnectionError" in redis_warnings(events)[0]
    clock.advance(RETRY_S / 2)
    one_request(redis_calls=0)  # within redis_retry_s: not even tried
    assert node.tier.failures[(MODEL, "down")] == 1
    clock.advance(RETRY_S)
    one_request(redis_calls=1)  # tried again, failed again: counted, not logged
    assert node.tier.failures[(MODEL, "error")] == 2 and len(redis_warnings(events)) == 1
    clock.advance(LOG_INTERVAL_S)
    one_request(redis_calls=1)
    warned = redis_warnings(events)
    assert len(warned) == 2 and "2 failures since the last such line" in warned[1]


def test_when_the_pool_is_full_requests_skip_redis(redis_server: RedisServer) -> None:
    clock = Clock()
    node = make_node(redis_server.url, clock, max_pending=1)
    first = node.infer(SERIES)
    second = node.infer([*SERIES, 6.0])
    assert node.tier.failures == {(MODEL, "overloaded"): 1}
    assert node.run_model() == 1 and not result_of(second).cache_hit
    assert not first.called
    assert node.redis_runner.run_pending() == 1  # the first one's lookup: a miss
    assert node.run_model() == 1 and not result_of(first).cache_hit


def test_an_unreadable_value_in_redis_is_a_miss(redis_server: RedisServer) -> None:
    clock = Clock()
    node = make_node(redis_server.url, clock)
    prepared = MovingAverageModel().prepare(SERIES, {})
    key = node.tier.redis_key(MODEL, "1", cache_key(MODEL, "1", prepared))
    redis_server.client().set(key, b"?")
    d = node.infer(SERIES)
    node.redis_runner.run_pending()
    assert node.run_model() == 1
    assert result_of(d).output.predictions.tolist() == [3.0] * 5
    assert node.tier.failures == {(MODEL, "unreadable"): 1}
    assert node.redis_runner.run_pending() == 1  # Redis is not counted down: overwritten
    stored = redis_server.client().get(key)
    assert isinstance(stored, bytes) and decode_output(stored).predictions.tolist() == [3.0] * 5


def test_a_full_queue_after_a_redis_miss_is_a_busy_reply(redis_server: RedisServer) -> None:
    clock = Clock()
    node = make_node(redis_server.url, clock, max_queue=1)
    first, second = node.infer(SERIES), node.infer([*SERIES, 6.0])
    assert node.redis_runner.run_pending() == 2  # both miss; the second finds the queue full
    error = result_of(second)
    assert isinstance(error, Failure) and isinstance(error.value, ServiceError)
    assert error.value.code == ErrorCode.BUSY
    assert node.run_model() == 1 and np.isfinite(result_of(first).output.predictions).all()
