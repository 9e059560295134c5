"""The TCP protocol and factory: frame → admission gate → Envelope → packet handler.

The protocol is a transport only: framing, decoding, backpressure, limits and
timeouts. For each connection it asks the application (a :class:`SessionFactory`)
for a :class:`PacketHandler` (the application's per-connection session). Before
each frame it asks the handler's admission gate what it refuses now
(:meth:`PacketHandler.refusal`, a :class:`Refusal`) and answers the run of frames
it refuses BUSY in one go (factory.fastcodec.refuse_run, in C when built), never
decoding them; it decodes the others, answers undecodable frames itself, and hands
each packet to the handler, which answers through the :class:`PacketConnection` it
was given. The protocol keeps no application state (authentication, requests in
flight).
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from commonlib.wire import pb
from factory import fastcodec
from factory.codec import BadPacket, decode_envelope, encode_envelope, error_envelope
from factory.fastcodec import ParsedInfer
from netlib.direct_write import DirectWriter, direct_writer
from netlib.framing import FramedProtocol
from util.errors import ErrorCode

_connection_ids = itertools.count(1)
_LENGTH = struct.Struct(">I")


def _socket_of(transport: object) -> socket.socket | None:
    """The socket behind ``transport`` (a TCP transport), else None (TLS, test transports)."""
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    return sock if isinstance(sock, socket.socket) else None


class PacketConnection(Protocol):
    """What the application may do with the connection a packet came from."""

    connection_id: int

    @property
    def is_open(self) -> bool:
        """False once the peer is gone; replies are then dropped."""
        ...

    @property
    def peer(self) -> IAddress | None:
        """The client's address as this server sees it."""
        ...

    def send_envelope(self, envelope: pb.Envelope) -> None:
        """Send one packet."""
        ...

    def send_error(
        self, request_id: int, code: ErrorCode, message: str, character_ids: Sequence[int] = ()
    ) -> None:
        """Send an Error packet (about ``character_ids``: Tick and stream errors)."""
        ...

    def send_frames(self, data: bytes) -> None:
        """Send packets already framed and encoded (a batch's replies in one write)."""
        ...

    def shed(self, error_frame: bytes, model: str | None) -> None:
        """Send an already framed BUSY Error for a request refused before decoding.

        Counted as shed (``model``: refused for that model's delay target).
        """
        ...

    def close(self) -> None:
        """Stop handling this connection's frames at once; close after pending replies."""
        ...

    def trust(self) -> None:
        """The client proved a token: lift the pre-auth frame limit and deadline."""
        ...


class Refusal(NamedTuple):
    """What the admission gate refuses before decoding, BUSY, until it says otherwise.

    An InferRequest frame the transport can peek (factory.codec.peek_infer_head) is
    refused with the Error body ``every`` when that is set (whatever its model),
    else with ``by_model[model]`` when its model is there; any other frame is
    decoded and handed on, and the handler judges it.
    """

    every: bytes | None
    by_model: dict[bytes, bytes]


class PacketHandler(Protocol):
    """The application's side of one connection (aiServer.session.Session)."""

    @property
    def pending(self) -> int:
        """Requests accepted on this connection and not answered yet."""
        ...

    def refusal(self) -> Refusal | None:
        """The admission gate, asked before every frame: None while it admits everything.

        The transport refuses (and counts) the frames the returned :class:`Refusal`
        covers without decoding them, and asks again after each frame it hands on.
        It must cost next to nothing when admitting.
        """
        ...

    def packet_received(self, envelope: pb.Envelope) -> None:
        """One decoded packet of an admitted frame."""
        ...

    def infer_received(self, request: ParsedInfer, payload: bytes) -> None:
        """An admitted InferRequest frame read by the C fast path (factory.fastcodec).

        Only frames protobuf would decode to the same request come here; ``payload``
        is the frame, for whatever the parsed tuple leaves out.
        """
        ...

    def connection_lost(self) -> None:
        """The client went away (replies to it are dropped from now on)."""
        ...


class SessionFactory(Protocol):
    """The application: opens a :class:`PacketHandler` for each new connection."""

    def open_session(self, connection: PacketConnection) -> PacketHandler:
        """A client connected; the returned handler gets its frames."""
        ...


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits and timeouts (server.* in the config)."""

    max_frame_bytes: int = 1_048_576
    max_connections: int = 16_384
    idle_timeout_s: float = 60.0
    frame_timeout_s: float = 10.0
    frame_grace_s: float = 1.0
    min_receive_rate_bytes_per_s: int = 16_384
    max_output_buffer_bytes: int = 1_048_576
    slow_reader_timeout_s: float = 10.0
    socket_send_buffer_bytes: int = 65_536
    abort_timeout_s: float = 15.0
    auth_required: bool = False
    pre_auth_max_frame_bytes: int = 4096
    auth_deadline_s: float = 5.0
    tls_handshake_timeout_s: float = 10.0

    def frame_deadline_s(self, frame_bytes: int | None) -> float:
        """Seconds a frame of ``frame_bytes`` (prefix included) may take from its first byte.

        ``frame_grace_s`` plus the frame at ``min_receive_rate_bytes_per_s``, at most
        ``frame_timeout_s``; None (the length prefix itself is incomplete) gets the grace.
        """
        allowed = self.frame_grace_s
        if frame_bytes is not None:
            allowed += frame_bytes / self.min_receive_rate_bytes_per_s
        return min(allowed, self.frame_timeout_s)


@dataclass
class ConnectionStats:
    """Counters of what happened to connections, read by metrics and tests.

    Each connection the server closes is counted once, under the first reason.
    """

    opened: int = 0
    refused: int = 0
    timed_out_idle: int = 0
    timed_out_frame: int = 0
    timed_out_auth: int = 0
    timed_out_handshake: int = 0
    aborted_slow_reader: int = 0
    aborted_close_timeout: int = 0
    closed_frame_too_large: int = 0
    closed_draining: int = 0
    aborted_draining: int = 0
    truncated_disconnects: int = 0
    discarded_after_close: int = 0
    shed_before_decode: int = 0
    shed_by_delay: Counter[str] = field(default_factory=Counter)
    errors_sent: Counter[str] = field(default_factory=Counter)


@implementer(IPushProducer, IHandshakeListener)
class PacketProtocol(FramedProtocol):
    """One TCP client connection speaking length-prefixed Envelopes.

    It registers itself as the transport's push producer: when unsent replies pass
    the transport's buffer size, it stops reading and handling the client's requests
    (so a client that never reads cannot make it produce more); it aborts the
    connection if unsent bytes would exceed ``max_output_buffer_bytes`` or the client
    has not read for ``slow_reader_timeout_s``. The socket's kernel send buffer is
    capped at ``socket_send_buffer_bytes`` so that unread replies pile up where they
    are counted, not in the kernel. After ``FRAMES_PER_TURN`` frames from one read it
    yields to other connections until the next reactor tick, so one client's burst
    cannot stall the rest.

    Once the server decides to close a connection (:meth:`close`, :meth:`abort`, or
    the drain's half-close) it handles none of its frames any more, including those
    already read in the same chunk.

    Before each frame it asks the session's admission gate
    (:meth:`PacketHandler.refusal`) what it refuses; a run of refused frames is
    answered BUSY in one write, in the frames' order, without decoding them.

    On a plain TCP transport with nothing queued, a write goes straight to the
    socket (netlib.direct_write, at most once per read); only what the kernel does
    not take reaches ``transport.write``, so the pause and limits above count it.
    """

    FRAMES_PER_TURN = 64
    HALF_CLOSE_WAIT_S = 2.0  # after the drain's half-close, how long the client has to close

    def __init__(
        self,
        sessions: SessionFactory,
        limits: ConnectionLimits,
        clock: IReactorTime,
        stats: ConnectionStats | None = None,
    ) -> None:
        self.trusted = not limits.auth_required  # the pre-auth limits are lifted
        self.MAX_LENGTH = (
            limits.max_frame_bytes if self.trusted else limits.pre_auth_max_frame_bytes
        )
        self.sessions = sessions
        self.handler: PacketHandler  # the session, opened in connectionMade
        self.limits = limits
        self.clock = clock
        self.stats = stats if stats is not None else ConnectionStats()
        self.connection_id = next(_connection_ids)
        self._open = False
        self.last_activity = 0.0
        self.connected_at = 0.0
        self.partial_since: float | None = None
        self.frame_deadline: float | None = None
        self.handshake_pending = False
        self._paused_output = 0
        self._output_paused = False
        self.output_paused_since: float | None = None
        self._yielding = False
        self._reading_all = False  # the drain's last read: no yielding between frames
        self._frames_this_turn = 0
        self.closing = False  # the server decided to close: no frame is handled any more
        self.write_closed = False  # half-closed by the drain: replies can no longer be sent
        self.aborted_reason = ""
        self._abort_call: IDelayedCall | None = None
        self._direct: DirectWriter | None = None  # set in connectionMade (plain TCP only)
        self._in_read = False
        self._sent_direct_in_read = False
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
        transport = self.transport
        assert transport is not None
        self.handshake_pending = ISSLTransport.providedBy(transport)
        self._tune_socket()
        self._direct = direct_writer(transport)
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        handler = self.handler = self.sessions.open_session(self)
        self._refusal = handler.refusal
        self._packet_received = handler.packet_received
        self._infer_received = handler.infer_received
        if isinstance(self.factory, PacketFactory):
            self.factory.track(self, open_now=True)

    def _tune_socket(self) -> None:
        """TCP_NODELAY, and cap the kernel's send buffer so unread replies stay countable."""
        size = self.limits.socket_send_buffer_bytes
        transport = self.transport
        # Under TLS the socket belongs to the transport beneath the TLS layer.
        for candidate in (transport, getattr(transport, "transport", None)):
            sock = _socket_of(candidate)
            if sock is not None:
                # Not a TCP socket (e.g. a Unix socket in a test): nothing to tune.
                with contextlib.suppress(OSError):
                    # Replies are small and due now: Nagle would hold one back behind
                    # the client's delayed ACK (tens of ms for a TickResult).
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if size:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
                return

    def handshakeCompleted(self) -> None:
        """The TLS handshake finished (IHandshakeListener): its deadline no longer applies."""
        self.handshake_pending = False

    def connectionLost(self, reason: Failure = Failure(Exception("connection lost"))) -> None:  # noqa: B008
        if self._open and self._unprocessed and not self.closing:
            self.stats.truncated_disconnects += 1
        self._open = False
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if isinstance(self.factory, PacketFactory):
            self.factory.track(self, open_now=False)
        self.handler.connection_lost()
        if self.on_lost is not None:
            self.on_lost()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            self.stats.discarded_after_close += len(data)
            return
        now = self.clock.seconds()
        self.last_activity = now
        self._frames_this_turn = 0
        self._in_read = True
        self._sent_direct_in_read = False
        try:
            super().dataReceived(data)
        finally:
            self._in_read = False
        if self.closing:
            return
        # A frame left half-received starts the frame-completion clock.
        pending = self._unprocessed
        if pending:
            if self.partial_since is None:
                self.partial_since = now
            length = _LENGTH.unpack_from(pending)[0] + 4 if len(pending) >= 4 else None
            self.frame_deadline = self.partial_since + self.limits.frame_deadline_s(length)
        else:
            self.partial_since = self.frame_deadline = None

    def handle_frames(self, data: bytes) -> int:
        """Refuse or hand on each complete frame of ``data``; the offset of the first not handled.

        While the gate refuses, the run of frames it refuses is answered in one C call
        and one write; the others are split in one call per read, and the gate is asked
        again after each one (handling it may change what it refuses). At most
        ``FRAMES_PER_TURN`` frames per turn, refused ones included.
        """
        offset = 0
        split = fastcodec.split_frames
        parse_infer = fastcodec.parse_infer
        infer_received = self._infer_received
        refusal_of = self._refusal
        while not self.paused:
            budget = (
                self.FRAMES_PER_TURN - self._frames_this_turn if not self._reading_all else 1 << 30
            )
            refusal = refusal_of()
            if refusal is not None:
                offset = self._refuse_run(data, offset, budget, refusal)
                if self.paused:
                    break
                budget = 1  # the next frame is not the gate's to refuse: hand it on, ask again
            payloads, _, oversize = split(data, offset, self.MAX_LENGTH, budget)
            if not payloads:
                if oversize >= 0:
                    self.frame_too_large(oversize)
                break
            # Each frame decoded and handed on here (FramedProtocol.frame_received is not
            # used): the run of frames is counted once, after it (it holds at most the
            # turn's budget, so the count cannot end the turn early).
            self.partial_since = None
            handled = 0
            for payload in payloads:
                if self.paused:
                    break
                offset += 4 + len(payload)
                handled += 1
                request = parse_infer(payload) if parse_infer is not None else None
                if request is not None:
                    infer_received(request, payload)
                else:
                    self._decode(payload)
                if refusal is None and refusal_of() is not None:
                    break
            else:
                self._count_frames(handled)
                if oversize < 0 and len(payloads) < budget:
                    break  # every complete frame handled: the rest is a partial one
                continue
            self._count_frames(handled)
        return offset

    def _refuse_run(self, data: bytes, offset: int, budget: int, refusal: Refusal) -> int:
        """Answer BUSY the frames at ``offset`` the gate refuses; the offset after them."""
        busy, end, count, models = fastcodec.refuse_run(
            data, offset, self.MAX_LENGTH, budget, refusal.every, refusal.by_model
        )
        if count:
            self.partial_since = None
            stats = self.stats
            if models is not None:
                for model, refused in models.items():
                    stats.shed_by_delay[model.decode("utf-8", "replace")] += refused
            stats.errors_sent[ErrorCode.BUSY.name] += count
            stats.shed_before_decode += count
            self._count_frames(count)
            self._write(busy)
        return end

    def _count_frames(self, count: int) -> None:
        """Count frames handled this turn: yield the reactor after FRAMES_PER_TURN."""
        frames = self._frames_this_turn = self._frames_this_turn + count
        if frames >= self.FRAMES_PER_TURN and not self._yielding and not self._reading_all:
            # Let other connections have the reactor before handling the rest.
            self._yielding = True
            self._update_reading()
            self.clock.callLater(0, self._next_turn)

    def _decode(self, payload: bytes) -> None:
        """Decode a frame the C fast path did not take and hand it on (or answer BAD_PACKET)."""
        try:
            envelope = decode_envelope(payload)
        except BadPacket as exc:
            self.send_error(0, ErrorCode.BAD_PACKET, f"frame is not a valid Envelope: {exc}")
            return
        self._packet_received(envelope)

    def frame_too_large(self, length: int) -> None:
        """Answer FRAME_TOO_LARGE and close: the stream cannot be resynchronised."""
        self.send_error(
            0,
            ErrorCode.FRAME_TOO_LARGE,
            f"frame of {length} bytes exceeds "
            + (
                f"max_frame_bytes={self.MAX_LENGTH}"
                if self.trusted
                else f"pre_auth_max_frame_bytes={self.MAX_LENGTH} (authenticate first)"
            ),
        )
        if not self.closing:
            self.stats.closed_frame_too_large += 1
        self.close()

    def send_envelope(self, envelope: pb.Envelope) -> None:
        """Write one packet, unless the connection is gone."""
        self._write(encode_envelope(envelope))

    def send_frames(self, data: bytes) -> None:
        """Write packets already framed and encoded, unless the connection is gone."""
        self._write(data)

    def shed(self, error_frame: bytes, model: str | None) -> None:
        """Write an already framed BUSY Error for a request refused before decoding."""
        stats = self.stats
        if model is not None:
            stats.shed_by_delay[model] += 1
        stats.errors_sent[ErrorCode.BUSY.name] += 1
        stats.shed_before_decode += 1
        self._write(error_frame)

    def _write(self, data: bytes) -> None:
        if not self._open or self.transport is None or self.write_closed:
            return
        if self._output_paused:
            self._paused_output += len(data)
            if self._paused_output > self.limits.max_output_buffer_bytes:
                self.stats.aborted_slow_reader += 1
                self.abort("output buffer over max_output_buffer_bytes: the client is not reading")
                return
        direct = self._direct
        # One direct send per read at most: a read's later replies (pings, errors) are
        # coalesced by the transport into one send, as before.
        if direct is not None and not (self._in_read and self._sent_direct_in_read):
            self._sent_direct_in_read = self._in_read
            data = direct.send(data)
            if not data:
                return
        self.transport.write(data)

    def send_error(
        self, request_id: int, code: ErrorCode, message: str, character_ids: Sequence[int] = ()
    ) -> None:
        """Write an Error packet (and count it by code)."""
        self.stats.errors_sent[code.name] += 1
        self.send_envelope(error_envelope(request_id, code, message, character_ids))

    def close(self) -> None:
        """Handle no more frames; close once pending replies are written.

        Aborts if the peer has not let the connection close within abort_timeout_s.
        """
        if self.transport is None or not self._open or (self.closing and not self.write_closed):
            return
        if not self.closing:
            self._condemn()
            # A paused producer would hold the close back until it resumed.
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.clock.callLater(
                self.limits.abort_timeout_s, self._abort_if_open
            )

    def _condemn(self) -> None:
        """Stop handling frames at once, even those already read in this chunk."""
        self.closing = True
        self.paused = True  # ends the frame loop after this frame
        self.partial_since = self.frame_deadline = None

    def trust(self) -> None:
        """The client proved a token: full frame size, and no auth deadline, from now on."""
        self.trusted = True
        self.MAX_LENGTH = self.limits.max_frame_bytes

    def abort(self, reason: str) -> None:
        """Drop the connection at once, discarding unsent replies."""
        self.aborted_reason = reason
        self._condemn()
        self._open = False
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _abort_if_open(self) -> None:
        self._abort_call = None
        if self._open:
            self.stats.aborted_close_timeout += 1
            self.abort(f"peer did not close within abort_timeout_s={self.limits.abort_timeout_s}")

    # -- graceful drain ------------------------------------------------------------
    def finish_draining(self) -> None:
        """Answer every frame the kernel holds for us, then half-close our side.

        Called by the drain once nothing is in flight here. Frames already received
        are handled (the application answers new work UNAVAILABLE while draining);
        then the write side is shut down, so the client reads EOF after every reply,
        and the connection closes when the client closes its side (reading on, so the
        kernel never answers late requests with a reset), or after
        ``HALF_CLOSE_WAIT_S`` if it does not. A request without a reply before that EOF
        was not processed. Under TLS, which has no half-close, the
        connection is closed after the replies instead.
        """
        if not self._open or self.closing or self.transport is None:
            return
        sock = _socket_of(self.transport)  # None under TLS: no half-close there
        if sock is not None:
            self._read_what_is_waiting(sock)
            if not self._open or self.closing:
                return
        self.stats.closed_draining += 1
        if sock is None:
            self.close()
            return
        self._condemn()
        self.paused = False  # keep reading (and discarding) until the client's EOF
        self.write_closed = True
        transport = self.transport
        transport.unregisterProducer()  # type: ignore[attr-defined]
        transport.loseWriteConnection()  # type: ignore[attr-defined]
        transport.resumeProducing()  # type: ignore[attr-defined]
        self.clock.callLater(self.HALF_CLOSE_WAIT_S, self.close)

    def _read_what_is_waiting(self, sock: socket.socket) -> None:
        """Handle every frame already buffered here or in the kernel, without blocking."""
        self._reading_all = True
        self.paused = False
        try:
            data = b""  # first the frames a yield left in our own buffer
            while self._open and not self.closing:
                super().dataReceived(data)
                try:
                    data = sock.recv(65536, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return  # the connection is failing: the reactor reports the loss
                if not data:
                    return  # the client half-closed: its connectionLost follows
        finally:
            self._reading_all = False

    # -- reading: paused while the client is not reading, and between turns ----------
    def _update_reading(self) -> None:
        if self.write_closed:
            return  # half-closed: reading on, until the client's EOF
        want_paused = self._output_paused or self._yielding or self.closing
        if want_paused == self.paused or self.transport is None:
            return
        self.paused = want_paused  # also stops the frame loop
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
        if not self._output_paused:
            self.output_paused_since = self.clock.seconds()
        self._output_paused = True
        self._paused_output = 0
        self._update_reading()

    def resumeProducing(self) -> None:
        """The client caught up: handle requests again."""
        if self.partial_since is not None and self.output_paused_since is not None:
            # The frame's deadline restarts: we were the ones not reading it.
            self.partial_since = self.clock.seconds()
            self.frame_deadline = self.partial_since + self.limits.frame_deadline_s(None)
        self._output_paused = False
        self.output_paused_since = None
        self._paused_output = 0
        self._update_reading()

    def stopProducing(self) -> None:
        """The connection is going away."""
        self._output_paused = False
        self.output_paused_since = None


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

    ``connections`` is the one record of open client connections: the connection
    limit, the sweep, the drain, metrics and status all read it.

    Once a second (on the injected clock) the sweep closes connections: idle for
    ``idle_timeout_s`` with nothing in flight; holding a partial frame past its
    deadline (:meth:`ConnectionLimits.frame_deadline_s`: a client trickling bytes);
    not authenticated within ``auth_deadline_s``; a TLS handshake not finished within
    ``tls_handshake_timeout_s``; and aborts those whose client has not read replies for
    ``slow_reader_timeout_s``. A connection already closing is left alone, so each is
    closed, and counted, once.
    """

    SWEEP_INTERVAL_S = 1.0

    def __init__(
        self, sessions: SessionFactory, limits: ConnectionLimits, clock: IReactorTime
    ) -> None:
        self.sessions = sessions
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
        protocol = PacketProtocol(self.sessions, self.limits, self.clock, self.stats)
        protocol.factory = self
        return protocol

    def track(self, protocol: PacketProtocol, open_now: bool) -> None:
        """Count a connection in or out (called by the protocol)."""
        if open_now:
            self.connections.add(protocol)
        else:
            self.connections.discard(protocol)

    def inflight(self) -> int:
        """Requests accepted on open connections and not yet answered."""
        return sum(c.handler.pending for c in self.connections)

    def sweep(self) -> None:
        """Close (once each) connections past one of their deadlines."""
        now = self.clock.seconds()
        limits = self.limits
        stats = self.stats
        for protocol in list(self.connections):
            if protocol.closing:
                continue
            if (
                protocol.handshake_pending
                and now - protocol.connected_at >= limits.tls_handshake_timeout_s
            ):
                # Nothing can be sent before the handshake: just drop it.
                stats.timed_out_handshake += 1
                protocol.abort(
                    f"TLS handshake not done within "
                    f"server.tls.handshake_timeout_s={limits.tls_handshake_timeout_s}"
                )
            elif not protocol.trusted and now - protocol.connected_at >= limits.auth_deadline_s:
                stats.timed_out_auth += 1
                protocol.send_error(
                    0,
                    ErrorCode.UNAUTHENTICATED,
                    f"no valid Hello within auth.deadline_s={limits.auth_deadline_s}",
                )
                protocol.close()
            elif (
                protocol.output_paused_since is not None
                and now - protocol.output_paused_since >= limits.slow_reader_timeout_s
            ):
                stats.aborted_slow_reader += 1
                protocol.abort(
                    "the client has not read its replies for "
                    f"slow_reader_timeout_s={limits.slow_reader_timeout_s}"
                )
            elif (
                protocol.frame_deadline is not None
                and now >= protocol.frame_deadline
                and protocol.output_paused_since is None  # not while we stopped reading it
            ):
                stats.timed_out_frame += 1
                protocol.send_error(
                    0,
                    ErrorCode.BAD_PACKET,
                    "frame not completed in time (frame_grace_s="
                    f"{limits.frame_grace_s}, min_receive_rate_bytes_per_s="
                    f"{limits.min_receive_rate_bytes_per_s}, frame_timeout_s="
                    f"{limits.frame_timeout_s})",
                )
                protocol.close()
            elif (
                not protocol.handler.pending
                and now - protocol.last_activity >= limits.idle_timeout_s
            ):
                stats.timed_out_idle += 1
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
