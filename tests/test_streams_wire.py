"""docs/protocol.md §9's worked stream examples are what the real encoders produce."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from twisted.internet.task import Clock

from commonlib.wire import pb
from factory.tick_codec import decode_tick, encode_tick
from netlib.framing import frame
from netlib.udp_broadcast import TickSnapshot, UdpBroadcaster
from tests.test_udp_broadcast import FakeDatagramTransport

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
HEX_PAIR = re.compile(r"^[0-9a-f]{2}$")


def doc_block(marker: str) -> list[str]:
    """The lines of the fenced code block right after ``<!-- marker ...-->`` in the doc."""
    text = DOC.read_text()
    start = text.index(f"<!-- {marker} ")
    fence = text.index("```", start)
    body = text.index("\n", fence) + 1
    return text[body : text.index("```", body)].splitlines()


def doc_bytes(marker: str) -> bytes:
    """The hex bytes of an annotated dump: each line's leading two-digit hex tokens."""
    out = bytearray()
    for line in doc_block(marker):
        for token in line.split():
            if not HEX_PAIR.match(token):
                break
            out.append(int(token, 16))
    return bytes(out)


def test_the_tick_packet_example_is_the_encoders_bytes() -> None:
    tick = encode_tick("lstm_timeseries", [1, 2, 40], [[0.5], [-1.25], [3.0]], 120, 2_000_000)
    wire = frame(pb.Envelope(request_id=7, tick=tick).SerializeToString())
    assert doc_bytes("tick-hex") == wire
    assert len(wire) == 60
    decoded = decode_tick(tick.ids, tick.observations)
    assert decoded.ids.tolist() == [1, 2, 40] and decoded.width == 1


def _clock_at_us(micros: int) -> Clock:
    """A clock whose seconds() * 1e6 truncates to exactly ``micros``."""
    clock = Clock()
    seconds = micros / 1e6
    while int(seconds * 1_000_000) < micros:
        seconds = math.nextafter(seconds, math.inf)
    clock.advance(seconds)
    return clock


def _published(encoding: str) -> bytes:
    clock = _clock_at_us(1_795_504_199_002_846)
    broadcaster = UdpBroadcaster(clock)
    transport = FakeDatagramTransport()
    broadcaster.transport = transport  # type: ignore[assignment]
    target = broadcaster.add_target("127.0.0.1", 9000, encoding)  # type: ignore[arg-type]
    target.sequence = 4
    broadcaster.publish_snapshot(
        TickSnapshot(
            "lstm_timeseries",
            1234,
            1_795_504_199_000_000,
            2,
            np.array([1, 40], dtype=np.uint32),
            np.array([[0.5, 0.75], [2.5, -1.0]], dtype=np.float32),
        )
    )
    ((datagram, _),) = transport.written
    return datagram


def test_the_snapshot_datagram_example_is_the_encoders_bytes() -> None:
    datagram = _published("protobuf")
    assert doc_bytes("snapshot-hex") == datagram
    assert len(datagram) == 74
    parsed = pb.Datagram.FromString(datagram)
    assert parsed.sequence == 5 and parsed.snapshot.server_tick == 1234


def test_the_json_snapshot_example_is_the_encoders_text() -> None:
    (line,) = doc_block("snapshot-json")
    assert _published("json").decode() == line
