"""Admission by expected delay (commonlib/admission.py), in memory on task.Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from commonlib.admission import INTERVAL_S, AdmissionBoard
from commonlib.wire import pb
from factory.codec import peek_infer_head
from tests.support import App, infer, make_app
from util.config import ConfigError, parse_config
from util.errors import ErrorCode

MA = [1.0, 2.0, 3.0, 4.0, 5.0]
TARGET_S = 0.005


def step(clock: Clock, seconds: float) -> None:
    """Advance in 1 ms steps, so the lag probe runs on time (a jump reads as lag)."""
    for _ in range(round(seconds / 0.001)):
        clock.advance(0.001)


def started_board(clock: Clock, target_s: float = TARGET_S) -> AdmissionBoard:
    board = AdmissionBoard(clock)
    board.model("m", target_s)
    board.start()
    return board


def test_predicted_wait_is_lag_plus_backlog_over_measured_rate() -> None:
    clock = Clock()
    board = started_board(clock)
    model = board.models["m"]
    model.set_backlog(10)
    assert model.predicted_wait_s() == 0.0  # no rate measured yet: only the lag counts
    clock.advance(0.001)
    model.batch_done(10, dispatched=0.0, backlog=20)  # 10 requests in 1 ms: 10,000/s
    assert model.rate == pytest.approx(10_000)
    assert model.predicted_wait_s() == pytest.approx(20 / 10_000)
    # The probe fires 3 ms late: the reactor's lag is added.
    clock.advance(board.probe_interval_s - 0.001 + 0.003)
    assert board.lag_s == pytest.approx(0.003)
    assert model.predicted_wait_s() == pytest.approx(0.003 + 20 / 10_000)


def test_a_burst_is_queued_and_only_a_standing_excess_is_refused() -> None:
    clock = Clock()
    board = started_board(clock)
    model = board.models["m"]
    model.batch_done(0, dispatched=0.0, backlog=0)
    clock.advance(0.001)
    model.batch_done(10, dispatched=0.0, backlog=0)  # 10,000/s: 50 requests fill 5 ms
    model.set_backlog(200)  # a burst: 20 ms predicted, over target
    assert not model.refusing
    step(clock, INTERVAL_S / 2)
    model.set_backlog(200)
    assert not model.refusing  # not over target for INTERVAL_S yet
    step(clock, INTERVAL_S / 2)
    model.set_backlog(200)
    assert model.refusing and board.refusing == {b"m": board.refusing[b"m"]}
    model.set_backlog(50)  # back at the target: admitted again at once
    assert not model.refusing
    model.set_backlog(51)  # still overloaded: the excess is refused at once
    assert model.refusing
    model.set_backlog(10)
    step(clock, INTERVAL_S)
    model.set_backlog(10)  # under target for INTERVAL_S: no longer overloaded
    model.set_backlog(200)
    assert not model.refusing


def test_a_late_reactor_never_starves_the_model_of_a_full_batch() -> None:
    # A reactor busy refusing a flood reads as lag over target by itself; without a
    # floor every request would be refused and the model would run one at a time.
    clock = Clock()
    board = started_board(clock)
    model = board.models["m"]
    model.min_backlog = 8
    clock.advance(0.001)
    model.batch_done(10, dispatched=0.0, backlog=0)  # 10,000/s
    for _ in range(30):  # each probe fires 6 ms late: lag alone is over the 5 ms target
        clock.advance(board.probe_interval_s + 0.006)
        model.set_backlog(4)
    assert model.overloaded and board.lag_s > TARGET_S
    assert not model.refusing  # 4 < a full batch: taken
    model.set_backlog(8)
    assert not model.refusing  # a full batch, no more: taken
    model.set_backlog(9)
    assert model.refusing  # over a full batch and still late: the excess is refused


def test_nothing_is_refused_before_start_or_with_target_zero() -> None:
    clock = Clock()
    board = AdmissionBoard(clock)
    off = board.model("off", 0.0)
    idle = board.model("idle", TARGET_S)
    for admission in (off, idle):
        clock.advance(0.001)
        admission.batch_done(1, dispatched=clock.seconds() - 0.001, backlog=10_000)
        clock.advance(INTERVAL_S * 2)
        admission.set_backlog(10_000)
    assert board.refusing == {}  # not started: warm-up is never refused
    board.start()
    assert idle.rate == 0.0  # warm-up rates are forgotten
    assert board.refusing == {}


def test_peek_infer_head_reads_request_id_and_model_without_decoding() -> None:
    frame = infer(2**40 + 5, "moving_average", MA).SerializeToString()
    assert peek_infer_head(frame) == (2**40 + 5, b"moving_average")
    assert peek_infer_head(pb.Envelope(request_id=3, ping=pb.Ping()).SerializeToString()) is None
    no_model = pb.Envelope(request_id=4)
    no_model.infer_request.version = "x"
    assert peek_infer_head(no_model.SerializeToString()) == (4, b"")
    assert peek_infer_head(frame[: -len(frame) + 20]) is None  # model name cut short
    assert peek_infer_head(b"") is None


def test_config_validates_max_queue_delay_ms() -> None:
    batching = parse_config({}).inference.batching
    assert batching.max_queue_delay_ms == 0.0  # off unless configured
    with pytest.raises(ConfigError, match="max_queue_delay_ms"):
        parse_config({"inference": {"batching": {"max_queue_delay_ms": -1}}})
    with pytest.raises(ConfigError, match="max_queue_delay_ms"):
        parse_config(
            {"inference": {"models": {"moving_average": {"batching": {"max_queue_delay_ms": -2}}}}}
        )


# -- through the protocol: a real app whose batches finish when the test says so ---------


def overloaded_app() -> App:
    """moving_average (batch 8) measured at 8 requests/ms, so 40 fill the 5 ms target."""
    app = make_app(
        {
            "server": {"max_inflight_per_connection": 10_000},
            "inference": {
                "batching": {
                    "queue_timeout_ms": 0.0,
                    "max_queue": 100_000,
                    "max_queue_delay_ms": TARGET_S * 1000,
                },
                "models": {"moving_average": {"batching": {"max_batch_size": 8}}},
            },
        }
    )
    app.facade.admission.start()
    client = app.connect()
    for i in range(8):
        client.send(infer(i, "moving_average", MA))
    app.clock.advance(0)  # dispatched
    app.clock.advance(0.001)
    app.runner.run_pending()  # 8 requests in 1 ms
    assert len(client.replies()) == 8
    return app


def test_overload_refuses_exactly_the_excess_before_decoding() -> None:
    app = overloaded_app()
    client = app.clients[0]
    admission = app.facade.admission.models["moving_average"]
    assert admission.rate == pytest.approx(8_000)
    for i in range(100, 200):  # 100 queued while the model runs nothing: 12.5 ms predicted
        client.send(infer(i, "moving_average", MA))
    assert client.replies() == []  # a burst: queued, not refused
    step(app.clock, INTERVAL_S + 0.005)  # ... but it stands for INTERVAL_S (the model is stalled)
    app.clock.advance(0)  # next tick: one batch of 8 starts, 92 still waiting behind it
    decoded_before = app.dispatcher.commands["infer_request"]
    for i in range(200, 260):
        client.send(infer(i, "moving_average", MA))
    replies = client.replies()
    assert {r.error.code for r in replies} == {ErrorCode.BUSY}
    assert len(replies) == 60  # the backlog was over target: every new one is excess
    assert "max_queue_delay_ms=5" in replies[0].error.message
    assert app.dispatcher.commands["infer_request"] == decoded_before  # never decoded
    assert app.factory.stats.shed_by_delay["moving_average"] == 60
    # Other models are not refused.
    client.send(infer(300, "lstm_timeseries", [float(i % 7) for i in range(32)]))
    assert client.replies() == []
    # Batches finish (8 per ms) until the backlog is under target: admitted again.
    while admission.refusing:
        app.clock.advance(0.001)
        app.runner.run_pending()
        app.clock.advance(0)
    client.replies()
    before = admission.backlog
    # Still overloaded: of 60 new requests, those that fit under the target are taken
    # and exactly the rest refused: the backlog stops at the first one over target.
    for i in range(400, 460):
        client.send(infer(i, "moving_average", MA))
    refused = [r for r in client.replies() if r.HasField("error")]
    taken = admission.backlog - before
    assert taken > 0 and len(refused) == 60 - taken
    assert (admission.backlog - 1) / admission.rate <= admission.max_queue_delay_s
    assert admission.backlog / admission.rate > admission.max_queue_delay_s


def test_nothing_changes_when_not_overloaded() -> None:
    app = make_app({"inference": {"batching": {"max_queue_delay_ms": 2.0}}})
    app.facade.admission.start()
    client = app.connect()
    for round_ in range(50):
        for i in range(16):
            client.send(infer(round_ * 100 + i, "moving_average", MA))
        app.clock.advance(0)
        app.clock.advance(0.0005)
        app.settle()
        replies = client.replies()
        assert len(replies) == 16 and not any(r.HasField("error") for r in replies)
        app.clock.advance(0.005)  # the lag probe fires on time
    assert app.facade.admission.refusing == {}
    assert app.factory.stats.shed_by_delay == {}
