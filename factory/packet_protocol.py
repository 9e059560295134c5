"""The TCP protocol and factory: frame → Envelope → packet handler.

The protocol is thin: it decodes, answers undecodable frames itself, and hands
every packet to a transport-agnostic :class:`PacketHandler` (the application's
dispatcher), which answers through the :class:`PacketConnection` it is given.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from commonlib.wire import pb
from factory.codec import (
    BadPacket,
    decode_envelope,
    encode_envelope,
    error_envelope,
    error_frame,
    peek_infer_head,
    peek_infer_request_id,
)
from netlib.framing import FramedProtocol
from util.errors import ErrorCode

_connection_ids = itertools.count(1)
_BUSY_BODIES: dict[int, bytes] = {}


class PacketConnection(Protocol):
    """What a handler may do with the connection a packet came from."""

    connection_id: int
    inflight: set[int]
    authenticated: bool
    auth_failures: int

    @property
    def is_open(self) -> bool:
        """False once the peer is gone; replies are then dropped."""
        ...

    def send_envelope(self, envelope: pb.Envelope) -> None:
        """Send one packet."""
        ...

    def send_error(
        self, request_id: int, code: ErrorCode, message: str, character_ids: Sequence[int] = ()
    ) -> None:
        """Send an Error packet (about ``character_ids``: Tick and stream errors)."""
        ...

    def close(self) -> None:
        """Close after pending replies are written."""
        ...

    def mark_authenticated(self) -> None:
        """The client proved a token: lift the pre-auth limits."""
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


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits and timeouts (server.* in the config)."""

    max_frame_bytes: int = 1_048_576
    max_connections: int = 16_384
    idle_timeout_s: float = 60.0
    frame_timeout_s: float = 10.0
    max_output_buffer_bytes: int = 1_048_576
    abort_timeout_s: float = 15.0
    max_inflight_per_connection: int = 32
    auth_required: bool = False
    pre_auth_max_frame_bytes: int = 4096
    auth_deadline_s: float = 5.0


@dataclass
class ConnectionStats:
    """Counters of what happened to connections, read by metrics and tests."""

    opened: int = 0
    refused: int = 0
    timed_out_idle: int = 0
    timed_out_frame: int = 0
    timed_out_auth: int = 0
    aborted_slow_reader: int = 0
    aborted_close_timeout: int = 0
    truncated_disconnects: int = 0
    shed_before_decode: int = 0
    shed_by_delay: Counter[str] = field(default_factory=Counter)
    errors_sent: Counter[str] = field(default_factory=Counter)


@implementer(IPushProducer)
class PacketProtocol(FramedProtocol):
    """One TCP client connection speaking length-prefixed Envelopes.

    It registers itself as the transport's push producer: when unsent replies pass
    the transport's buffer size, it stops reading and handling the client's requests
    (so a client that never reads cannot make it produce more), and it aborts the
    connection if unsent bytes would still exceed ``max_output_buffer_bytes``.
    After ``FRAMES_PER_TURN`` frames from one read it yields to other connections
    until the next reactor tick, so one client's burst cannot stall the rest.

    ``refusing`` (commonlib.admission.AdmissionBoard.refusing, shared and updated
    by the batchers) maps the models over their queue-delay target to a BUSY
    body: their InferRequest frames are answered with it before decoding.
    """

    FRAMES_PER_TURN = 64

    def __init__(
        self,
        handler: PacketHandler,
        limits: ConnectionLimits,
        clock: IReactorTime,
        stats: ConnectionStats | None = None,
        refusing: dict[bytes, bytes] | None = None,
    ) -> None:
        self._refusing: dict[bytes, bytes] = refusing if refusing is not None else {}
        self.authenticated = not limits.auth_required
        self.auth_failures = 0
        self.MAX_LENGTH = (
            limits.max_frame_bytes if self.authenticated else limits.pre_auth_max_frame_bytes
        )
        self.handler = handler
        self._packet_received = handler.packet_received
        self._max_inflight = limits.max_inflight_per_connection
        self.limits = limits
        self.clock = clock
        self.stats = stats if stats is not None else ConnectionStats()
        self.connection_id = next(_connection_ids)
        self.inflight: set[int] = set()
        self._open = False
        self.last_activity = 0.0
        self.connected_at = 0.0
        self.partial_since: float | None = None
        self._paused_output = 0
        self._output_paused = False
        self._yielding = False
        self._frames_this_turn = 0
        self.aborted_reason = ""
        self._abort_call: IDelayedCall | None = None
        # Set by whoever handed this connection over (a worker tells its supervisor).
        self.on_lost: Callable[[], None] | None = None

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
        self.connected_at = self.last_activity = self.clock.seconds()
        assert self.transport is not None
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        if isinstance(self.factory, PacketFactory):
            self.factory.track(self, open_now=True)
        self.handler.connection_made(self)

    def connectionLost(self, reason: Failure = Failure(Exception("connection lost"))) -> None:  # noqa: B008
        if self._open and self._unprocessed:
            self.stats.truncated_disconnects += 1
        self._open = False
        self.inflight.clear()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if isinstance(self.factory, PacketFactory):
            self.factory.track(self, open_now=False)
        self.handler.connection_lost(self)
        if self.on_lost is not None:
            self.on_lost()

    def dataReceived(self, data: bytes) -> None:
        now = self.clock.seconds()
        self.last_activity = now
        self._frames_this_turn = 0
        super().dataReceived(data)
        # A frame left half-received starts the frame-completion clock.
        if self._unprocessed:
            if self.partial_since is None:
                self.partial_since = now
        else:
            self.partial_since = None

    def frame_received(self, payload: bytes) -> None:
        """Decode one frame and hand it on; a bad frame is answered BAD_PACKET."""
        self.partial_since = None
        frames = self._frames_this_turn = self._frames_this_turn + 1
        if frames >= self.FRAMES_PER_TURN and not self._yielding:
            # Let other connections have the reactor before handling the rest.
            self._yielding = True
            self._update_reading()
            self.clock.callLater(0, self._next_turn)
        if len(self.inflight) >= self._max_inflight:
            request_id = peek_infer_request_id(payload)
            if request_id is not None:
                # Shed before decoding: under overload, refusing must cost next to nothing.
                self.stats.errors_sent[ErrorCode.BUSY.name] += 1
                self.stats.shed_before_decode += 1
                self._write(error_frame(request_id, self._busy_body()))
                return
        elif self._refusing and self._shed_by_delay(payload):
            return
        try:
            envelope = decode_envelope(payload)
        except BadPacket as exc:
            self.send_error(0, ErrorCode.BAD_PACKET, f"frame is not a valid Envelope: {exc}")
            return
        self._packet_received(envelope, self)

    def _shed_by_delay(self, payload: bytes) -> bool:
        """Answer BUSY, undecoded, an InferRequest for a model over its delay target."""
        head = peek_infer_head(payload)
        if head is None:
            return False
        body = self._refusing.get(head[1])
        if body is None:
            return False
        stats = self.stats
        stats.errors_sent[ErrorCode.BUSY.name] += 1
        stats.shed_before_decode += 1
        stats.shed_by_delay[head[1].decode("utf-8", "replace")] += 1
        self._write(error_frame(head[0], body))
        return True

    def _busy_body(self) -> bytes:
        limit = self.limits.max_inflight_per_connection
        body = _BUSY_BODIES.get(limit)
        if body is None:
            body = _BUSY_BODIES[limit] = pb.Error(
                code=ErrorCode.BUSY.value,  # type: ignore[arg-type]
                message=f"{limit} requests in flight on this connection "
                f"(max_inflight_per_connection={limit})",
            ).SerializeToString()
        return body

    def frame_too_large(self, length: int) -> None:
        """Answer FRAME_TOO_LARGE and close: the stream cannot be resynchronised."""
        self.send_error(
            0,
            ErrorCode.FRAME_TOO_LARGE,
            f"frame of {length} bytes exceeds "
            + (
                f"max_frame_bytes={self.MAX_LENGTH}"
                if self.authenticated
                else f"pre_auth_max_frame_bytes={self.MAX_LENGTH} (authenticate first)"
            ),
        )
        self.close()

    def send_envelope(self, envelope: pb.Envelope) -> None:
        """Write one packet, unless the connection is gone."""
        self._write(encode_envelope(envelope))

    def _write(self, data: bytes) -> None:
        if not self._open or self.transport is None:
            return
        if self._output_paused:
            self._paused_output += len(data)
            if self._paused_output > self.limits.max_output_buffer_bytes:
                self.stats.aborted_slow_reader += 1
                self.abort("output buffer over max_output_buffer_bytes: the client is not reading")
                return
        self.transport.write(data)

    def send_error(
        self, request_id: int, code: ErrorCode, message: str, character_ids: Sequence[int] = ()
    ) -> None:
        """Write an Error packet (and count it by code)."""
        self.stats.errors_sent[code.name] += 1
        self.send_envelope(error_envelope(request_id, code, message, character_ids))

    def close(self) -> None:
        """Close once pending replies are written; abort if that takes abort_timeout_s."""
        if self.transport is None or not self._open:
            return
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.clock.callLater(
                self.limits.abort_timeout_s, self._abort_if_open
            )

    def mark_authenticated(self) -> None:
        """The client proved a token: full frame size from now on."""
        self.authenticated = True
        self.MAX_LENGTH = self.limits.max_frame_bytes

    def abort(self, reason: str) -> None:
        """Drop the connection at once, discarding unsent replies."""
        self.aborted_reason = reason
        self._open = False
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _abort_if_open(self) -> None:
        self._abort_call = None
        if self._open:
            self.stats.aborted_close_timeout += 1
            self.abort(f"peer did not close within abort_timeout_s={self.limits.abort_timeout_s}")

    # -- reading: paused while the client is not reading, and between turns ----------
    def _update_reading(self) -> None:
        want_paused = self._output_paused or self._yielding
        if want_paused == self.paused or self.transport is None:
            return
        self.paused = want_paused  # also stops IntNStringReceiver's frame loop
        if want_paused:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        elif self._open:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
            self.dataReceived(b"")  # frames already buffered

    def _next_turn(self) -> None:
        self._yielding = False
        self._update_reading()

    # -- IPushProducer: the transport tells us when its write buffer is full -------
    def pauseProducing(self) -> None:
        """Unsent replies passed the transport's buffer size: stop handling requests."""
        self._output_paused = True
        self._paused_output = 0
        self._update_reading()

    def resumeProducing(self) -> None:
        """The client caught up: handle requests again."""
        self._output_paused = False
        self._paused_output = 0
        self._update_reading()

    def stopProducing(self) -> None:
        """The connection is going away."""
        self._output_paused = False


class _RefusedProtocol(TwistedProtocol):
    """Answers BUSY and closes: the server holds max_connections already."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def connectionMade(self) -> None:
        assert self.transport is not None
        envelope = error_envelope(
            0, ErrorCode.BUSY, f"server is at max_connections={self.limit}; retry later"
        )
        self.transport.write(encode_envelope(envelope))
        self.transport.loseConnection()


class PacketFactory(ServerFactory):
    """Builds PacketProtocols sharing one handler, the limits and a timeout sweep.

    Once a second (on the injected clock) it closes connections idle for
    ``idle_timeout_s`` with nothing in flight, and connections holding a partial
    frame for ``frame_timeout_s`` (a client trickling bytes).
    """

    SWEEP_INTERVAL_S = 1.0

    def __init__(
        self,
        handler: PacketHandler,
        limits: ConnectionLimits,
        clock: IReactorTime,
        refusing: dict[bytes, bytes] | None = None,
    ) -> None:
        self.refusing: dict[bytes, bytes] = refusing if refusing is not None else {}
        self.handler = handler
        self._packet_received = handler.packet_received
        self._max_inflight = limits.max_inflight_per_connection
        self.limits = limits
        self.clock = clock
        self.connections: set[PacketProtocol] = set()
        self.stats = ConnectionStats()
        self._sweeper: LoopingCall | None = None

    def startFactory(self) -> None:
        """Start the timeout sweep."""
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(self.SWEEP_INTERVAL_S, now=False)

    def stopFactory(self) -> None:
        """Stop the timeout sweep."""
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()

    def buildProtocol(self, addr: IAddress | None) -> TwistedProtocol:
        if len(self.connections) >= self.limits.max_connections:
            self.stats.refused += 1
            self.stats.errors_sent[ErrorCode.BUSY.name] += 1
            return _RefusedProtocol(self.limits.max_connections)
        self.stats.opened += 1
        protocol = PacketProtocol(self.handler, self.limits, self.clock, self.stats, self.refusing)
        protocol.factory = self
        return protocol

    def track(self, protocol: PacketProtocol, open_now: bool) -> None:
        """Count a connection in or out (called by the protocol)."""
        if open_now:
            self.connections.add(protocol)
        else:
            self.connections.discard(protocol)

    def sweep(self) -> None:
        """Close idle connections, ones stuck mid-frame, and ones that never authenticated."""
        now = self.clock.seconds()
        limits = self.limits
        for protocol in list(self.connections):
            if not protocol.authenticated and now - protocol.connected_at >= limits.auth_deadline_s:
                self.stats.timed_out_auth += 1
                protocol.send_error(
                    0,
                    ErrorCode.UNAUTHENTICATED,
                    f"no valid Hello within auth.deadline_s={limits.auth_deadline_s}",
                )
                protocol.close()
            elif (
                protocol.partial_since is not None
                and now - protocol.partial_since >= limits.frame_timeout_s
            ):
                self.stats.timed_out_frame += 1
                protocol.send_error(
                    0,
                    ErrorCode.BAD_PACKET,
                    f"frame not completed within frame_timeout_s={limits.frame_timeout_s}",
                )
                protocol.close()
            elif not protocol.inflight and now - protocol.last_activity >= limits.idle_timeout_s:
                self.stats.timed_out_idle += 1
                protocol.close()


class HandedOffFactory(ServerFactory):
    """Builds protocols for connections another process accepted and handed over.

    The connections are ``factory``'s in every way (limits, tracking, drain);
    ``closed`` runs when each one ends, so the process that accepted it can count.
    """

    def __init__(self, factory: PacketFactory, closed: Callable[[], None]) -> None:
        self.factory = factory
        self.closed = closed

    def buildProtocol(self, addr: IAddress | None) -> TwistedProtocol:
        protocol = self.factory.buildProtocol(addr)
        if isinstance(protocol, PacketProtocol):
            protocol.on_lost = self.closed
        else:  # refused at max_connections: it closes at once
            self.closed()
        return protocol
