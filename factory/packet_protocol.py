"""The TCP protocol and factory: frame → Envelope → packet handler.

The protocol is thin: it decodes, answers undecodable frames itself, and hands
every packet to a transport-agnostic :class:`PacketHandler` (the application's
dispatcher), which answers through the :class:`PacketConnection` it is given.
"""

from __future__ import annotations

import itertools
from typing import Protocol

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ServerFactory
from twisted.python.failure import Failure

from commonlib.wire import pb
from factory.codec import BadPacket, decode_envelope, encode_envelope, error_envelope
from netlib.framing import FramedProtocol
from util.errors import ErrorCode

_connection_ids = itertools.count(1)


class PacketConnection(Protocol):
    """What a handler may do with the connection a packet came from."""

    connection_id: int

    @property
    def is_open(self) -> bool:
        """False once the peer is gone; replies are then dropped."""
        ...

    def send_envelope(self, envelope: pb.Envelope) -> None:
        """Send one packet."""
        ...

    def send_error(self, request_id: int, code: ErrorCode, message: str) -> None:
        """Send an Error packet."""
        ...

    def close(self) -> None:
        """Close after pending replies are written."""
        ...


class PacketHandler(Protocol):
    """The application side: receives decoded packets from any transport."""

    def connection_made(self, connection: PacketConnection) -> None:
        """A client connected."""
        ...

    def connection_lost(self, connection: PacketConnection) -> None:
        """A client went away (replies to it are dropped from now on)."""
        ...

    def packet_received(self, envelope: pb.Envelope, connection: PacketConnection) -> None:
        """One decoded packet."""
        ...


class PacketProtocol(FramedProtocol):
    """One TCP client connection speaking length-prefixed Envelopes."""

    def __init__(self, handler: PacketHandler, max_frame_bytes: int) -> None:
        self.MAX_LENGTH = max_frame_bytes
        self.handler = handler
        self.connection_id = next(_connection_ids)
        self._open = False
        self.bad_packets = 0

    @property
    def is_open(self) -> bool:
        """False once the connection is lost."""
        return self._open

    @property
    def peer(self) -> IAddress | None:
        """The client's address, when connected."""
        return self.transport.getPeer() if self.transport is not None else None

    def connectionMade(self) -> None:
        self._open = True
        self.handler.connection_made(self)

    def connectionLost(self, reason: Failure = Failure(Exception("connection lost"))) -> None:  # noqa: B008
        self._open = False
        self.handler.connection_lost(self)

    def frame_received(self, payload: bytes) -> None:
        """Decode one frame and hand it on; a bad frame is answered BAD_PACKET."""
        try:
            envelope = decode_envelope(payload)
        except BadPacket as exc:
            self.bad_packets += 1
            self.send_error(0, ErrorCode.BAD_PACKET, f"frame is not a valid Envelope: {exc}")
            return
        self.handler.packet_received(envelope, self)

    def frame_too_large(self, length: int) -> None:
        """Answer FRAME_TOO_LARGE and close: the stream cannot be resynchronised."""
        self.send_error(
            0,
            ErrorCode.FRAME_TOO_LARGE,
            f"frame of {length} bytes exceeds max_frame_bytes={self.MAX_LENGTH}",
        )
        self.close()

    def send_envelope(self, envelope: pb.Envelope) -> None:
        """Write one packet, unless the connection is gone."""
        if self._open and self.transport is not None:
            self.transport.write(encode_envelope(envelope))

    def send_error(self, request_id: int, code: ErrorCode, message: str) -> None:
        """Write an Error packet."""
        self.send_envelope(error_envelope(request_id, code, message))

    def close(self) -> None:
        """Close once pending replies are written."""
        if self.transport is not None:
            self.transport.loseConnection()


class PacketFactory(ServerFactory):
    """Builds PacketProtocols sharing one handler and the configured frame limit."""

    def __init__(self, handler: PacketHandler, max_frame_bytes: int) -> None:
        self.handler = handler
        self.max_frame_bytes = max_frame_bytes

    def buildProtocol(self, addr: IAddress | None) -> PacketProtocol:
        protocol = PacketProtocol(self.handler, self.max_frame_bytes)
        protocol.factory = self
        return protocol
