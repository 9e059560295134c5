"""Frame splitting and refused runs: the C twins against the pure-Python ones, any TCP split.

A read's frames are split in one call (``split_frames``) and a run of frames the
admission gate refuses is answered in one call and one write (``refuse_run``). These
properties hold the C path to the pure-Python path byte for byte, and both to the
per-frame semantics: the stream fed in one read, in random pieces, or one frame per
read (where no run can form) gives the same replies, packets and counters.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from commonlib.wire import pb
from factory import codec, fastcodec
from factory.packet_protocol import (
    ConnectionLimits,
    PacketConnection,
    PacketFactory,
    PacketProtocol,
    Refusal,
)
from netlib import framing
from util.errors import ErrorCode

native: Any = pytest.importorskip("factory._fastcodec", reason="the C extension is not built")

EVERY = pb.Error(code=ErrorCode.BUSY.value, message="in flight").SerializeToString()  # type: ignore[arg-type]
BY_MODEL = {
    b"slow": pb.Error(code=ErrorCode.BUSY.value, message="slow: overloaded").SerializeToString(),  # type: ignore[arg-type]
    b"\xff": b"",  # not UTF-8 (peeked models are bytes), and an empty Error body
}
PRE_AUTH_LIMIT = 200
MAX_FRAME = 1000


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def infer_payload(
    request_id: int, model: str | bytes, canonical: bool = True, values: int = 2
) -> bytes:
    request = pb.InferRequest(input=pb.Tensor(values=[1.0] * values))
    body = request.SerializeToString()
    name = model.encode() if isinstance(model, str) else model
    if name:  # the model first, as every client library writes it
        body = b"\x0a" + codec.encode_varint(len(name)) + name + body
    infer = b"\x52" + codec.encode_varint(len(body)) + body
    rid = b"\x08" + codec.encode_varint(request_id) if request_id else b""
    return rid + infer if canonical else infer + rid


request_ids = st.integers(0, 2**64 - 1)
models = st.sampled_from(["moving_average", "slow", "", b"\xff", "other"])
frames = st.one_of(
    st.builds(infer_payload, request_ids, models),
    st.builds(infer_payload, request_ids, models, st.just(False)),
    # over the pre-auth limit, some over the frame limit too
    st.builds(infer_payload, request_ids, models, st.just(True), st.integers(50, 260)),
    request_ids.map(lambda r: pb.Envelope(request_id=r, ping=pb.Ping()).SerializeToString()),
    st.just(pb.Envelope(request_id=9, hello=pb.Hello(token="t")).SerializeToString()),
    st.binary(max_size=12),  # garbage, an empty Envelope
    st.integers(PRE_AUTH_LIMIT + 1, MAX_FRAME).map(lambda n: b"\x08\x01" + b"\x00" * (n - 2)),
)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Frames, maybe ending in a prefix over the limit and maybe cut short."""
    data = b"".join(framed(p) for p in draw(st.lists(frames, max_size=40)))
    if draw(st.booleans()):
        data += struct.pack(">I", draw(st.sampled_from([MAX_FRAME + 1, 2**32 - 1]))) + b"\x00"
    return data[: len(data) - draw(st.integers(0, 3))]


class ScriptedSession:
    """A deterministic gate whose answer changes with the frames it is handed.

    Each InferRequest handed on is one more in flight; a Ping with an even id
    answers them all, one with an odd id toggles the per-model delay refusal; a
    Hello lifts the pre-auth frame limit. Every event is recorded.
    """

    def __init__(self, connection: PacketConnection, max_inflight: int) -> None:
        self.connection = connection
        self.max_inflight = max_inflight
        self.inflight = 0
        self.refusing: dict[bytes, bytes] = {}
        self.events: list[tuple[str, int]] = []

    @property
    def pending(self) -> int:
        return self.inflight

    def refusal(self) -> Refusal | None:
        if self.inflight >= self.max_inflight:
            return Refusal(EVERY, self.refusing)
        return Refusal(None, self.refusing) if self.refusing else None

    def packet_received(self, envelope: pb.Envelope) -> None:
        body = envelope.WhichOneof("body")
        self.events.append((str(body), envelope.request_id))
        if body == "infer_request":
            self.inflight += 1
        elif body == "ping":
            if envelope.request_id % 2:
                self.refusing = {} if self.refusing else dict(BY_MODEL)
            else:
                self.inflight = 0
            self.connection.send_envelope(pb.Envelope(request_id=envelope.request_id, pong={}))
        elif body == "hello":
            self.connection.trust()

    def infer_received(self, request: fastcodec.ParsedInfer, payload: bytes) -> None:
        self.packet_received(pb.Envelope.FromString(payload))

    def connection_lost(self) -> None:
        self.events.append(("lost", 0))


class ScriptedApplication:
    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.sessions: list[ScriptedSession] = []

    def open_session(self, connection: PacketConnection) -> ScriptedSession:
        session = ScriptedSession(connection, self.max_inflight)
        self.sessions.append(session)
        return session


@contextmanager
def pure_python() -> Iterator[None]:
    """The pure-Python twins in place of the C ones, for the block."""
    saved = fastcodec.split_frames, fastcodec.refuse_run, fastcodec.parse_infer
    fastcodec.split_frames, fastcodec.refuse_run = framing.split_frames, codec.refuse_run
    fastcodec.parse_infer = None
    try:
        yield
    finally:
        fastcodec.split_frames, fastcodec.refuse_run, fastcodec.parse_infer = saved


def run(stream: bytes, cuts: list[int], max_inflight: int) -> tuple[object, ...]:
    """Feed ``stream`` cut at ``cuts``; what the connection wrote, handed on and counted."""
    app = ScriptedApplication(max_inflight)
    clock = Clock()
    limits = ConnectionLimits(
        max_frame_bytes=MAX_FRAME, auth_required=True, pre_auth_max_frame_bytes=PRE_AUTH_LIMIT
    )
    factory = PacketFactory(app, limits, clock)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
    assert isinstance(protocol, PacketProtocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(points):
        protocol.dataReceived(stream[start:end])
        clock.advance(0)  # the turns a burst yielded
    stats = factory.stats
    return (
        transport.value(),
        app.sessions[0].events,
        protocol.closing,
        stats.shed_before_decode,
        dict(stats.shed_by_delay),
        dict(stats.errors_sent),
        stats.closed_frame_too_large,
    )


def frame_ends(stream: bytes) -> list[int]:
    """Where each frame of ``stream`` ends (one frame per read)."""
    ends, offset = [], 0
    while len(stream) - offset >= 4:
        offset += 4 + struct.unpack_from(">I", stream, offset)[0]
        ends.append(offset)
    return ends


@settings(max_examples=200, deadline=None)
@given(
    stream=streams(),
    cuts=st.lists(st.integers(0, 6000), max_size=8),
    inflight=st.integers(0, 3),
)
def test_c_and_python_give_the_same_replies_for_any_split(
    stream: bytes, cuts: list[int], inflight: int
) -> None:
    whole = run(stream, [], inflight)
    assert run(stream, cuts, inflight) == whole
    assert run(stream, frame_ends(stream), inflight) == whole  # no run of two can form
    with pure_python():
        assert run(stream, cuts, inflight) == whole
        assert run(stream, [], inflight) == whole


@settings(max_examples=300, deadline=None)
@given(
    stream=streams(),
    offset=st.integers(0, 50),
    max_length=st.sampled_from([0, 5, PRE_AUTH_LIMIT, MAX_FRAME, 2**32]),
    limit=st.integers(0, 70),
)
def test_split_frames_in_c_is_the_python_split(
    stream: bytes, offset: int, max_length: int, limit: int
) -> None:
    offset = min(offset, len(stream))
    expected = framing.split_frames(stream, offset, max_length, limit)
    assert native.split_frames(stream, offset, max_length, limit) == expected


@settings(max_examples=300, deadline=None)
@given(
    stream=streams(),
    max_length=st.sampled_from([PRE_AUTH_LIMIT, MAX_FRAME]),
    limit=st.integers(0, 70),
    every=st.sampled_from([None, EVERY, b""]),
    by_model=st.sampled_from([{}, BY_MODEL, {b"moving_average": b"x" * 5000}]),
)
def test_refuse_run_in_c_is_the_python_run(
    stream: bytes,
    max_length: int,
    limit: int,
    every: bytes | None,
    by_model: dict[bytes, bytes],
) -> None:
    expected = codec.refuse_run(stream, 0, max_length, limit, every, by_model)
    assert native.refuse_run(stream, 0, max_length, limit, every, by_model) == expected


def parse(data: bytes) -> list[pb.Envelope]:
    """The Envelopes of a run of whole frames."""
    envelopes = []
    while data:
        (length,) = struct.unpack_from(">I", data)
        envelopes.append(pb.Envelope.FromString(data[4 : 4 + length]))
        data = data[4 + length :]
    return envelopes


def test_a_refused_run_is_one_write_of_every_busy_in_order() -> None:
    stream = b"".join(framed(infer_payload(r, "slow")) for r in (5, 0, 2**64 - 1))
    busy, end, count, refused = native.refuse_run(
        stream + b"\x00\x00", 0, MAX_FRAME, 64, None, BY_MODEL
    )
    assert (end, count, refused) == (len(stream), 3, {b"slow": 3})
    replies = parse(busy)
    assert [r.request_id for r in replies] == [5, 0, 2**64 - 1]
    assert {r.error.message for r in replies} == {"slow: overloaded"}


def test_bad_arguments_are_errors_not_crashes() -> None:
    with pytest.raises(ValueError, match="offset"):
        native.split_frames(b"", 1, 10, 10)
    with pytest.raises(TypeError):
        native.refuse_run(b"", 0, 10, 10, "busy", {})
    with pytest.raises(TypeError):
        native.split_frames(b"")


def test_refused_frames_count_towards_the_turn_and_a_burst_yields_after_64() -> None:
    app = ScriptedApplication(max_inflight=0)  # every InferRequest refused
    clock = Clock()
    factory = PacketFactory(app, ConnectionLimits(), clock)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
    assert isinstance(protocol, PacketProtocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    ping = pb.Envelope(request_id=2, ping=pb.Ping()).SerializeToString()
    burst = b"".join(framed(infer_payload(r, "any")) for r in range(1, 61))
    burst += framed(ping) + b"".join(framed(infer_payload(r, "any")) for r in range(61, 101))
    protocol.dataReceived(burst)
    # 60 refused, the ping, 3 refused: 64 frames, then it yields the reactor.
    assert factory.stats.shed_before_decode == 63
    assert app.sessions[0].events == [("ping", 2)]
    assert protocol.paused
    clock.advance(0)
    assert factory.stats.shed_before_decode == 100
    replies = parse(transport.value())
    assert [r.WhichOneof("body") for r in replies] == ["error"] * 60 + ["pong"] + ["error"] * 40
    assert [r.request_id for r in replies] == [*range(1, 61), 2, *range(61, 101)]
