"""The boundary: the transport frames, gates and decodes; the session holds the state."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from aiServer.session import Session
from commonlib.wire import pb
from factory.client_codec import EnvelopeDecoder, frame_payload
from factory.fastcodec import ParsedInfer
from factory.packet_protocol import (
    ConnectionLimits,
    PacketConnection,
    PacketFactory,
    PacketProtocol,
    Refusal,
)
from tests.support import infer, make_app
from util.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[1]
MA = [1.0, 2.0, 3.0, 4.0, 5.0]


REFUSED = b"\x0a\x04nope"  # the serialized Error body refused requests get


class RecordingSession:
    """A minimal application session: refuses InferRequests for model "X", records the rest."""

    def __init__(self, connection: PacketConnection) -> None:
        self.connection = connection
        self.asked = 0
        self.packets: list[pb.Envelope] = []
        self.lost = False
        self.pending = 0

    def refusal(self) -> Refusal | None:
        self.asked += 1
        return Refusal(None, {b"X": REFUSED})

    def packet_received(self, envelope: pb.Envelope) -> None:
        self.packets.append(envelope)

    def infer_received(self, request: ParsedInfer, payload: bytes) -> None:
        self.packets.append(pb.Envelope.FromString(payload))

    def connection_lost(self) -> None:
        self.lost = True


class RecordingApplication:
    def __init__(self) -> None:
        self.sessions: list[RecordingSession] = []

    def open_session(self, connection: PacketConnection) -> RecordingSession:
        session = RecordingSession(connection)
        self.sessions.append(session)
        return session


def connect(factory: PacketFactory) -> tuple[PacketProtocol, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
    assert isinstance(protocol, PacketProtocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_the_transport_refuses_what_the_gate_refuses_without_decoding_it() -> None:
    app = RecordingApplication()
    factory = PacketFactory(app, ConnectionLimits(), Clock())
    protocol, transport = connect(factory)
    (session,) = app.sessions
    ping = pb.Envelope(request_id=7, ping=pb.Ping()).SerializeToString()
    # An InferRequest for "X" with a body no decoder accepts (a truncated tensor):
    # refused before decoding, so no BAD_PACKET for it.
    refused = b"\x08\x05\x52\x07\x0a\x01X\x1a\x02\xff\xff"
    stream = (refused, refused, ping, b"\xff\xff")
    protocol.dataReceived(b"".join(frame_payload(p) for p in stream))
    assert session.asked == 3  # once before the run of two, then after each frame handed on
    assert [p.request_id for p in session.packets] == [7]
    decoder = EnvelopeDecoder()
    decoder.feed(transport.value())
    assert decoder.next_payload() == decoder.next_payload() == b"\x08\x05\xaa\x01\x06" + REFUSED
    error = decoder.next_envelope()
    assert error is not None and error.error.code == ErrorCode.BAD_PACKET  # the garbage
    assert factory.stats.shed_before_decode == 2
    assert factory.stats.shed_by_delay == {"X": 2}
    assert factory.stats.errors_sent["BUSY"] == 2
    protocol.connectionLost()
    assert session.lost and not factory.connections


def test_the_idle_sweep_spares_a_connection_its_session_has_work_pending_on() -> None:
    app = RecordingApplication()
    clock = Clock()
    factory = PacketFactory(app, ConnectionLimits(idle_timeout_s=5.0), clock)
    factory.doStart()
    _busy, busy_transport = connect(factory)
    _idle, idle_transport = connect(factory)
    app.sessions[0].pending = 1
    clock.advance(6.0)
    assert idle_transport.disconnecting and not busy_transport.disconnecting
    assert factory.inflight() == 1
    factory.doStop()


def test_the_session_holds_the_requests_in_flight_and_is_forgotten_with_its_connection() -> None:
    app = make_app()
    client = app.connect()
    (session,) = app.dispatcher.sessions
    assert isinstance(session, Session) and client.protocol.handler is session
    client.send(infer(41, "moving_average", MA))
    assert session.inflight == {41} and app.dispatcher.inflight() == 1
    app.settle()
    assert session.inflight == set()
    assert client.replies()[0].infer_response.predictions
    client.protocol.connectionLost()
    assert app.dispatcher.sessions == set()


def test_authenticating_the_session_lifts_the_transports_pre_auth_limits() -> None:
    app = make_app({"auth": {"tokens": ["sesame"]}})
    client = app.connect()
    (session,) = app.dispatcher.sessions
    assert not session.authenticated and not client.protocol.trusted
    assert app.config.auth.pre_auth_max_frame_bytes == client.protocol.MAX_LENGTH
    client.send(pb.Envelope(request_id=1, hello=pb.Hello(token="sesame")))
    assert session.authenticated and client.protocol.trusted
    assert app.config.server.max_frame_bytes == client.protocol.MAX_LENGTH


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_transports_never_import_the_application() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.startswith("aiServer"))
        for package in ("factory", "netlib")
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
