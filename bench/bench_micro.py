"""Micro-measurements behind the hot-path choices in docs/performance.md.

Each line times one way of doing one step of a moving_average request (64 values,
three config entries), min over repeats, in µs per call:

* reading the series: ``np.asarray`` vs ``np.fromiter`` on the repeated field, and
  ``np.frombuffer`` on ``raw_values``;
* the config map: reading it (``config_from_wire``) vs comparing it with ``==``;
* the reply: protobuf's generated code vs a hand-written encoder of the same bytes
  (the alternative that was measured and not kept).

    .venv/bin/python bench/bench_micro.py
"""

from __future__ import annotations

import struct
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from aiServer.commands.infer import config_from_wire
from commonlib.wire import pb
from factory.client_codec import frame_payload, infer_envelope
from factory.codec import encode_varint

CONFIG = {"forecast_steps": 5, "window_size": 5, "include_trend": True}
SERIES = [float(i % 13) / 3 for i in range(64)]
PREDICTIONS = np.arange(5, dtype=np.float32)
_TIMINGS = struct.Struct("<BfBBBfBf")
_HEAD = b"\x0a\x0emoving_average\x12\x011"


def protobuf_reply() -> bytes:
    """The reply as the daemon builds it."""
    reply = pb.Envelope(request_id=123456)
    response = reply.infer_response
    response.model = "moving_average"
    response.version = "1"
    response.predictions.extend(PREDICTIONS.tolist())
    timings = response.timings
    timings.queue_wait_ms = 0.5
    timings.batch_size = 32
    timings.inference_ms = 0.1
    timings.total_ms = 1.2
    return reply.SerializeToString()


def hand_written_reply() -> bytes:
    """The same message encoded by hand (framed); checked equal on parse below."""
    predictions = PREDICTIONS.tobytes()
    timings = _TIMINGS.pack(0x0D, 0.5, 0x10, 32, 0x1D, 0.1, 0x25, 1.2)
    response = (
        _HEAD
        + b"\x1a"
        + bytes((len(predictions),))
        + predictions
        + b"\x2a"
        + bytes((len(timings),))
        + timings
    )
    body = b"\x08" + encode_varint(123456) + b"\xa2\x01" + encode_varint(len(response)) + response
    return frame_payload(body)


def main() -> None:
    """Print µs per call of each variant."""
    floats = pb.Envelope.FromString(
        infer_envelope(1, "moving_average", SERIES, CONFIG).SerializeToString()
    )
    other = pb.Envelope.FromString(
        infer_envelope(2, "moving_average", SERIES, CONFIG).SerializeToString()
    )
    raw = infer_envelope(
        3, "moving_average", SERIES, CONFIG, raw=True
    ).infer_request.input.raw_values
    values = floats.infer_request.input.values
    config = floats.infer_request.config
    assert pb.Envelope.FromString(hand_written_reply()[4:]) == pb.Envelope.FromString(
        protobuf_reply()
    )
    cases = {
        "series: np.asarray(values)": lambda: np.asarray(values, dtype=np.float32),
        "series: np.fromiter(values)": lambda: np.fromiter(values, np.float32, len(values)),
        "series: np.frombuffer(raw_values)": lambda: np.frombuffer(raw, dtype="<f4"),
        "config: config_from_wire": lambda: config_from_wire(config),
        "config: map == map": lambda: config == other.infer_request.config,
        "reply: protobuf generated code": protobuf_reply,
        "reply: hand-written encoder": hand_written_reply,
    }
    number = 20_000
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=number, repeat=5))
        print(f"{name:36} {best / number * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
