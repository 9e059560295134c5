"""The request lanes of the hot path (InferHandler.handle_parsed, AIFacade.lane).

A (model, version, config bytes) seen once is routed, resolved and validated once;
its later requests only have their length and id checked. Everything a request can
get wrong must still be answered exactly as on the first request of its kind.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from bot.blocking_client import infer_envelope
from commonlib.stats import BucketHistogram
from commonlib.wire import pb
from factory import fastcodec
from tests.support import App, Client, make_app
from util.errors import ErrorCode

MA = "moving_average"
CONFIG = {"window_size": 5, "forecast_steps": 3}
SERIES = [float(i % 9) for i in range(16)]

pytestmark = pytest.mark.skipif(not fastcodec.native, reason="lanes are the C path's")


def _answer(app: App, client: Client, envelope: pb.Envelope) -> pb.Envelope:
    client.send(envelope)
    app.clock.advance(0.1)  # past any max_wait_ms
    app.settle()
    (reply,) = client.replies()
    return reply


def _bad_requests() -> list[pb.Envelope]:
    """Requests of the lane's model and config that must each be refused."""
    too_short = infer_envelope(11, MA, SERIES[:3], CONFIG)
    too_long = infer_envelope(12, MA, [1.0] * 4097, CONFIG)
    shaped = infer_envelope(13, MA, SERIES, CONFIG)
    shaped.infer_request.input.shape.extend([len(SERIES) + 1])
    ragged = infer_envelope(14, MA, SERIES, CONFIG, raw=True)
    ragged.infer_request.input.raw_values += b"\0"
    not_finite = infer_envelope(15, MA, [*SERIES[:-1], float("nan")], CONFIG)
    return [too_short, too_long, shaped, ragged, not_finite]


def _errors(app: App, warm: bool) -> list[tuple[int, str]]:
    client = app.connect()
    if warm:  # open the lane
        assert _answer(app, client, infer_envelope(1, MA, SERIES, CONFIG)).HasField(
            "infer_response"
        )
    out: list[tuple[int, str]] = []
    for envelope in _bad_requests():
        reply = _answer(app, client, envelope)
        out.append((reply.error.code, reply.error.message))
    return out


def test_a_lane_refuses_what_the_first_request_of_its_kind_is_refused() -> None:
    cold = _errors(make_app(), warm=False)
    warm_app = make_app()
    warm = _errors(warm_app, warm=True)
    assert warm == cold
    assert [code for code, _ in warm] == [ErrorCode.INVALID_INPUT] * 5
    assert "needs at least" in warm[0][1] or "window_size is 5" in warm[0][1]
    assert "raw_values has 65 bytes" in warm[3][1]
    # The refused requests are counted by code and none is left in flight.
    handler: Any = warm_app.dispatcher.handlers["infer_request"]
    assert handler.outcomes[(MA, "INVALID_INPUT")] == 5
    assert warm_app.dispatcher.inflight() == 0


def test_a_lane_refuses_an_id_already_in_flight() -> None:
    app = make_app({"inference": {"models": {MA: {"batching": {"eager_when_idle": False}}}}})
    client = app.connect()
    assert _answer(app, client, infer_envelope(1, MA, SERIES, CONFIG)).HasField("infer_response")
    client.send(infer_envelope(2, MA, SERIES, CONFIG))
    client.send(infer_envelope(2, MA, SERIES, CONFIG))  # queued, not answered yet
    (refused,) = client.replies()
    assert refused.request_id == 2 and refused.error.code == ErrorCode.INVALID_INPUT
    assert "already in flight" in refused.error.message
    app.clock.advance(0.1)
    app.settle()
    (answered,) = client.replies()
    assert answered.request_id == 2 and answered.HasField("infer_response")


def test_a_full_queue_answers_busy_and_frees_the_id() -> None:
    batching = {"max_batch_size": 4, "max_queue": 4, "eager_when_idle": False, "max_wait_ms": 50}
    app = make_app({"inference": {"models": {MA: {"batching": batching}}}})
    client = app.connect()
    assert _answer(app, client, infer_envelope(1, MA, SERIES, CONFIG)).HasField("infer_response")
    # 10-13 fill a batch, which is handed to the (held) runner; 14-17 fill the queue.
    for request_id in range(10, 22):
        client.send(infer_envelope(request_id, MA, SERIES, CONFIG))
    replies = client.replies()
    assert [r.request_id for r in replies] == [18, 19, 20, 21]
    assert all(r.error.code == ErrorCode.BUSY for r in replies)
    assert "max_queue reached" in replies[0].error.message
    busy = {r.request_id for r in replies}
    app.clock.advance(0.1)
    app.settle()
    answered = {r.request_id for r in client.replies() if r.HasField("infer_response")}
    assert answered == set(range(10, 18))
    # The refused ids are free again, and the version's counters add up.
    resent = min(busy)
    assert _answer(app, client, infer_envelope(resent, MA, SERIES, CONFIG)).HasField(
        "infer_response"
    )
    (served,) = [s for name, s in app.facade._routes.items() if name == MA]
    assert sum(served.pending.values()) == 0
    assert dict(served.answered) == {"1": 2 + len(answered)}


def test_lane_requests_count_their_answers_and_latencies() -> None:
    app = make_app()
    client = app.connect()
    for request_id in range(1, 31):
        client.send(infer_envelope(request_id, MA, SERIES, CONFIG, raw=request_id % 2 == 0))
    app.settle()
    replies = client.replies()
    assert len(replies) == 30 and all(r.HasField("infer_response") for r in replies)
    assert app.facade.version_answers() == [(MA, "1", 30)]
    handler: Any = app.dispatcher.handlers["infer_request"]
    assert handler.latency[MA].count == 30
    assert handler.outcomes[(MA, "ok")] == 30


def test_observe_many_counts_what_observe_does() -> None:
    values = [0.00005, 0.0001, 0.0003, 0.02, 7.0, 11.0, 0.0001]
    one, many = (
        BucketHistogram((0.0001, 0.001, 0.1, 10.0)),
        BucketHistogram((0.0001, 0.001, 0.1, 10.0)),
    )
    for value in values:
        one.observe(value)
    many.observe_many(values)
    assert many.counts == one.counts == [3, 1, 1, 1, 1]
    assert many.sum == pytest.approx(one.sum)


def test_the_lane_values_are_the_requests_floats() -> None:
    # values and raw_values of the same floats give the same predictions on a lane.
    app = make_app()
    client = app.connect()
    first = _answer(app, client, infer_envelope(1, MA, SERIES, CONFIG))
    packed = _answer(app, client, infer_envelope(2, MA, SERIES, CONFIG))
    raw = _answer(app, client, infer_envelope(3, MA, SERIES, CONFIG, raw=True))
    raw_again = _answer(app, client, infer_envelope(4, MA, SERIES, CONFIG, raw=True))
    expected = list(struct.unpack("<3f", struct.pack("<3f", *[sum(SERIES[-5:]) / 5] * 3)))
    for reply in (first, packed, raw, raw_again):
        assert list(reply.infer_response.predictions) == expected


def test_a_lane_takes_requests_with_a_fitting_shape() -> None:
    app = make_app()
    client = app.connect()
    replies = []
    for request_id, shape in enumerate(([], [len(SERIES)], [len(SERIES), 1], [4, 4]), 1):
        envelope = infer_envelope(request_id, MA, SERIES, CONFIG)
        envelope.infer_request.input.shape.extend(shape)
        replies.append(_answer(app, client, envelope))
    assert [r.HasField("infer_response") for r in replies] == [True, True, True, False]
    assert "does not fit 16 values" in replies[3].error.message


def test_a_model_with_its_own_prepare_checks_every_request() -> None:
    # motion_lstm checks each window is whole poses (and keys batches by frame count)
    # in its own prepare, so its requests never take a lane.
    app = make_app()
    client = app.connect()
    window = [0.1] * 51 * 4
    first = _answer(app, client, infer_envelope(1, "motion_lstm", window))
    cut = _answer(app, client, infer_envelope(2, "motion_lstm", window[:-1]))
    assert first.HasField("infer_response")
    assert cut.error.code == ErrorCode.INVALID_INPUT
    assert "whole poses of 51" in cut.error.message
    assert app.facade.lane("motion_lstm", "", {}) is None
    assert app.facade.lane(MA, "", {}) is not None
