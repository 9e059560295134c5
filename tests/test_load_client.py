"""The benchmark load client's reply parser (bench/load_client.py)."""

from __future__ import annotations

import pytest

from bench.load_client import RID_BASE, Conn, parse_replies, slot_table, varint_key
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
