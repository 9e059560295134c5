"""Connection hand-off between processes: one acceptor, N worker processes, one TCP port.

A supervisor accepts each TCP connection and passes its file descriptor over a UNIX
``SOCK_SEQPACKET`` socket pair (``SCM_RIGHTS``) to the ready worker holding the fewest
connections; the worker adopts it into its own reactor and serves it as if it had
accepted it. Unlike ``SO_REUSEPORT``, which spreads connections by a hash of their
addresses, this spreads even four connections two and two over two workers, and a
restarted worker (holding none) gets the next ones.

Messages on a channel, one per datagram:

* supervisor → worker: ``b"C"`` with one descriptor attached (a new connection);
* worker → supervisor: ``b"R"`` followed by a JSON object (the worker is ready, and
  its own ports), and ``b"c"`` (a connection it was handed has closed).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

NEW_CONNECTION = b"C"
READY = b"R"
CLOSED = b"c"
_MAX_MESSAGE = 65_536

log = Logger()


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected, non-blocking (supervisor end, worker end) pair of channel sockets."""
    supervisor_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    supervisor_end.setblocking(False)
    worker_end.setblocking(False)
    return supervisor_end, worker_end


@implementer(IReadDescriptor)
class SocketReader:
    """A plain socket in the reactor: while started, ``on_readable`` runs when it has data."""

    def __init__(
        self, reactor: Any, sock: socket.socket, on_readable: Callable[[], None], name: str
    ) -> None:
        self._reactor = reactor
        self._sock = sock
        self._on_readable = on_readable
        self._name = name
        self.reading = False

    def start(self) -> None:
        """Make the socket non-blocking and watch it."""
        self._sock.setblocking(False)
        self._reactor.addReader(self)
        self.reading = True

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        if self.reading:
            self._reactor.removeReader(self)
            self.reading = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def doRead(self) -> None:
        self._on_readable()

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return self._name


@dataclass
class WorkerChannel:
    """The supervisor's end of one worker's channel: its readiness and its load."""

    index: int
    sock: socket.socket
    ready: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    connections: int = 0
    handed_off: int = 0

    def send_connection(self, fd: int) -> bool:
        """Pass connection ``fd`` to the worker; False if its channel cannot take it now."""
        try:
            socket.send_fds(self.sock, [NEW_CONNECTION], [fd])
        except OSError:  # BlockingIOError: the worker is not reading; or it has gone
            return False
        self.connections += 1
        self.handed_off += 1
        return True

    def read_messages(self) -> bool:
        """Apply every message waiting from the worker; False once its end has closed."""
        while True:
            try:
                data = self.sock.recv(_MAX_MESSAGE)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            kind = data[:1]
            if kind == CLOSED:
                self.connections = max(0, self.connections - 1)
            elif kind == READY:
                self.ready = True
                self.info = json.loads(data[1:])
            else:
                log.warn(
                    "worker {index} sent an unknown message {kind!r}", index=self.index, kind=kind
                )

    def close(self) -> None:
        """Close the supervisor's end."""
        self.sock.close()


class Acceptor:
    """Accepts connections on a listening socket and hands each to a worker.

    The worker is the ready one with the fewest connections (ties: the one handed
    the fewest so far). A connection no worker can take is passed to ``refuse``
    (which may write a last message) and closed.
    """

    ACCEPTS_PER_READ = 64

    def __init__(
        self,
        reactor: Any,
        listener: socket.socket,
        channels: Callable[[], Sequence[WorkerChannel]],
        refuse: Callable[[socket.socket], None],
    ) -> None:
        self._listener = listener
        self._channels = channels
        self._refuse = refuse
        self._reader = SocketReader(reactor, listener, self._accept, "acceptor")
        self.accepted = 0
        self.refused = 0

    def start(self) -> None:
        """Start accepting (the socket must already be listening)."""
        self._reader.start()

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        self._reader.stop()
        self._listener.close()

    def _accept(self) -> None:
        for _ in range(self.ACCEPTS_PER_READ):
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. EMFILE: retried on the next readable event
                log.warn("accept failed: {error}", error=exc)
                return
            with conn:
                self.accepted += 1
                self._hand_off(conn)

    def _hand_off(self, conn: socket.socket) -> None:
        ready = sorted(
            (c for c in self._channels() if c.ready), key=lambda c: (c.connections, c.handed_off)
        )
        for channel in ready:
            if channel.send_connection(conn.fileno()):
                return
        self.refused += 1
        with contextlib.suppress(OSError):
            self._refuse(conn)


class HandoffReceiver:
    """A worker's end of its channel: adopts every connection the supervisor passes.

    ``adopt(fd, family)`` must take the connection into the reactor (it is given a
    descriptor it may duplicate; this class closes the original afterwards).
    ``supervisor_gone`` runs once if the supervisor's end closes.
    """

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        adopt: Callable[[int, int], None],
        supervisor_gone: Callable[[], None],
    ) -> None:
        self._sock = sock
        self._adopt = adopt
        self._supervisor_gone = supervisor_gone
        self._reader = SocketReader(reactor, sock, self._read, "handoff")
        self._gone = False
        self.adopted = 0
        self.failed = 0

    def start(self) -> None:
        """Start taking connections."""
        self._reader.start()

    def stop(self) -> None:
        """Take no more connections (those adopted stay open)."""
        self._reader.stop()

    def announce_ready(self, info: Mapping[str, Any]) -> None:
        """Tell the supervisor this worker serves, and where its own ports are."""
        self._send(READY + json.dumps(dict(info)).encode())

    def connection_closed(self) -> None:
        """Tell the supervisor one handed-over connection has closed."""
        self._send(CLOSED)

    def _send(self, message: bytes) -> None:
        if self._gone:
            return
        try:
            self._sock.send(message)
        except OSError as exc:  # the supervisor is gone or not reading: its count drifts
            log.warn(
                "cannot tell the supervisor {message!r}: {error}", message=message[:1], error=exc
            )

    def _read(self) -> None:
        while self._reader.reading:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._sock, 16, 8)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:
                self._lost_supervisor()
                return
            for fd in fds:
                self._take(fd)

    def _take(self, fd: int) -> None:
        try:
            probe = socket.socket(fileno=fd)
            family = probe.family
            probe.detach()
            self._adopt(fd, family)
            self.adopted += 1
        except OSError as exc:  # the client left before it was adopted
            self.failed += 1
            log.info("a handed-over connection could not be adopted: {error}", error=exc)
            self.connection_closed()
        except Exception:
            self.failed += 1
            log.failure("adopting a handed-over connection failed")
            self.connection_closed()
        finally:
            os.close(fd)

    def _lost_supervisor(self) -> None:
        self.stop()
        if not self._gone:
            self._gone = True
            self._supervisor_gone()
