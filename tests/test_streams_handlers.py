"""Character streams through the whole in-memory path: frames → handlers → engine → replies."""

from __future__ import annotations

from typing import Any

import numpy as np

from commonlib.wire import pb
from factory.tick_codec import encode_tick, unpack_ids, unpack_rows
from tests.support import App, Client, make_app

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
    """Advance one tick period and run the step it launched."""
    app.clock.advance(TICK_S)
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
