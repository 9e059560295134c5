"""Character streams through the whole in-memory path: frames → handlers → engine → replies."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from commonlib.wire import pb
from factory.tick_codec import encode_tick, unpack_ids, unpack_rows
from tests.support import App, Client, infer, make_app
from util.errors import ErrorCode

LSTM = "lstm_timeseries"
TICK_S = 1 / 60


def open_stream(
    client: Client, character_id: int, model: str = LSTM, request_id: int = 0, **config: Any
) -> None:
    envelope = pb.Envelope(request_id=request_id or character_id)
    envelope.stream_open.model = model
    envelope.stream_open.character_id = character_id
    for key, value in config.items():
        kind = "float_value" if isinstance(value, float) else "int_value"
        setattr(envelope.stream_open.config[key], kind, value)
    client.send(envelope)


def send_tick(
    client: Client,
    request_id: int,
    ids: list[int],
    rows: Any,
    model: str = LSTM,
    client_tick: int = 0,
) -> None:
    envelope = pb.Envelope(request_id=request_id)
    envelope.tick.CopyFrom(encode_tick(model, ids, rows, client_tick, client_tick * 1000))
    client.send(envelope)


def run_tick(app: App) -> None:
    """Advance to the next tick (just past it: float periods add up short) and run its step."""
    app.clock.advance(TICK_S * 1.001)
    app.runner.run_pending()


def tick_results(client: Client) -> list[pb.Envelope]:
    return [r for r in client.replies() if r.HasField("tick_result")]


def test_open_tick_and_result_over_the_whole_path() -> None:
    app = make_app()
    client = app.connect()
    for cid in (5, 6, 7):
        open_stream(client, cid)
    opened = client.replies()
    assert [r.stream_opened.character_id for r in opened] == [5, 6, 7]
    first = opened[0].stream_opened
    assert (first.input_width, first.output_width, first.state_width) == (1, 5, 2 * 64 + 2)
    assert first.tick_hz == 60.0 and first.next_tick == 1
    assert first.next_tick_time_us == round(TICK_S * 1e6)
    send_tick(client, 100, [5, 7], [[1.0], [2.0]], client_tick=9)
    assert client.replies() == []  # a Tick is answered by the tick's TickResult only
    run_tick(app)
    (reply,) = tick_results(client)
    result = reply.tick_result
    assert reply.request_id == 100
    assert (result.server_tick, result.client_tick, result.client_time_us) == (1, 9, 9000)
    assert result.tick_time_us == round(TICK_S * 1e6)
    assert unpack_ids(result.ids).tolist() == [5, 7]
    outputs = unpack_rows(result.outputs, result.output_width)
    assert outputs.shape == (2, 5) and np.isfinite(outputs).all()
    assert result.batch_size == 2


def error_of(reply: pb.Envelope) -> tuple[int, ErrorCode, list[int]]:
    assert reply.HasField("error"), reply
    return reply.request_id, ErrorCode(reply.error.code), list(reply.error.character_ids)


def app_with_streams(*ids: int, **overrides: Any) -> tuple[App, Client]:
    app = make_app(overrides)
    client = app.connect()
    for cid in ids:
        open_stream(client, cid)
    assert all(r.HasField("stream_opened") for r in client.replies())
    return app, client


def stepped_ids(app: App, client: Client) -> list[int]:
    run_tick(app)
    return [i for r in tick_results(client) for i in unpack_ids(r.tick_result.ids).tolist()]


@pytest.mark.parametrize(
    ("ids", "observations", "words"),
    [
        (b"\x01\0\0\0\x02\0\0", b"\0" * 8, "not a multiple of 4"),
        (b"\x01\0\0\0\x02\0\0\0", b"\0" * 12, "not N x D"),
        (b"\x01\0\0\0\x02\0\0\0", b"\0" * 16, "2 floats per character but lstm_timeseries"),
        (b"\x01\0\0\0\x02\0\0\0", b"\0\0\xc0\x7f" * 4, "2 floats per character"),
    ],
)
def test_a_tick_whose_arrays_are_not_n_by_d_is_refused_whole(
    ids: bytes, observations: bytes, words: str
) -> None:
    app, client = app_with_streams(1, 2)
    envelope = pb.Envelope(request_id=40)
    envelope.tick.model = LSTM
    envelope.tick.ids = ids
    envelope.tick.observations = observations
    client.send(envelope)
    (reply,) = client.replies()
    assert error_of(reply)[:2] == (40, ErrorCode.INVALID_INPUT)
    assert words in reply.error.message
    assert stepped_ids(app, client) == []


def test_unknown_and_closed_ids_are_named_and_the_others_still_step() -> None:
    app, client = app_with_streams(1, 2, 3)
    client.send(pb.Envelope(request_id=9, stream_close=pb.StreamClose(character_id=3)))
    (closed,) = client.replies()
    assert closed.request_id == 9 and closed.stream_closed.character_id == 3
    assert closed.stream_closed.reason == pb.CLOSE_REASON_CLIENT
    send_tick(client, 41, [1, 3, 2, 77], [[1.0], [2.0], [3.0], [4.0]])
    assert [error_of(r) for r in client.replies()] == [(41, ErrorCode.UNKNOWN_STREAM, [3, 77])]
    assert stepped_ids(app, client) == [1, 2]


def test_repeated_ids_refuse_the_whole_packet_naming_them() -> None:
    app, client = app_with_streams(1, 2)
    send_tick(client, 42, [1, 2, 1], [[1.0], [2.0], [3.0]])
    assert [error_of(r) for r in client.replies()] == [(42, ErrorCode.INVALID_INPUT, [1])]
    assert stepped_ids(app, client) == []


def test_a_non_finite_observation_refuses_that_character_only() -> None:
    app, client = app_with_streams(1, 2, 3)
    send_tick(client, 43, [1, 2, 3], [[1.0], [float("nan")], [float("inf")]])
    (reply,) = client.replies()
    assert error_of(reply) == (43, ErrorCode.INVALID_INPUT, [2, 3])
    assert "NaN or infinite" in reply.error.message
    assert stepped_ids(app, client) == [1]


@pytest.mark.parametrize(
    ("model", "character_id", "initial_state", "code"),
    [
        ("moving_average", 5, b"", ErrorCode.STREAMS_UNSUPPORTED),
        ("no_such_model", 5, b"", ErrorCode.UNKNOWN_MODEL),
        (LSTM, 1, b"", ErrorCode.STREAM_EXISTS),
        (LSTM, 5, b"\0" * 12, ErrorCode.INVALID_INPUT),
        (LSTM, 6, b"", ErrorCode.TOO_MANY_STREAMS),
    ],
)
def test_refused_stream_opens_get_their_typed_error(
    model: str, character_id: int, initial_state: bytes, code: ErrorCode
) -> None:
    _, client = app_with_streams(1, 2, streams={"max_per_connection": 3})
    if code == ErrorCode.TOO_MANY_STREAMS:
        open_stream(client, 3)
        client.replies()
    envelope = pb.Envelope(request_id=50)
    envelope.stream_open.model = model
    envelope.stream_open.character_id = character_id
    envelope.stream_open.initial_state = initial_state
    client.send(envelope)
    (reply,) = client.replies()
    assert error_of(reply)[:2] == (50, code)


def test_closing_an_unknown_stream_names_it() -> None:
    _, client = app_with_streams()
    client.send(pb.Envelope(request_id=51, stream_close=pb.StreamClose(character_id=8)))
    assert [error_of(r) for r in client.replies()] == [(51, ErrorCode.UNKNOWN_STREAM, [8])]


def test_while_draining_ticks_and_opens_are_unavailable_but_close_frees() -> None:
    app, client = app_with_streams(1)
    app.state.draining = True
    send_tick(client, 52, [1], [[1.0]])
    open_stream(client, 2, request_id=53)
    client.send(pb.Envelope(request_id=54, stream_close=pb.StreamClose(character_id=1)))
    replies = client.replies()
    assert [error_of(r)[:2] for r in replies[:2]] == [
        (52, ErrorCode.UNAVAILABLE),
        (53, ErrorCode.UNAVAILABLE),
    ]
    assert replies[2].HasField("stream_closed")
    assert app.facade.streams.total_open == 0


def test_a_dropped_connection_frees_its_streams_and_others_keep_theirs() -> None:
    app, client = app_with_streams(1, 2)
    other = app.connect()
    open_stream(other, 1)
    other.replies()
    client.transport.loseConnection()
    client.protocol.connectionLost()
    assert app.facade.streams.total_open == 1
    send_tick(other, 60, [1], [[0.5]])
    assert stepped_ids(app, other) == [1]


def test_an_idle_stream_is_closed_and_its_owner_told_with_request_id_zero() -> None:
    app, client = app_with_streams(1, 2, streams={"idle_timeout_s": 0.5})
    for _ in range(40):
        send_tick(client, 61, [2], [[0.5]])
        run_tick(app)
    closed = [r for r in client.replies() if r.HasField("stream_closed")]
    assert [(r.request_id, r.stream_closed.character_id) for r in closed] == [(0, 1)]
    assert closed[0].stream_closed.reason == pb.CLOSE_REASON_IDLE
    assert app.facade.streams.total_open == 1


def test_subscribers_get_the_tick_snapshot() -> None:
    from tests.test_udp_broadcast import FakeDatagramTransport

    app, client = app_with_streams(1, 2)
    transport = FakeDatagramTransport()
    app.broadcaster.transport = transport  # type: ignore[assignment]
    subscribe = pb.Envelope(request_id=70)
    subscribe.subscribe.host = "127.0.0.1"
    subscribe.subscribe.port = 9999
    client.send(subscribe)
    send_tick(client, 71, [2, 1], [[0.25], [0.75]])
    run_tick(app)
    (result,) = tick_results(client)
    ((data, _),) = transport.written
    snapshot = pb.Datagram.FromString(data).snapshot
    assert snapshot.server_tick == result.tick_result.server_tick == 1
    assert snapshot.ids == result.tick_result.ids
    assert snapshot.outputs == result.tick_result.outputs


def test_a_stream_forecasts_what_a_request_over_the_same_window_does() -> None:
    app, client = app_with_streams()
    open_stream(client, 4, norm_mean=1.5, norm_std=2.0, forecast_steps=3)
    assert client.replies()[0].stream_opened.output_width == 3
    series = np.sin(np.arange(12, dtype=np.float32) / 2) * 3 + 1
    for frame, value in enumerate(series):
        send_tick(client, 100 + frame, [4], [[value]], client_tick=frame)
        run_tick(app)
    *_, last = tick_results(client)
    streamed = unpack_rows(last.tick_result.outputs, 3)[0]
    config = {"norm_mean": 1.5, "norm_std": 2.0, "forecast_steps": 3, "sequence_length": 12}
    client.send(infer(999, LSTM, series.tolist(), **config))
    app.settle()
    (reply,) = client.replies()
    np.testing.assert_allclose(streamed, reply.infer_response.predictions, rtol=1e-4, atol=1e-4)


def test_stream_metrics_are_counted_per_model_at_scrape_time() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from aiServer.metrics import MetricSources, make_registry

    app, client = app_with_streams(1, 2, 3)
    send_tick(client, 80, [1, 2], [[1.0], [2.0]])
    send_tick(client, 81, [1], [[3.0]])  # replaces 1's pending observation
    run_tick(app)
    send_tick(client, 82, [3], [[1.0]])
    run_tick(app)
    client.send(pb.Envelope(request_id=83, stream_close=pb.StreamClose(character_id=3)))
    registry = make_registry(
        MetricSources(
            app.facade, app.dispatcher, app.factory, app.broadcaster, app.state, lambda: True
        )
    )
    m = {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.labels.get("model", LSTM) == LSTM
    }
    label = str([("model", LSTM)])
    assert m["inference_streams_open" + label] == 2
    assert m["inference_stream_ticks_total" + label] == 2
    assert m["inference_stream_observations_total" + label] == 4
    assert m["inference_stream_observations_coalesced_total" + label] == 1
    assert m["inference_stream_ticks_missed_total" + label] == 0
    assert m["inference_stream_characters_per_tick_sum" + label] == 3
    assert m["inference_stream_tick_duration_seconds_count" + label] == 2
