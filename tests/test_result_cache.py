"""The in-process result cache, through the whole in-memory path (task.Clock, ManualRunner)."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from aiServer.facade import result_json
from aiServer.service import Daemon
from commonlib.models.base import ModelOutput, PreparedInput
from commonlib.result_cache import (
    KeyMaker,
    ResultLru,
    cache_key,
    decode_output,
    encode_output,
)
from commonlib.wire import pb
from factory.tick_codec import encode_tick, unpack_rows
from tests.support import App, Client, infer, make_app
from util.errors import ErrorCode

SERIES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
ONLY_MA = {"lstm_timeseries": {"enabled": False}, "motion_lstm": {"enabled": False}}


def cached_app(cache: dict[str, Any] | None = None, models: dict[str, Any] | None = None) -> App:
    """moving_average (cheap to build) with a cache TTL: the default config caches it not."""
    ma = {"moving_average": {"cache_ttl_s": 300.0, **(models or {}).get("moving_average", {})}}
    return make_app(
        {
            "cache": {"enabled": True, **(cache or {})},
            "inference": {"models": {**ONLY_MA, **(models or {}), **ma}},
        }
    )


def ask(app: App, client: Client, envelope: pb.Envelope) -> tuple[pb.Envelope, int]:
    """Send one request; (its reply, batches the runner ran to answer it)."""
    client.send(envelope)
    batches = 0
    replies = client.replies()
    for _ in range(10):
        if replies:
            break
        app.clock.advance(0)
        batches += app.runner.run_pending()
        replies = client.replies()
    (reply,) = replies
    return reply, batches


def requests_run(app: App) -> int:
    (status,) = app.facade.get_queue_status()
    return status.requests_run


def test_a_repeat_is_answered_from_the_cache_before_the_batcher() -> None:
    app = cached_app()
    client = app.connect()
    first, batches = ask(app, client, infer(1, "moving_average", SERIES, forecast_steps=3))
    assert batches == 1 and not first.infer_response.timings.cache_hit
    assert first.infer_response.timings.batch_size == 1
    client.send(infer(2, "moving_average", SERIES, forecast_steps=3))
    (second,) = client.replies()  # at once: no tick, no batch
    assert second.request_id == 2
    response = second.infer_response
    assert list(response.predictions) == list(first.infer_response.predictions)
    assert (response.model, response.version) == ("moving_average", "1")
    timings = response.timings
    assert timings.cache_hit
    assert (timings.queue_wait_ms, timings.batch_size, timings.inference_ms) == (0.0, 0, 0.0)
    assert requests_run(app) == 1
    stats = app.facade.result_cache.stats["moving_average"]  # type: ignore[union-attr]
    assert (stats.hits["local"], stats.misses) == (1, 1)


def test_without_the_cache_every_repeat_runs_the_model() -> None:
    app = make_app({"inference": {"models": ONLY_MA}})
    assert app.facade.result_cache is None
    client = app.connect()
    for request_id in (1, 2):
        reply, batches = ask(app, client, infer(request_id, "moving_average", SERIES))
        assert batches == 1 and not reply.infer_response.timings.cache_hit


def test_the_key_is_the_resolved_config_and_the_input_floats() -> None:
    app = cached_app()
    client = app.connect()
    ask(app, client, infer(1, "moving_average", SERIES))
    # The defaults spelt out resolve to the same config; raw_values are the same floats.
    same = [
        infer(2, "moving_average", SERIES, window_size=5, forecast_steps=5, include_trend=False),
        pb.Envelope(request_id=3),
    ]
    same[1].infer_request.model = "moving_average"
    same[1].infer_request.input.raw_values = struct.pack("<6f", *SERIES)
    for envelope in same:
        reply, batches = ask(app, client, envelope)
        assert reply.infer_response.timings.cache_hit and batches == 0
    different = [
        infer(4, "moving_average", SERIES, forecast_steps=6),
        infer(5, "moving_average", SERIES, include_trend=True),
        infer(6, "moving_average", [*SERIES[:-1], 6.000001]),
        infer(7, "moving_average", [0.0, *SERIES]),
    ]
    for envelope in different:
        reply, batches = ask(app, client, envelope)
        assert not reply.infer_response.timings.cache_hit and batches == 1, envelope


def test_the_key_includes_model_and_version() -> None:
    prepared = PreparedInput(np.array(SERIES, dtype=np.float32), {"a": 1, "b": True})
    key = cache_key("m", "1", prepared)
    assert len(key) == 16
    assert key == cache_key("m", "1", PreparedInput(prepared.values, {"b": True, "a": 1}))
    assert key != cache_key("m", "2", prepared)
    assert key != cache_key("n", "1", prepared)
    assert key != cache_key("m", "1", PreparedInput(prepared.values, {"a": 1.0, "b": True}))


def test_the_memoised_key_is_the_key() -> None:
    make_key = KeyMaker()
    make_key.MAX_CONFIGS = 2
    values = np.array(SERIES, dtype=np.float32)
    configs = [{"a": i} for i in range(5)]
    for _ in range(2):
        for config in configs:
            for model, version in (("m", "1"), ("m", "2"), ("n", "1")):
                prepared = PreparedInput(values, config)
                assert make_key(model, version, prepared) == cache_key(model, version, prepared)
    prepared = PreparedInput(values.astype(np.float64), configs[1])  # float64: as float32
    assert make_key("m", "1", prepared) == cache_key("m", "1", PreparedInput(values, {"a": 1}))


def test_each_model_keeps_results_for_its_own_ttl() -> None:
    app = cached_app(models={"moving_average": {"cache_ttl_s": 10.0}})
    client = app.connect()
    ask(app, client, infer(1, "moving_average", SERIES))
    app.clock.advance(9.9)
    reply, _ = ask(app, client, infer(2, "moving_average", SERIES))
    assert reply.infer_response.timings.cache_hit
    app.clock.advance(0.2)
    reply, batches = ask(app, client, infer(3, "moving_average", SERIES))
    assert not reply.infer_response.timings.cache_hit and batches == 1
    cache = app.facade.result_cache
    assert cache is not None and cache.lru.expired["moving_average"] == 1


def test_a_model_without_ttl_inherits_the_default_and_ttl_zero_is_never_cached() -> None:
    app = cached_app(cache={"ttl_s": 5.0}, models={"moving_average": {"cache_ttl_s": None}})
    assert app.facade.result_cache is not None
    assert app.facade.result_cache.ttls == {"moving_average": 5.0}
    app = cached_app(models={"moving_average": {"cache_ttl_s": 0.0}})
    client = app.connect()
    for request_id in (1, 2):
        reply, batches = ask(app, client, infer(request_id, "moving_average", SERIES))
        assert not reply.infer_response.timings.cache_hit and batches == 1
    assert len(app.facade.result_cache.lru) == 0  # type: ignore[union-attr]


def test_the_default_config_caches_the_lstm_models_but_not_moving_average() -> None:
    cache = make_app({"cache": {"enabled": True}}).facade.result_cache
    assert cache is not None
    assert cache.ttls == {"lstm_timeseries": 60.0, "motion_lstm": 60.0}


def test_errors_are_never_cached() -> None:
    app = cached_app()
    client = app.connect()
    bad = [*SERIES[:-1], float("nan")]
    for request_id in (1, 2):
        reply, batches = ask(app, client, infer(request_id, "moving_average", bad))
        assert reply.error.code == ErrorCode.INVALID_INPUT and batches == 1
    assert len(app.facade.result_cache.lru) == 0  # type: ignore[union-attr]


def test_bypass_neither_reads_nor_writes_the_cache() -> None:
    app = cached_app()
    client = app.connect()
    bypass = infer(1, "moving_average", SERIES)
    bypass.infer_request.cache = pb.CACHE_MODE_BYPASS
    reply, batches = ask(app, client, bypass)
    assert batches == 1 and not reply.infer_response.timings.cache_hit
    reply, batches = ask(app, client, infer(2, "moving_average", SERIES))
    assert batches == 1 and not reply.infer_response.timings.cache_hit  # nothing was stored
    bypass.request_id = 3
    reply, batches = ask(app, client, bypass)  # cached now, and still run
    assert batches == 1 and not reply.infer_response.timings.cache_hit
    stats = app.facade.result_cache.stats["moving_average"]  # type: ignore[union-attr]
    assert (stats.bypassed, stats.misses, stats.hits["local"]) == (2, 1, 0)


def test_an_unknown_cache_mode_is_invalid_input() -> None:
    app = cached_app()
    client = app.connect()
    envelope = infer(1, "moving_average", SERIES)
    envelope.infer_request.cache = 7  # type: ignore[assignment]
    reply, batches = ask(app, client, envelope)
    assert reply.error.code == ErrorCode.INVALID_INPUT and batches == 0
    assert "cache = 7 is not a cache mode" in reply.error.message


def test_the_lru_evicts_past_max_entries_and_counts_it() -> None:
    app = cached_app(cache={"max_entries": 2})
    client = app.connect()
    for request_id, steps in enumerate((1, 2, 3), start=1):
        ask(app, client, infer(request_id, "moving_average", SERIES, forecast_steps=steps))
    cache = app.facade.result_cache
    assert cache is not None and len(cache.lru) == 2
    assert cache.lru.evictions["moving_average"] == 1
    reply, batches = ask(app, client, infer(4, "moving_average", SERIES, forecast_steps=1))
    assert batches == 1 and not reply.infer_response.timings.cache_hit


def test_warm_up_runs_every_round_on_the_model_and_caches_nothing() -> None:
    app = cached_app()
    done = app.facade.warm_up()
    app.settle()
    assert done.called
    cache = app.facade.result_cache
    assert cache is not None and len(cache.lru) == 0
    (status,) = app.facade.get_queue_status()
    assert status.requests_run == 1 + 3 * (1 + 64)


def metric_values(app: App, name: str) -> dict[tuple[str, ...], float]:
    parts = (app.facade, app.dispatcher, app.factory, app.broadcaster, app.runner, app.state)
    daemon = Daemon(app.config, app.clock, *parts)
    text = generate_latest(daemon.metrics_registry()).decode()
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sample.labels.values())] = sample.value
    return out


def test_hits_misses_and_evictions_are_metrics_per_model() -> None:
    app = cached_app(cache={"max_entries": 1})
    client = app.connect()
    ask(app, client, infer(1, "moving_average", SERIES))
    ask(app, client, infer(2, "moving_average", SERIES))
    ask(app, client, infer(3, "moving_average", SERIES, forecast_steps=2))
    hits = metric_values(app, "inference_result_cache_hits_total")
    assert hits == {("moving_average", "local"): 1.0, ("moving_average", "redis"): 0.0}
    assert metric_values(app, "inference_result_cache_misses_total") == {("moving_average",): 2}
    assert metric_values(app, "inference_result_cache_evictions_total") == {("moving_average",): 1}
    assert metric_values(app, "inference_result_cache_entries") == {(): 1}


def test_stream_ticks_are_never_cached() -> None:
    app = make_app({"cache": {"enabled": True}})
    client = app.connect()
    opened = pb.Envelope(request_id=1)
    opened.stream_open.model = "lstm_timeseries"
    opened.stream_open.character_id = 1
    client.send(opened)
    assert client.replies()[0].HasField("stream_opened")
    outputs = []
    for tick in (1, 2):
        # The same observation twice: a stream's output depends on its state, not only on it.
        envelope = pb.Envelope(request_id=10 + tick)
        envelope.tick.CopyFrom(encode_tick("lstm_timeseries", [1], [[1.0]], tick, tick))
        client.send(envelope)
        app.clock.advance(1 / 60 * 1.001)
        assert app.runner.run_pending() == 1
        (reply,) = [r for r in client.replies() if r.HasField("tick_result")]
        outputs.append(unpack_rows(reply.tick_result.outputs, reply.tick_result.output_width))
    assert not np.array_equal(outputs[0], outputs[1])
    cache = app.facade.result_cache
    assert cache is not None and len(cache.lru) == 0
    assert all(s.misses == 0 and not s.hits for s in cache.stats.values())


def test_a_hit_says_so_in_the_json_broadcast_too() -> None:
    response = pb.InferResponse(model="m", version="1")
    assert "cache_hit" not in result_json(1, response)["timings"]
    response.timings.cache_hit = True
    assert result_json(1, response)["timings"]["cache_hit"] is True


def test_cached_outputs_round_trip_through_their_redis_encoding() -> None:
    output = ModelOutput(np.array([1.5, -2.25], np.float32), np.array([0.5, 1.0], np.float32))
    back = decode_output(encode_output(output))
    assert back.predictions.tolist() == [1.5, -2.25] and not back.predictions.flags.writeable
    assert back.confidence is not None and back.confidence.tolist() == [0.5, 1.0]
    plain = decode_output(encode_output(ModelOutput(np.array([3.0], np.float32))))
    assert plain.confidence is None and plain.predictions.tolist() == [3.0]
    for junk in (b"", b"\x01\x00", encode_output(output)[:-1], b"\x02" + encode_output(output)[1:]):
        with pytest.raises(ValueError):
            decode_output(junk)


@given(
    st.integers(min_value=1, max_value=5),
    st.lists(st.tuples(st.integers(0, 7), st.booleans()), max_size=40),
)
def test_the_lru_holds_the_most_recently_used_keys_within_its_bound(
    bound: int, operations: list[tuple[int, bool]]
) -> None:
    clock = Clock()
    lru = ResultLru(bound, clock.seconds)
    recent: list[int] = []  # the model's view: most recently used last
    for key, is_put in operations:
        raw = bytes([key])
        if is_put:
            lru.put(raw, "m", raw * 3, 60.0)
            recent = [k for k in recent if k != key] + [key]
        else:
            found = lru.get(raw)
            assert (found is not None) == (key in recent[-bound:])
            if found is not None:
                assert found == raw * 3
                recent = [k for k in recent if k != key] + [key]
        recent = recent[-bound:]
        assert len(lru) == len(recent) <= bound
