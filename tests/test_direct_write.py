"""Replies sent straight to the socket (netlib.direct_write) over real loopback sockets.

Each test runs the real transport (``PacketFactory`` on its own epoll reactor, driven
by the test with ``iterate``) against a plain client socket. The server's kernel send
buffer is capped small, so a large reply is sent in part directly and the rest is
left to the transport's buffer; the tests check that the bytes arrive whole and in
order, that nothing overtakes bytes the transport still holds, and that a peer's
reset is left to the transport to find.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from twisted.internet.epollreactor import EPollReactor

from commonlib.wire import pb
from factory.client_codec import frame_envelope, ping_envelope
from factory.fastcodec import ParsedInfer
from factory.packet_protocol import (
    ConnectionLimits,
    PacketConnection,
    PacketFactory,
    PacketProtocol,
    Refusal,
)
from netlib.direct_write import direct_writer

SNDBUF = 4096
REPLY_BYTES = 300_000  # far over the kernel's send buffer


class PongHandler:
    """The application side: answers each Ping with a Pong, nothing else."""

    pending = 0

    def __init__(self, connection: PacketConnection) -> None:
        self.connection = connection

    def refusal(self) -> Refusal | None:
        return None

    def packet_received(self, envelope: pb.Envelope) -> None:
        if envelope.HasField("ping"):
            reply = pb.Envelope(request_id=envelope.request_id, pong=pb.Pong())
            self.connection.send_envelope(reply)

    def infer_received(self, request: ParsedInfer, payload: bytes) -> None:
        raise AssertionError("no InferRequest is sent here")

    def connection_lost(self) -> None:
        pass


@dataclass
class Server:
    reactor: EPollReactor
    factory: PacketFactory
    port: int
    clients: list[socket.socket] = field(default_factory=list)

    def pump(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """Run the reactor until ``done()``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            self.reactor.iterate(0.01)

    def connect(self) -> tuple[socket.socket, PacketProtocol]:
        """A client socket (non-blocking) and the server's protocol for it."""
        before = set(self.factory.connections)
        client = socket.socket()
        # Before connecting: a receive buffer shrunk later stalls loopback TCP.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(5)
        client.connect(("127.0.0.1", self.port))
        client.setblocking(False)
        self.clients.append(client)
        self.pump(lambda: len(self.factory.connections) > len(before))
        (protocol,) = self.factory.connections - before
        return client, protocol

    def read(self, client: socket.socket, size: int) -> bytes:
        """Read ``size`` bytes from ``client``, running the reactor meanwhile."""
        chunks: list[bytes] = []
        got = 0

        def done() -> bool:
            nonlocal got
            while got < size:
                try:
                    chunk = client.recv(65536)
                except BlockingIOError:
                    return False
                assert chunk, "the server closed the connection"
                chunks.append(chunk)
                got += len(chunk)
            return True

        self.pump(done)
        return b"".join(chunks)


@pytest.fixture
def server() -> Iterator[Server]:
    reactor = EPollReactor()

    class Sessions:
        def open_session(self, connection: PacketConnection) -> PongHandler:
            return PongHandler(connection)

    limits = ConnectionLimits(socket_send_buffer_bytes=SNDBUF)
    factory = PacketFactory(Sessions(), limits, reactor)
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    served = Server(reactor, factory, listening.getHost().port)
    try:
        yield served
    finally:
        for client in served.clients:
            client.close()
        listening.stopListening()
        for protocol in list(factory.connections):
            protocol.abort("test over")
        reactor.iterate(0)
        reactor.iterate(0)
        for selectable in reactor.removeAll():
            selectable.connectionLost(None)
        reactor.waker.connectionLost(None)
        reactor._poller.close()


def queued(protocol: PacketProtocol) -> int:
    """Bytes the protocol's TCP transport holds unsent, in its buffers."""
    transport = protocol.transport
    held = len(transport.dataBuffer) - transport.offset  # type: ignore[union-attr]
    return held + transport._tempDataLen  # type: ignore[union-attr, no-any-return]


def _reply(tag: int) -> bytes:
    """A framed payload of REPLY_BYTES whose every byte says which reply it is."""
    return struct.pack(">I", REPLY_BYTES) + bytes([tag]) * REPLY_BYTES


def test_a_plain_tcp_transport_gets_a_direct_writer(server: Server) -> None:
    _, protocol = server.connect()
    assert direct_writer(protocol.transport) is not None
    assert direct_writer(object()) is None  # TLS and test transports keep transport.write


def test_a_reply_over_the_send_buffer_is_sent_in_part_and_arrives_whole(server: Server) -> None:
    client, protocol = server.connect()
    first = _reply(1)
    protocol.send_frames(first)
    # The kernel took part of it at once, the transport holds the rest.
    assert 0 < queued(protocol) < len(first)
    assert server.read(client, len(first)) == first
    assert queued(protocol) == 0


def test_nothing_overtakes_bytes_the_transport_still_holds(server: Server) -> None:
    client, protocol = server.connect()
    first, second = _reply(1), _reply(2)
    protocol.send_frames(first)
    assert queued(protocol) > 0
    # The client empties its socket: the kernel could take more right now, but
    # the transport still holds the end of the first reply.
    taken = b""
    deadline = time.monotonic() + 5
    while not taken and time.monotonic() < deadline:
        try:
            taken = client.recv(1 << 20)
        except BlockingIOError:
            time.sleep(0.001)
    assert taken
    protocol.send_frames(second)
    assert queued(protocol) >= len(second)  # all of it behind the first reply's rest
    rest = server.read(client, len(first) + len(second) - len(taken))
    assert taken + rest == first + second


def _pong(request_id: int) -> bytes:
    return frame_envelope(pb.Envelope(request_id=request_id, pong=pb.Pong()))


def test_one_read_sends_directly_once_and_its_replies_keep_their_order(server: Server) -> None:
    client, protocol = server.connect()
    pings = b"".join(frame_envelope(ping_envelope(i)) for i in range(1, 201))
    protocol.dataReceived(pings)  # one read, as the reactor would deliver it
    handled = protocol.FRAMES_PER_TURN  # then it yields until the next reactor turn
    # The first pong went straight out; the read's other pongs wait in the transport
    # for one send, as every reply did before.
    assert queued(protocol) == sum(len(_pong(i)) for i in range(2, handled + 1))
    expected = b"".join(_pong(i) for i in range(1, 201))
    assert server.read(client, len(expected)) == expected


def test_a_reset_peer_is_left_to_the_transport_and_others_are_served(server: Server) -> None:
    client, protocol = server.connect()
    # The client resets the connection; the server has not read anything since.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    server.clients.remove(client)
    time.sleep(0.05)  # loopback delivers the RST at once; be generous
    # The direct send meets the reset: nothing is raised, the transport finds out.
    protocol.send_frames(frame_envelope(pb.Envelope(request_id=1, pong=pb.Pong())))
    protocol.send_frames(_reply(3))
    server.pump(lambda: not protocol.is_open)
    assert protocol not in server.factory.connections
    other, _ = server.connect()
    other.sendall(frame_envelope(ping_envelope(7)))
    assert server.read(other, len(_pong(7))) == _pong(7)
