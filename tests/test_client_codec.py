"""The client codec (factory/client_codec.py): frames, the incremental decoder, builders."""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from commonlib.wire import pb
from factory import fastcodec
from factory.client_codec import (
    ConfigScalar,
    EnvelopeDecoder,
    FrameError,
    config_value,
    frame_envelope,
    frame_payload,
    get_status_envelope,
    hello_envelope,
    infer_envelope,
    list_models_envelope,
    ping_envelope,
    read_envelope,
    request_id_field,
    stream_close_envelope,
    stream_open_envelope,
    subscribe_envelope,
    tick_envelope,
    unsubscribe_envelope,
)
from factory.client_protocol import EnvelopeClientProtocol
from factory.codec import decode_envelope
from factory.tick_codec import unpack_ids, unpack_rows
from tests.test_streams_wire import doc_bytes

u64 = st.integers(0, 2**64 - 1)
texts = st.text(max_size=20)
bodies = st.one_of(
    st.builds(lambda t: pb.Envelope(ping=pb.Ping(client_time_ns=t)), u64),
    st.builds(
        lambda m, v: infer_envelope(0, m, v),
        texts,
        st.lists(st.floats(width=32, allow_nan=False), max_size=40),
    ),
    st.builds(
        lambda c, m: pb.Envelope(error=pb.Error(code=c, message=m)),
        st.integers(0, 16),
        texts,
    ),
    st.builds(
        lambda ids, out: pb.Envelope(tick_result=pb.TickResult(ids=ids, outputs=out)),
        st.binary(max_size=64),
        st.binary(max_size=3000),
    ),
    st.just(pb.Envelope()),  # a frame of length 0
)


@st.composite
def envelopes(draw: st.DrawFn) -> pb.Envelope:
    envelope = draw(bodies)
    envelope.request_id = draw(u64)
    return envelope


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, repeats allowed: empty chunks)."""
    points = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=200, deadline=None)
@given(st.lists(envelopes(), max_size=8), st.lists(st.integers(0, 20_000), max_size=12))
def test_any_split_of_a_stream_decodes_to_the_same_envelopes(
    sent: list[pb.Envelope], cuts: list[int]
) -> None:
    stream = b"".join(frame_envelope(e) for e in sent)
    decoder = EnvelopeDecoder()
    got = [envelope for chunk in split(stream, cuts) for envelope in decoder.feed(chunk)]
    assert got == sent
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(envelopes())
def test_a_codec_frame_is_what_the_server_decodes(envelope: pb.Envelope) -> None:
    framed = frame_envelope(envelope)
    (length,) = struct.unpack(">I", framed[:4])
    assert length == len(framed) - 4
    assert decode_envelope(framed[4:]) == envelope
    assert frame_payload(envelope.SerializeToString()) == framed


def test_envelopes_not_taken_stay_buffered_for_the_next_call() -> None:
    decoder = EnvelopeDecoder()
    stream = frame_envelope(ping_envelope(1)) + frame_envelope(ping_envelope(2))
    first = next(decoder.feed(stream + frame_envelope(ping_envelope(3))[:5]))
    assert first.request_id == 1
    assert [e.request_id for e in decoder.feed(b"")] == [2]
    assert decoder.buffered == 5
    assert decoder.next_envelope() is None
    assert decoder.next_payload() is None


def test_a_length_prefix_over_the_limit_fails_at_once_and_for_good() -> None:
    decoder = EnvelopeDecoder(max_frame_bytes=64)
    ok = frame_envelope(ping_envelope(1))
    with pytest.raises(FrameError, match="says 65 bytes, over the limit of 64"):
        list(decoder.feed(ok + struct.pack(">I", 65)))  # the body never arrives
    with pytest.raises(FrameError, match="over the limit of 64"):
        list(decoder.feed(ok))
    # At the limit it is taken.
    exact = EnvelopeDecoder(max_frame_bytes=len(ok) - 4)
    assert [e.request_id for e in exact.feed(ok)] == [1]


def test_a_body_that_is_not_an_envelope_fails_once_and_decoding_goes_on() -> None:
    decoder = EnvelopeDecoder()
    bad = frame_payload(b"\xff\xff\xff\xff\xff")
    items = decoder.feed(bad + frame_envelope(ping_envelope(9)))
    with pytest.raises(FrameError, match="a frame of 5 bytes is not a valid Envelope"):
        next(items)
    assert [e.request_id for e in items] == [9]


def test_a_large_frame_in_many_small_chunks() -> None:
    reply = pb.Envelope(request_id=5, tick_result=pb.TickResult(outputs=bytes(range(256)) * 400))
    framed = frame_envelope(reply)
    decoder = EnvelopeDecoder()
    got: list[pb.Envelope] = []
    for i in range(0, len(framed), 7):
        got.extend(decoder.feed(framed[i : i + 7]))
        assert decoder.buffered == (i + len(framed[i : i + 7])) % len(framed)
    assert got == [reply]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    listener.close()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def test_read_envelope_reads_one_and_keeps_the_rest(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    server.sendall(b"".join(frame_envelope(ping_envelope(i)) for i in (1, 2)))
    decoder = EnvelopeDecoder()
    assert read_envelope(client, decoder, timeout=5).request_id == 1
    assert decoder.buffered > 0
    server.close()  # the second is already read: it needs no more bytes
    assert read_envelope(client, decoder, timeout=5).request_id == 2


def test_read_envelope_times_out_on_a_partial_frame_and_restores_the_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    server.sendall(frame_envelope(ping_envelope(1))[:3])
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no whole Envelope within 0.2 s \(3 bytes"):
        read_envelope(client, EnvelopeDecoder(), timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2
    assert client.gettimeout() == 5


def test_read_envelope_names_a_close_before_the_frame_is_whole(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    server.sendall(frame_envelope(ping_envelope(1))[:6])
    server.close()
    with pytest.raises(ConnectionError, match=r"closed the connection \(6 bytes of a frame unread"):
        read_envelope(client, EnvelopeDecoder(), timeout=5)


def test_infer_envelope_values_raw_values_and_typed_config() -> None:
    config: dict[str, ConfigScalar] = {
        "window_size": 3,
        "include_trend": True,
        "alpha": 0.5,
        "mode": "fast",
    }
    series = [1.5, 2.25, -3.0]
    plain = infer_envelope(7, "moving_average", series, config, version="2")
    raw = infer_envelope(7, "moving_average", np.array(series), config, raw=True)
    assert list(plain.infer_request.input.values) == series
    assert raw.infer_request.input.raw_values == struct.pack("<3f", *series)
    assert not raw.infer_request.input.values
    assert plain.infer_request.version == "2"
    for envelope in (plain, raw):
        request = decode_envelope(frame_envelope(envelope)[4:]).infer_request
        assert request.config["window_size"].WhichOneof("kind") == "int_value"
        assert request.config["include_trend"].bool_value is True
        assert request.config["alpha"].float_value == 0.5
        assert request.config["mode"].string_value == "fast"
    bypass = infer_envelope(1, "m", np.arange(4, dtype=np.float32), cache=pb.CACHE_MODE_BYPASS)
    assert bypass.infer_request.cache == pb.CACHE_MODE_BYPASS
    assert list(bypass.infer_request.input.values) == [0.0, 1.0, 2.0, 3.0]
    assert config_value(False).WhichOneof("kind") == "bool_value"


@pytest.mark.skipif(not fastcodec.native, reason="the C extension is not built")
def test_infer_envelopes_take_the_servers_fast_path() -> None:
    assert fastcodec.parse_infer is not None
    for raw in (False, True):
        envelope = infer_envelope(2**40, "moving_average", [1.0, 2.0], {"window_size": 2}, raw=raw)
        parsed = fastcodec.parse_infer(frame_envelope(envelope)[4:])
        assert parsed is not None and parsed[:2] == (2**40, "moving_average")
        assert np.frombuffer(parsed[3], "<f4").tolist() == [1.0, 2.0]


def test_the_other_builders() -> None:
    assert ping_envelope(3, 99).ping.client_time_ns == 99
    assert hello_envelope(4, "secret", "bot").hello == pb.Hello(token="secret", client_name="bot")
    assert list_models_envelope(5).WhichOneof("body") == "list_models"
    assert get_status_envelope(6).WhichOneof("body") == "get_status"
    sub = subscribe_envelope(7, 9000, "127.0.0.1", ["m"], pb.ENCODING_JSON, 1400).subscribe
    assert (sub.host, sub.port, list(sub.models), sub.encoding, sub.max_datagram_bytes) == (
        "127.0.0.1",
        9000,
        ["m"],
        pb.ENCODING_JSON,
        1400,
    )
    assert unsubscribe_envelope(8, 9000).unsubscribe == pb.Unsubscribe(port=9000)
    opening = stream_open_envelope(9, "motion_lstm", 12, {"k": 2}, b"\0" * 4, "1").stream_open
    assert (opening.model, opening.character_id, opening.config["k"].int_value) == (
        "motion_lstm",
        12,
        2,
    )
    assert (opening.initial_state, opening.version) == (b"\0" * 4, "1")
    assert stream_close_envelope(10, 12).stream_close.character_id == 12
    tick = tick_envelope(11, "m", [4, 5], [[1.0], [2.0]], client_tick=3, client_time_us=4)
    assert (tick.request_id, tick.tick.client_tick, tick.tick.client_time_us) == (11, 3, 4)
    assert unpack_ids(tick.tick.ids).tolist() == [4, 5]
    assert unpack_rows(tick.tick.observations, 1).tolist() == [[1.0], [2.0]]


class Recorder(EnvelopeClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[pb.Envelope] = []

    def envelope_received(self, envelope: pb.Envelope) -> None:
        self.received.append(envelope)


def test_the_twisted_client_sends_frames_and_aborts_on_a_bad_one() -> None:
    protocol = Recorder()
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.send_envelope(ping_envelope(1))
    protocol.send_payload(ping_envelope(2).SerializeToString())
    assert transport.value() == frame_envelope(ping_envelope(1)) + frame_envelope(ping_envelope(2))
    stream = frame_envelope(ping_envelope(3))
    protocol.dataReceived(stream[:2])
    protocol.dataReceived(stream[2:] + frame_payload(b"\x0a"))
    assert [e.request_id for e in protocol.received] == [3]
    assert protocol.frame_error is not None
    assert "not a valid Envelope" in str(protocol.frame_error)
    assert transport.disconnecting
    protocol.dataReceived(frame_envelope(ping_envelope(4)))  # after the abort: not read
    assert len(protocol.received) == 1


@given(u64)
def test_a_request_id_field_prepended_to_an_envelope_without_one_sets_it(request_id: int) -> None:
    body = infer_envelope(0, "moving_average", [1.0, 2.0], {"window_size": 2}).SerializeToString()
    field = request_id_field(request_id)
    assert field == pb.Envelope(request_id=request_id).SerializeToString()
    assert decode_envelope(field + body) == infer_envelope(
        request_id, "moving_average", [1.0, 2.0], {"window_size": 2}
    )


def test_the_worked_example_of_the_protocol_doc_is_what_the_codec_sends() -> None:
    request = infer_envelope(
        42, "moving_average", [1.2, 2.3, 3.1, 2.8, 3.5, 4.2], {"forecast_steps": 5}
    )
    assert frame_envelope(request) == doc_bytes("infer-hex")
    assert len(doc_bytes("infer-hex")) == 74
