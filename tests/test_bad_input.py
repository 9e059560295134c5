"""Every row of the bad-input table in docs/protocol.md: the answer, the connection, the count.

Each case is fed to a fresh in-memory server next to a well-behaved client, which
must still be served afterwards.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from commonlib.wire import pb
from factory.client_codec import frame_payload
from tests.support import App, Client, infer, make_app
from util.errors import ErrorCode

FIXTURES = Path(__file__).parent / "fixtures" / "hostile"
MA = [1.0, 2.0, 3.0, 4.0, 5.0]


def body(env: pb.Envelope) -> bytes:
    return env.SerializeToString()


@dataclass(frozen=True)
class Case:
    """One row: what the client sends, what it gets, whether it stays connected."""

    name: str
    send: Callable[[Client], None]
    code: ErrorCode | None  # None: a normal reply (no error)
    stays_open: bool


def raw(data: bytes) -> Callable[[Client], None]:
    return lambda c: c.send_raw(data)


def envelope(env: pb.Envelope) -> Callable[[Client], None]:
    return lambda c: c.send(env)


def with_shape(shape: list[int]) -> pb.Envelope:
    env = infer(1, "moving_average", MA)
    env.infer_request.input.shape.extend(shape)
    return env


def with_raw_values(data: bytes, values: list[float]) -> pb.Envelope:
    env = infer(1, "moving_average", values)
    env.infer_request.input.raw_values = data
    return env


def fixture(name: str) -> Callable[[Client], None]:
    return raw(frame_payload((FIXTURES / name).read_bytes()))


def unknown_field_command() -> bytes:
    return b"\x08\x01" + b"\xfa\x06\x00"  # request_id 1, then field 111 (no such command)


def versioned() -> pb.Envelope:
    env = infer(1, "moving_average", MA)
    env.infer_request.version = "7"
    return env


def cache_mode(mode: int) -> pb.Envelope:
    env = infer(1, "moving_average", MA)
    env.infer_request.cache = mode  # type: ignore[assignment]
    return env


def reuse_in_flight(c: Client) -> None:
    c.send(infer(1, "moving_average", MA))
    c.send(infer(1, "moving_average", MA))


CASES = [
    Case(
        "length prefix over max_frame_bytes",
        raw(struct.pack(">I", 2_000_000)),
        ErrorCode.FRAME_TOO_LARGE,
        False,
    ),
    Case("length prefix 0xFFFFFFFF", raw(b"\xff\xff\xff\xff"), ErrorCode.FRAME_TOO_LARGE, False),
    Case("zero-length frame", raw(frame_payload(b"")), ErrorCode.UNKNOWN_COMMAND, True),
    Case(
        "garbage bytes",
        raw(frame_payload(b"\xde\xad\xbe\xef\xff\xff\xff")),
        ErrorCode.BAD_PACKET,
        True,
    ),
    Case(
        "valid protobuf of the wrong message",
        raw(frame_payload(pb.Datagram(sequence=3, payload=b"xyz").SerializeToString())),
        ErrorCode.UNKNOWN_COMMAND,
        True,
    ),
    Case(
        "unknown command (field 111)",
        raw(frame_payload(unknown_field_command())),
        ErrorCode.UNKNOWN_COMMAND,
        True,
    ),
    Case("unset body", envelope(pb.Envelope(request_id=1)), ErrorCode.UNKNOWN_COMMAND, True),
    Case(
        "server-only body from a client",
        envelope(pb.Envelope(request_id=1, pong=pb.Pong())),
        ErrorCode.UNKNOWN_COMMAND,
        True,
    ),
    Case("unknown model", envelope(infer(1, "nope", MA)), ErrorCode.UNKNOWN_MODEL, True),
    Case("unknown version", envelope(versioned()), ErrorCode.UNKNOWN_MODEL, True),
    Case(
        "input shorter than the window",
        envelope(infer(1, "moving_average", [1.0, 2.0])),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case(
        "shape not matching the values", envelope(with_shape([2, 3])), ErrorCode.INVALID_INPUT, True
    ),
    Case("empty input", envelope(infer(1, "moving_average", [])), ErrorCode.INVALID_INPUT, True),
    Case(
        "raw_values not a multiple of 4 bytes",
        envelope(with_raw_values(struct.pack("<5f", *MA) + b"\x00", [])),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case(
        "raw_values and values both set",
        envelope(with_raw_values(struct.pack("<5f", *MA), MA)),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case(
        "NaN in the input",
        envelope(infer(1, "moving_average", [1, float("nan"), 3, 4, 5])),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case(
        "inf in the input",
        envelope(infer(1, "moving_average", [1, float("inf"), 3, 4, 5])),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case(
        "more values than max_input_values",
        envelope(infer(1, "moving_average", [1.0] * 4097)),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case(
        "unknown config key",
        envelope(infer(1, "moving_average", MA, colour=1)),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case(
        "config of the wrong type",
        envelope(infer(1, "moving_average", MA, window_size=2.5)),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case(
        "config out of range",
        envelope(infer(1, "moving_average", MA, forecast_steps=10**9)),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case("unknown cache mode", envelope(cache_mode(2)), ErrorCode.INVALID_INPUT, True),
    Case("request id reused while in flight", reuse_in_flight, ErrorCode.INVALID_INPUT, True),
    Case("hostile: nesting depth 101", fixture("nesting_101.bin"), ErrorCode.BAD_PACKET, True),
    Case("hostile: nesting depth 10,000", fixture("nesting_10000.bin"), ErrorCode.BAD_PACKET, True),
    Case(
        "hostile: 4 MiB packed repeated field",
        fixture("packed_4mib.bin"),
        ErrorCode.FRAME_TOO_LARGE,
        False,
    ),
    Case("hostile: truncated varint", fixture("truncated_varint.bin"), ErrorCode.BAD_PACKET, True),
    Case(
        "hostile: wrong wire type", fixture("wrong_wire_type.bin"), ErrorCode.UNKNOWN_COMMAND, True
    ),
    Case("hostile: unknown fields (ignored)", fixture("unknown_fields.bin"), None, True),
    Case(
        "hostile: 1e39 in a float field",
        fixture("float_1e39_input.bin"),
        ErrorCode.INVALID_INPUT,
        True,
    ),
    Case(
        "hostile: 1e39 in a double config",
        fixture("double_1e39_config.bin"),
        ErrorCode.INVALID_INPUT,
        True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_answered_counted_and_harms_no_one(case: Case) -> None:
    app: App = make_app()
    good = app.connect()
    bad = app.connect()
    case.send(bad)
    app.settle()
    replies = bad.replies()
    assert replies, "every bad input gets an answer before anything else happens"
    if case.code is None:
        assert not any(r.HasField("error") for r in replies)
    else:
        errors = [r.error for r in replies if r.HasField("error")]
        assert [e.code for e in errors][-1] == case.code, errors
        assert errors[-1].message  # always explained
        assert app.factory.stats.errors_sent[case.code.name] >= 1
    assert bad.closed == (not case.stays_open)
    if case.stays_open:
        bad.send(pb.Envelope(request_id=99, ping=pb.Ping()))
        assert any(r.HasField("pong") for r in bad.replies())
    good.send(infer(5, "moving_average", MA))
    app.settle()
    (reply,) = good.replies()
    assert reply.HasField("infer_response")


def test_truncated_frame_then_disconnect_is_counted_and_harmless() -> None:
    app = make_app()
    good = app.connect()
    bad = app.connect()
    bad.send_raw(frame_payload(body(infer(1, "moving_average", MA)))[:-3])
    bad.protocol.connectionLost()
    assert app.factory.stats.truncated_disconnects == 1
    assert bad.replies() == []
    good.send(infer(5, "moving_average", MA))
    app.settle()
    assert good.replies()[0].HasField("infer_response")
