"""The whole path in memory: bytes → frame → packet → command → facade → batch → model → reply."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commonlib.models.lstm_timeseries import LstmTimeseriesModel
from commonlib.models.motion_lstm import MotionLstmModel
from commonlib.models.moving_average import MovingAverageModel
from commonlib.models.registry import ModelFactory
from commonlib.wire import pb
from tests.support import infer, make_app
from util.errors import ErrorCode

finite = st.floats(-1000, 1000, allow_nan=False, width=32)
request = st.tuples(
    st.lists(finite, min_size=6, max_size=30),
    st.integers(1, 6),  # window
    st.integers(1, 5),  # steps
    st.booleans(),  # trend
    st.integers(0, 2),  # which client sends it
)


@settings(max_examples=40, deadline=None)
@given(requests=st.lists(request, min_size=1, max_size=40), batch=st.integers(1, 16))
def test_batched_replies_equal_one_by_one_and_match_their_ids(
    requests: list[tuple[list[float], int, int, bool, int]], batch: int
) -> None:
    app = make_app(
        {"inference": {"models": {"moving_average": {"batching": {"max_batch_size": batch}}}}}
    )
    clients = [app.connect() for _ in range(3)]
    expected = {}
    model = MovingAverageModel()
    for i, (values, window, steps, trend, who) in enumerate(requests):
        rid = 1000 + i
        config = {"window_size": window, "forecast_steps": steps, "include_trend": trend}
        clients[who].send(infer(rid, "moving_average", values, **config))
        alone = model.forward([model.prepare(values, config)])[0].predictions
        expected[rid] = (who, alone)
    app.settle()
    seen = {}
    for who, client in enumerate(clients):
        for reply in client.replies():
            assert reply.HasField("infer_response"), reply
            seen[reply.request_id] = who
            want_who, want = expected[reply.request_id]
            assert want_who == who
            np.testing.assert_allclose(reply.infer_response.predictions, want, rtol=1e-5, atol=1e-3)
            assert 1 <= reply.infer_response.timings.batch_size <= batch
    assert set(seen) == set(expected)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(finite, min_size=5, max_size=64))
def test_raw_values_answer_exactly_as_repeated_values(values: list[float]) -> None:
    app = make_app()
    client = app.connect()
    config = {"window_size": 5, "forecast_steps": 3, "include_trend": True}
    client.send(infer(1, "moving_average", values, **config))
    raw = infer(2, "moving_average", [], **config)
    raw.infer_request.input.raw_values = np.asarray(values, dtype="<f4").tobytes()
    client.send(raw)
    app.settle()
    by_id = {r.request_id: r for r in client.replies()}
    assert list(by_id[2].infer_response.predictions) == list(by_id[1].infer_response.predictions)


@pytest.mark.parametrize(
    ("raw", "values", "message"),
    [
        (b"\x00\x00\x80\x3f" * 5 + b"\x00", [], "not a multiple of 4"),
        (b"\x00\x00\x80\x3f" * 5, [1.0], "both values and raw_values"),
    ],
)
def test_bad_raw_values_are_invalid_input(raw: bytes, values: list[float], message: str) -> None:
    app = make_app()
    client = app.connect()
    envelope = infer(7, "moving_average", values)
    envelope.infer_request.input.raw_values = raw
    client.send(envelope)
    app.settle()
    (reply,) = client.replies()
    assert reply.error.code == ErrorCode.INVALID_INPUT.value
    assert message in reply.error.message
    assert not client.closed


def test_seed_request_over_the_wire() -> None:
    app = make_app()
    client = app.connect()
    client.send(
        infer(
            42,
            "moving_average",
            [1.2, 2.3, 3.1, 2.8, 3.5, 4.2],
            forecast_steps=5,
            window_size=5,
            include_trend=True,
        )
    )
    app.settle()
    (reply,) = client.replies()
    assert reply.request_id == 42
    response = reply.infer_response
    assert response.model == "moving_average" and response.version == "1"
    assert len(response.predictions) == 5
    assert response.timings.batch_size == 1
    assert response.timings.inference_ms >= 0


def test_errors_are_answered_and_the_connection_stays_open() -> None:
    app = make_app()
    client = app.connect()
    bad = [
        infer(1, "nope", [1, 2, 3]),
        infer(2, "moving_average", [1, 2, float("nan"), 4, 5]),
        infer(3, "moving_average", [1, 2, 3, 4, 5], forecast_steps=10**9),
        infer(4, "moving_average", [1, 2, 3, 4, 5], colour="blue"),
    ]
    versioned = infer(5, "moving_average", [1, 2, 3, 4, 5])
    versioned.infer_request.version = "9"
    shaped = infer(6, "moving_average", [1, 2, 3, 4, 5])
    shaped.infer_request.input.shape.extend([2, 3])
    unset = infer(7, "moving_average", [1, 2, 3, 4, 5])
    unset.infer_request.config["window_size"].Clear()
    for env in [*bad, versioned, shaped, unset]:
        client.send(env)
    app.settle()
    replies = {r.request_id: r.error for r in client.replies()}
    assert replies[1].code == ErrorCode.UNKNOWN_MODEL and "available" in replies[1].message
    assert replies[2].code == ErrorCode.INVALID_INPUT and "NaN" in replies[2].message
    assert replies[3].code == ErrorCode.INVALID_INPUT and "maximum" in replies[3].message
    assert replies[4].code == ErrorCode.INVALID_INPUT and "colour" in replies[4].message
    assert replies[5].code == ErrorCode.UNKNOWN_MODEL and "version" in replies[5].message
    assert replies[6].code == ErrorCode.INVALID_INPUT and "shape" in replies[6].message
    assert replies[7].code == ErrorCode.INVALID_INPUT and "no value" in replies[7].message
    assert not client.closed


@pytest.mark.allow_logged_errors
def test_a_failing_model_answers_internal_and_the_server_goes_on(logged_errors) -> None:
    factory = ModelFactory()
    factory.register("moving_average")(MovingAverageModel)
    factory.register("lstm_timeseries")(LstmTimeseriesModel)
    factory.register("motion_lstm")(MotionLstmModel)

    @factory.register("fragile")
    class Fragile(MovingAverageModel):
        """Fails its whole forward pass when any input starts with 13."""

        def predict(self, batch_input: Any) -> Any:
            windows = batch_input[0]
            if (windows[:, 0] == 13).any():
                raise RuntimeError("CUDA fell over")
            return super().predict(batch_input)

    app = make_app({"inference": {"models": {"fragile": {}}}}, factory=factory)
    client = app.connect()
    client.send(infer(1, "fragile", [13, 2, 3, 4, 5]))
    app.settle()
    (reply,) = client.replies()
    assert reply.error.code == ErrorCode.INTERNAL
    # The client gets an id to quote, never the exception's text; the log has both.
    assert "CUDA fell over" not in reply.error.message
    error_id = re.search(r"error id ([0-9a-f]{12})", reply.error.message)
    assert error_id is not None
    assert f"error id {error_id.group(1)}" in logged_errors.text()
    assert "CUDA fell over" in logged_errors.text()
    client.send(infer(2, "fragile", [1, 2, 3, 4, 5]))
    app.settle()
    (ok,) = client.replies()
    assert ok.HasField("infer_response")


def test_ping_list_models_and_status() -> None:
    app = make_app()
    client = app.connect()
    client.send(pb.Envelope(request_id=1, ping=pb.Ping(client_time_ns=123)))
    client.send(pb.Envelope(request_id=2, list_models=pb.ListModels()))
    client.send(infer(3, "moving_average", [1, 2, 3, 4, 5]))
    app.settle()
    client.send(pb.Envelope(request_id=4, get_status=pb.GetStatus()))
    pong, models, _, status = client.replies()
    assert pong.pong.client_time_ns == 123
    names = {m.name: m for m in models.model_list.models}
    assert set(names) == {"moving_average", "lstm_timeseries", "motion_lstm"}
    schema = json.loads(names["moving_average"].input_schema_json)
    assert schema["config"]["forecast_steps"]["maximum"] == 256
    queues = {q.model: q for q in status.status.queues}
    assert queues["moving_average"].batches_run == 1
    assert queues["moving_average"].mean_batch_size == 1.0
    assert status.status.cache.misses >= 1
    assert "moving_average@1" in status.status.cache.loaded_models
    assert status.status.connections == 1


def test_max_batch_size_one_runs_every_request_alone() -> None:
    app = make_app(
        {"inference": {"models": {"moving_average": {"batching": {"max_batch_size": 1}}}}}
    )
    client = app.connect()
    for i in range(5):
        client.send(infer(i, "moving_average", [1, 2, 3, 4, 5]))
    app.settle()
    assert {r.infer_response.timings.batch_size for r in client.replies()} == {1}


def test_debug_level_logs_each_request_with_its_timings() -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, object]] = []
    app = make_app({"logging": {"level": "debug"}})
    client = app.connect()
    globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
    try:
        client.send(infer(5, "moving_average", [1, 2, 3, 4, 5]))
        app.settle()
    finally:
        globalLogPublisher.removeObserver(events.append)  # type: ignore[arg-type]
    (event,) = [e for e in events if e.get("request_id") == 5]
    assert event["model"] == "moving_average" and event["batch_size"] == 1
    assert {"queue_wait_ms", "inference_ms", "total_ms"} <= set(event)
