"""Admission by expected delay (commonlib/admission.py), in memory on task.Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from commonlib.admission import RATE_WEIGHT, AdmissionBoard, ModelAdmission
from commonlib.wire import pb
from factory.codec import peek_infer_head
from tests.support import App, infer, make_app
from util.config import ConfigError, parse_config
from util.errors import ErrorCode

MA = [1.0, 2.0, 3.0, 4.0, 5.0]
TARGET_S = 0.005


def started_model(
    full_batch: int = 1, interval_s: float = 0.0
) -> tuple[Clock, AdmissionBoard, ModelAdmission]:
    """A started board with one model "m" at TARGET_S whose batches hold ``full_batch``.

    ``interval_s`` 0 (the default here): every request is judged at once.
    """
    clock = Clock()
    board = AdmissionBoard(clock)
    model = board.model("m", TARGET_S, interval_s)
    model.full_batch = full_batch
    board.start()
    return clock, board, model


INTERVAL_S = 0.02


def measured_at_10k(interval_s: float = INTERVAL_S) -> tuple[Clock, ModelAdmission]:
    """A model measured at 10,000 req/s, so a backlog over 50 is over the 5 ms target."""
    clock, _, model = started_model(interval_s=interval_s)
    clock.advance(0.001)
    model.batch_done(10, dispatched=0.0, backlog=0)
    model.set_backlog(1)
    clock.advance(0.001)
    model.batch_done(10, dispatched=clock.seconds() - 0.001, backlog=1)
    assert model.limit == pytest.approx(50)
    return clock, model


def hold(clock: Clock, model: ModelAdmission, backlog: int, seconds: float) -> None:
    """Keep the backlog at ``backlog`` for ``seconds``, a change every 0.5 ms."""
    end = clock.seconds() + seconds
    while clock.seconds() < end - 1e-9:
        model.set_backlog(backlog)
        clock.advance(0.0005)
    model.set_backlog(backlog)


def test_a_burst_shorter_than_the_interval_is_queued_not_refused() -> None:
    clock, model = measured_at_10k()
    hold(clock, model, 5, 0.05)
    # 4 ms at 200 (4x the limit): over the limit, but not for a whole window on average
    # (wherever the window boundary falls).
    hold(clock, model, 200, 0.004)
    assert not model.refusing and not model.overloaded
    hold(clock, model, 5, 0.05)
    assert not model.overloaded


def test_a_standing_queue_is_refused_per_request_until_an_interval_passes_under_it() -> None:
    clock, model = measured_at_10k()
    hold(clock, model, 120, 0.045)  # over the limit for two whole windows
    assert model.overloaded and model.refusing
    model.set_backlog(50)  # the first that fits is taken at once
    assert not model.refusing and model.overloaded
    model.set_backlog(51)  # and the first over it refused at once
    assert model.refusing
    # Held at the limit by the refusals (the mean is under it): still overloaded.
    for _ in range(100):
        model.set_backlog(30)
        clock.advance(0.0005)
        model.set_backlog(51)
    assert model.overloaded and model.refusing
    # The load fell: a whole interval without going over the limit ends it.
    hold(clock, model, 40, INTERVAL_S - 0.001)
    assert model.overloaded and not model.refusing
    hold(clock, model, 40, 0.002)
    assert not model.overloaded
    model.set_backlog(80)  # a new burst is queued again
    assert not model.refusing


def test_a_model_refusing_when_its_overload_state_was_reset_stops_at_the_next_change() -> None:
    # set_backlog stops early while the model is not overloaded, but not while it is
    # still listed as refusing: forget_rate resets the state without unlisting it.
    clock, model = measured_at_10k()
    hold(clock, model, 120, 0.045)
    assert model.overloaded and model.refusing
    model.forget_rate()
    assert not model.overloaded and model.refusing
    model.set_backlog(120)
    assert not model.refusing


def test_set_backlog_takes_the_time_the_caller_read() -> None:
    # The batcher passes the request's arrival time: no second clock read per request.
    clock, model = measured_at_10k()
    model.batch_done(1, dispatched=clock.seconds(), backlog=0)  # idle: no sample
    clock.advance(0.010)
    model.set_backlog(10, now=clock.seconds() - 0.002)  # busy since 2 ms ago
    model.batch_done(10, dispatched=clock.seconds() - 0.010, backlog=10)
    # 10 requests since the model became busy (2 ms): a sample of 5,000/s.
    assert model.rate == pytest.approx(10_000 + RATE_WEIGHT * (5_000 - 10_000))


def test_an_interval_of_zero_judges_every_request_at_once() -> None:
    clock, model = measured_at_10k(interval_s=0.0)
    assert model.overloaded
    model.set_backlog(51)
    assert model.refusing
    hold(clock, model, 10, 1.0)
    assert model.overloaded and not model.refusing


def test_predicted_wait_is_backlog_over_the_rate_measured_while_busy() -> None:
    clock, _, model = started_model()
    model.set_backlog(10)
    assert model.predicted_wait_s() == 0.0  # no rate measured yet
    clock.advance(0.001)
    model.batch_done(10, dispatched=0.0, backlog=20)  # 10 requests in 1 ms: 10,000/s
    assert model.rate == pytest.approx(10_000)
    assert model.predicted_wait_s() == pytest.approx(20 / 10_000)
    # A batch that leaves the model idle measured the arrivals, not the model: no sample.
    clock.advance(0.001)
    model.batch_done(1, dispatched=clock.seconds() - 0.001, backlog=0)
    assert model.rate == pytest.approx(10_000)
    # The next busy batch moves the mean by RATE_WEIGHT: 20 in 1 ms is 20,000/s.
    model.set_backlog(20)
    clock.advance(0.001)
    model.batch_done(20, dispatched=clock.seconds() - 0.001, backlog=5)
    assert model.rate == pytest.approx(10_000 + RATE_WEIGHT * 10_000)


def test_small_batches_do_not_read_as_a_slow_model() -> None:
    clock, _, model = started_model(full_batch=64)
    model.set_backlog(100)
    clock.advance(0.001)
    model.batch_done(31, dispatched=0.0, backlog=69)  # under half of 64: mostly per-batch cost
    assert model.rate == 0.0 and not model.refusing
    clock.advance(0.001)
    model.batch_done(64, dispatched=clock.seconds() - 0.001, backlog=28)  # 64,000/s
    assert model.rate == pytest.approx(64_000)
    clock.advance(0.001)
    model.batch_done(32, dispatched=clock.seconds() - 0.001, backlog=12)  # 32,000/s, weight 1/2
    assert model.rate == pytest.approx(64_000 + RATE_WEIGHT / 2 * (32_000 - 64_000))


def test_the_excess_is_refused_at_once_and_admitted_again_at_once() -> None:
    clock, board, model = started_model()
    clock.advance(0.001)
    model.batch_done(10, dispatched=0.0, backlog=1)  # 10,000/s: 50 requests fill 5 ms
    model.set_backlog(50)
    assert not model.refusing  # exactly at the target: taken
    model.set_backlog(51)  # the first request over it: refused, with no window to wait out
    assert model.refusing and board.refusing == {b"m": board.refusing[b"m"]}
    model.set_backlog(50)  # one finished: admitted again at once
    assert not model.refusing
    model.set_backlog(200)
    assert model.refusing
    model.set_backlog(0)
    assert board.refusing == {}


def test_a_full_batch_is_never_refused() -> None:
    clock, _, model = started_model(full_batch=64)
    model.set_backlog(64)
    clock.advance(0.001)
    model.batch_done(64, dispatched=0.0, backlog=64)  # 64,000/s: the target alone allows 320
    assert model.limit == pytest.approx(320)
    for _ in range(30):  # then the model slows to batches of 64 in 10 ms
        clock.advance(0.01)
        model.batch_done(64, dispatched=clock.seconds() - 0.01, backlog=10)
    assert model.rate * TARGET_S < 64  # the target alone now allows less than a batch
    model.set_backlog(64)
    assert not model.refusing  # one full batch: taken
    model.set_backlog(65)
    assert model.refusing


def test_a_late_reactor_alone_refuses_nothing() -> None:
    # A reactor busy refusing a flood reads as late by itself; refusing on the lag
    # would then refuse every request and the model would starve.
    clock, board, model = started_model()
    clock.advance(0.001)
    model.batch_done(10, dispatched=0.0, backlog=1)  # 10,000/s
    for _ in range(30):  # each probe fires 6 ms late: the lag alone is over the 5 ms target
        clock.advance(board.probe_interval_s + 0.006)
        model.set_backlog(40)
    assert board.lag_s > TARGET_S
    assert not model.refusing  # 40 at 10,000/s is 4 ms: taken


def test_nothing_is_refused_before_start_or_with_target_zero() -> None:
    clock = Clock()
    board = AdmissionBoard(clock)
    off = board.model("off", 0.0)
    idle = board.model("idle", TARGET_S)
    for admission in (off, idle):
        clock.advance(0.001)
        admission.batch_done(1, dispatched=clock.seconds() - 0.001, backlog=10_000)
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


@pytest.mark.parametrize("key", ["max_queue_delay_ms", "overload_interval_ms"])
def test_config_validates_the_delay_keys(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config({"inference": {"batching": {key: -1}}})
    with pytest.raises(ConfigError, match=key):
        parse_config({"inference": {"models": {"moving_average": {"batching": {key: -2}}}}})


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
                    "overload_interval_ms": 0.0,  # every request judged at once
                },
                "models": {"moving_average": {"batching": {"max_batch_size": 8}}},
            },
        }
    )
    app.facade.admission.start()
    client = app.connect()
    for i in range(16):
        client.send(infer(i, "moving_average", MA))
    for _ in range(2):  # two batches of 8, each in 1 ms; the first left 8 waiting
        app.clock.advance(0)
        app.clock.advance(0.001)
        app.runner.run_pending()
    assert len(client.replies()) == 16
    return app


def test_overload_refuses_exactly_the_excess_before_decoding() -> None:
    app = overloaded_app()
    client = app.clients[0]
    admission = app.facade.admission.models["moving_average"]
    assert admission.rate == pytest.approx(8_000)
    decoded_before = app.dispatcher.commands["infer_request"]
    for i in range(100, 200):  # 100 at once: 40 fit the 5 ms target, the 41st goes over it
        client.send(infer(i, "moving_average", MA))
    replies = client.replies()
    assert {r.error.code for r in replies} == {ErrorCode.BUSY}
    assert len(replies) == 59  # the 41st was taken, and put the backlog over target
    assert admission.backlog == 41
    assert (admission.backlog - 1) / admission.rate <= admission.max_queue_delay_s
    assert "max_queue_delay_ms=5" in replies[0].error.message
    assert app.dispatcher.commands["infer_request"] == decoded_before + 41  # 59 never decoded
    assert app.factory.stats.shed_by_delay["moving_average"] == 59
    # Other models are not refused.
    client.send(infer(300, "lstm_timeseries", [float(i % 7) for i in range(32)]))
    assert client.replies() == []
    # One batch finishes: the backlog is under target, and exactly as many are taken.
    app.clock.advance(0)
    app.clock.advance(0.001)
    app.runner.run_pending()
    assert not admission.refusing
    client.replies()
    before = admission.backlog
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


def one_batch_per_ms(app: App, client_sends: int, first_id: int) -> list[pb.Envelope]:
    """Send ``client_sends`` requests, then 1 ms passes and one batch finishes; the replies."""
    client = app.clients[0]
    for i in range(client_sends):
        client.send(infer(first_id + i, "moving_average", MA))
    app.clock.advance(0)  # the eager tick dispatches a batch if none runs
    app.clock.advance(0.001)
    if app.runner.pending:
        fn, d = app.runner.pending.pop(0)
        d.callback(fn())
    return client.replies()


def one_ms_target_app() -> App:
    """Only the delay gate (1 ms target, the default window): no per-connection count, no
    queue timeout; moving_average measured busy at batches of 64 a ms (the limit: one batch).
    """
    app = make_app(
        {
            "server": {"max_inflight_per_connection": 65_536},
            "inference": {
                "batching": {
                    "queue_timeout_ms": 0.0,
                    "max_queue": 100_000,
                    "max_queue_delay_ms": 1.0,
                }
            },
        }
    )
    app.facade.admission.start()
    app.connect()  # one_batch_per_ms sends on this first client
    one_batch_per_ms(app, 192, 0)
    for _ in range(34):
        one_batch_per_ms(app, 0, 0)
    return app


def test_an_overloaded_model_still_serves_a_connection_with_nothing_in_flight() -> None:
    """The delay rule refuses the pipelining client, never one waiting for no answer."""
    app = one_ms_target_app()
    hog = app.clients[0]
    light = app.connect()
    admission = app.facade.admission.models["moving_average"]
    ids = iter(range(1, 10**6))
    for _ in range(40):
        one_batch_per_ms(app, 128, next(ids) * 1000)
    assert admission.overloaded
    served: list[pb.Envelope] = []
    to_hog: list[pb.Envelope] = []
    for step in range(5):
        first = next(ids) * 1000
        for i in range(128):
            hog.send(infer(first + i, "moving_average", MA))
        assert b"moving_average" in app.facade.admission.refusing  # over the limit now
        light.send(infer(7_000_000 + step, "moving_average", MA))
        while not served or served[-1].request_id != 7_000_000 + step:
            to_hog += one_batch_per_ms(app, 0, 0)  # replies to the first client, the hog
            served += light.replies()
    refused = [r for r in to_hog if r.HasField("error")]
    assert refused and {r.error.code for r in refused} == {ErrorCode.BUSY}
    assert [r.request_id for r in served] == [7_000_000 + step for step in range(5)]
    assert all(r.HasField("infer_response") for r in served)


def test_a_1ms_target_queues_a_burst_and_refuses_a_standing_queue() -> None:
    app = one_ms_target_app()
    admission = app.facade.admission.models["moving_average"]
    assert (admission.max_queue_delay_s, admission.interval_s) == (0.001, 0.02)
    ids = iter(range(1, 10**6))
    # Measured busy: batches of 64 in 1 ms each, so the 1 ms target allows one batch.
    assert admission.rate == pytest.approx(64_000) and admission.limit == 64
    # A burst of 250 (4x the limit) at a half load of 32 a ms: all queued and served.
    replies = []
    for step in range(40):
        replies += one_batch_per_ms(app, 32 + (250 if step == 5 else 0), next(ids) * 1000)
    assert replies and not any(r.HasField("error") for r in replies)
    assert not admission.overloaded
    # 128 a ms, twice what the model serves: after a window, the excess is refused BUSY.
    refused = []
    for _ in range(60):
        refused += [r for r in one_batch_per_ms(app, 128, next(ids) * 1000) if r.error.code]
    assert admission.overloaded and len(refused) > 60 * 64 / 2
    assert {r.error.code for r in refused} == {ErrorCode.BUSY}
    assert "max_queue_delay_ms=1;" in refused[0].error.message
    assert admission.backlog <= admission.limit + 1  # the standing queue is gone
    # The load falls back to half: an interval later nothing is refused any more.
    late = []
    for _ in range(40):
        late += [r for r in one_batch_per_ms(app, 32, next(ids) * 1000) if r.error.code]
    assert not admission.overloaded
    assert len(late) < 64  # at most the first ms's excess
