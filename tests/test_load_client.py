"""The benchmark load client's reply parser (bench/load_client.py)."""

from __future__ import annotations

import pytest

from bench.load_client import (
    RID_BASE,
    Conn,
    parse_replies,
    percentiles,
    sample_timings,
    slot_table,
    timings_summary,
    varint_key,
)
from commonlib.wire import pb
from factory.client_codec import frame_envelope


def reply(request_id: int, error: bool = False) -> bytes:
    """A framed reply Envelope: an InferResponse, or an Error."""
    envelope = pb.Envelope(request_id=request_id)
    if error:
        envelope.error.message = "busy"
    else:
        envelope.infer_response.model = "moving_average"
        envelope.infer_response.predictions.extend([1.0, 2.0])
    return frame_envelope(envelope)


def test_varint_key_matches_the_encoding() -> None:
    for rid in (RID_BASE, RID_BASE + 1, RID_BASE + 4095, (1 << 28) - 1):
        encoded = pb.Envelope(request_id=rid).SerializeToString()
        assert encoded[0] == 0x08 and len(encoded) == 5
        assert varint_key(rid) == int.from_bytes(encoded[1:5], "big")
    with pytest.raises(ValueError):
        varint_key(RID_BASE - 1)


def test_parse_counts_ok_errors_and_keeps_partial_frames() -> None:
    ring = 8
    slots = slot_table(ring)
    sent = [-1] * ring
    sent[0] = 100
    sent[1] = 200
    sent[2] = 300
    data = (
        reply(RID_BASE)  # ok, latency 900
        + reply(RID_BASE + 1, error=True)  # an Error reply
        + reply(RID_BASE + 0)  # a repeat: no longer in flight
        + reply(RID_BASE + 100)  # unknown id
        + reply(7)  # a short id, not one of ours
        + frame_envelope(pb.Envelope())  # an empty frame (length 0)
    )
    tail = reply(RID_BASE + 2)
    buf = data + tail[:6]
    latencies: list[int] = []
    pos, done, errors = parse_replies(buf, len(buf), slots, sent, 1000, latencies)
    assert pos == len(data)
    assert done == 6
    assert errors == 5
    assert latencies == [900]
    assert sent[0] == -1 and sent[1] == -1 and sent[2] == 300
    rest = buf[pos:] + tail[6:]
    pos, done, errors = parse_replies(rest, len(rest), slots, sent, 1300, latencies)
    assert (pos, done, errors) == (len(rest), 1, 0)
    assert latencies == [900, 1000]


def test_claim_wraps_the_ring() -> None:
    import socket

    a, b = socket.socketpair()
    try:
        conn = Conn(a, 4)
        frames = [bytes([i]) for i in range(4)]
        assert conn.claim(3, 10, frames) == b"\x00\x01\x02"
        assert conn.claim(3, 20, frames) == b"\x03\x00\x01"
        assert conn.next == 2
        assert conn.sent == [20, 20, 10, 20]
    finally:
        a.close()
        b.close()


def timed_reply(request_id: int, total_ms: float, queue_ms: float, model_ms: float) -> bytes:
    """A framed InferResponse carrying Timings."""
    envelope = pb.Envelope(request_id=request_id)
    timings = envelope.infer_response.timings
    timings.total_ms, timings.queue_wait_ms, timings.inference_ms = total_ms, queue_ms, model_ms
    return frame_envelope(envelope)


def test_sampled_timings_split_the_latency_by_stage() -> None:
    sent = [0] * 8
    data = (
        timed_reply(RID_BASE + 0, 3.0, 1.0, 0.5)  # sampled (slot 0)
        + timed_reply(RID_BASE + 1, 9.0, 9.0, 9.0)  # slot 1: not a multiple of 4
        + reply(RID_BASE + 4, error=True)  # an Error: no Timings
        + timed_reply(RID_BASE + 5, 1.0, 0.2, 0.3)  # slot 5: not sampled
    )
    tail = timed_reply(RID_BASE + 4, 2.0, 0.5, 0.5)
    samples: list[tuple[int, float, float, float]] = []
    buf = data + tail[:5]  # the last frame cut short: not read
    sample_timings(buf, len(buf), sent, 5000, 4, samples)
    assert samples == [(5000, 3.0, 1.0, 0.5)]
    summary = timings_summary(samples)
    assert summary["n"] == 1
    # 5 ms here: 3 in the server (1 queued, 0.5 in the model, 1.5 handing back), 2 outside.
    assert summary["slowest_1pct"] == {
        "latency": 5.0,
        "queue": 1.0,
        "model": 0.5,
        "handoff": 1.5,
        "outside": 2.0,
    }
    assert summary["outside"] == [2.0, 2.0]


def test_percentiles_by_nearest_rank() -> None:
    values = list(range(100, 0, -1))
    assert percentiles(values, 50, 99, 100) == [51.0, 100.0, 100.0]
    assert percentiles([], 50) == [0.0]
