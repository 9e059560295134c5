"""Framing and packet decoding on a StringTransport: splits, limits, garbage."""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from commonlib.wire import pb
from factory.client_codec import frame_envelope
from tests.support import infer, make_app
from util.errors import ErrorCode


def _frames(envelopes: list[pb.Envelope]) -> bytes:
    return b"".join(frame_envelope(env) for env in envelopes)


def _pings(n: int) -> list[pb.Envelope]:
    return [pb.Envelope(request_id=i + 1, ping=pb.Ping(client_time_ns=i * 7)) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_any_split_of_the_stream_decodes_the_same(n: int, cuts: list[int]) -> None:
    app = make_app()
    client = app.connect()
    stream = _frames(_pings(n))
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(points):
        client.send_raw(stream[start:end])
    replies = client.replies()
    assert [r.request_id for r in replies] == list(range(1, n + 1))
    assert [r.pong.client_time_ns for r in replies] == [i * 7 for i in range(n)]


def test_every_single_byte_split_decodes_the_same() -> None:
    app = make_app()
    client = app.connect()
    stream = _frames(_pings(3))
    for i in range(len(stream)):
        client.send_raw(stream[i : i + 1])
    assert [r.request_id for r in client.replies()] == [1, 2, 3]


def test_many_frames_in_one_read() -> None:
    app = make_app()
    client = app.connect()
    client.send_raw(_frames(_pings(50)))
    assert [r.request_id for r in client.replies()] == list(range(1, 51))


def test_oversized_length_prefix_answers_frame_too_large_and_closes() -> None:
    app = make_app({"server": {"max_frame_bytes": 1024}})
    client = app.connect()
    client.send_raw(struct.pack(">I", 1025) + b"x" * 10)
    (reply,) = client.replies()
    assert reply.error.code == ErrorCode.FRAME_TOO_LARGE
    assert "1025" in reply.error.message
    assert client.closed


def test_max_length_prefix_closes_without_buffering() -> None:
    app = make_app()
    client = app.connect()
    client.send_raw(b"\xff\xff\xff\xff" + b"\0" * 64)
    (reply,) = client.replies()
    assert reply.error.code == ErrorCode.FRAME_TOO_LARGE
    assert client.closed
    assert len(client.protocol._unprocessed) < 100


def test_frame_at_the_limit_is_accepted() -> None:
    app = make_app({"server": {"max_frame_bytes": 64}})
    client = app.connect()
    body = pb.Envelope(request_id=9, ping=pb.Ping(client_time_ns=1)).SerializeToString()
    # Pad with an unknown length-delimited field 1000 (tag bytes C2 3E) to exactly 64 bytes.
    filler = 64 - len(body) - 3
    payload = body + b"\xc2\x3e" + bytes([filler]) + b"z" * filler
    assert len(payload) == 64
    client.send_raw(struct.pack(">I", 64) + payload)
    (reply,) = client.replies()
    assert reply.pong.client_time_ns == 1
    assert not client.closed


def test_garbage_answers_bad_packet_and_the_connection_stays_usable() -> None:
    app = make_app()
    client = app.connect()
    client.send_raw(struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff")
    (error,) = client.replies()
    assert error.error.code == ErrorCode.BAD_PACKET
    assert not client.closed
    client.send(pb.Envelope(request_id=3, ping=pb.Ping()))
    (pong,) = client.replies()
    assert pong.request_id == 3 and pong.HasField("pong")


def test_zero_length_frame_is_an_unknown_command() -> None:
    app = make_app()
    client = app.connect()
    client.send_raw(struct.pack(">I", 0))
    (reply,) = client.replies()
    assert reply.error.code == ErrorCode.UNKNOWN_COMMAND
    assert "no body" in reply.error.message
    assert not client.closed


def test_server_packet_sent_by_a_client_is_an_unknown_command() -> None:
    app = make_app()
    client = app.connect()
    client.send(pb.Envelope(request_id=4, pong=pb.Pong()))
    (reply,) = client.replies()
    assert reply.request_id == 4
    assert reply.error.code == ErrorCode.UNKNOWN_COMMAND
    assert "'pong' is not a client command" in reply.error.message
    client.send(infer(5, "moving_average", [1, 2, 3, 4, 5]))
    app.settle()
    (ok,) = client.replies()
    assert ok.HasField("infer_response")


@settings(max_examples=200, deadline=None)
@given(
    request_id=st.integers(0, 2**64 - 1),
    body=st.sampled_from(["infer", "ping", "status", "none"]),
    model=st.sampled_from(["moving_average", "", "m" * 200]),
    trailing=st.binary(max_size=12),
)
def test_peeking_the_request_id_agrees_with_the_decoder(
    request_id: int, body: str, model: str, trailing: bytes
) -> None:
    from factory.codec import decode_envelope, error_frame, peek_infer_head

    env = pb.Envelope(request_id=request_id)
    if body == "infer":
        env.infer_request.model = model
        env.infer_request.input.values.extend([1.0, 2.0])
    elif body == "ping":
        env.ping.client_time_ns = 5
    elif body == "status":
        env.get_status.SetInParent()
    payload = env.SerializeToString()
    peeked = peek_infer_head(payload)
    assert peeked == ((request_id, model.encode()) if body == "infer" else None)
    # Anything after the body (e.g. a request_id written last) is left to the decoder.
    assert peek_infer_head(payload + b"\x08\x07" + trailing) is None
    error = pb.Error(code=pb.ERROR_CODE_BUSY, message="m").SerializeToString()
    framed = error_frame(request_id, error)
    decoded = decode_envelope(framed[4:])
    assert decoded.request_id == request_id and decoded.error.code == pb.ERROR_CODE_BUSY
    assert struct.unpack(">I", framed[:4])[0] == len(framed) - 4
