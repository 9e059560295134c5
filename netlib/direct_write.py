"""Replies sent straight to the socket when the transport has nothing queued.

A Twisted ``transport.write`` only appends to the transport's buffer and asks the
reactor for write readiness; the bytes go out on the next reactor iteration
(``FileDescriptor.doWrite``), which then drops write readiness again: two
``epoll_ctl`` calls and a reactor turn per reply. :class:`DirectWriter` sends the
bytes itself, non-blocking, when the transport's buffer is empty, and returns what
the kernel did not take, for the caller to hand to ``transport.write``; so the
transport's buffering, its producer pause and every limit built on them see exactly
the bytes that could not be sent, and nothing overtakes bytes already queued.

Only a plain TCP transport (``twisted.internet.tcp.Connection``) qualifies: not TLS
(whose transport encrypts), not a test transport.
"""

from __future__ import annotations

import socket

from twisted.internet import tcp

# Python ignores SIGPIPE already; the flag keeps a peer's reset an EPIPE if it did not.
_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


class DirectWriter:
    """Sends to the socket of one TCP transport while the transport has nothing queued."""

    __slots__ = ("_send", "_transport")

    def __init__(self, transport: tcp.Connection) -> None:
        self._transport = transport
        self._send = transport.socket.send

    def send(self, data: bytes) -> bytes:
        """Send what the kernel takes now; the rest (all of ``data`` if none), else b"".

        Sends nothing when the transport holds unsent bytes (they go first), is
        closing, half-closed or aborting, or is not connected. A send error (EAGAIN,
        EPIPE, ECONNRESET, ...) sends nothing: the transport meets the same error on
        its own write and reports the loss as it always does.
        """
        transport = self._transport
        if (
            transport._tempDataLen
            or transport.dataBuffer
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnecting
            or transport._writeDisconnected
            or transport._aborting
            or transport.TLS  # startTLS: the transport encrypts what it is given
        ):
            return data
        try:
            sent = self._send(data, _FLAGS)
        except OSError:
            return data
        return data[sent:] if sent < len(data) else b""


def direct_writer(transport: object) -> DirectWriter | None:
    """A :class:`DirectWriter` for ``transport`` if it is a plain TCP transport, else None."""
    if isinstance(transport, tcp.Connection) and isinstance(
        getattr(transport, "socket", None), socket.socket
    ):
        return DirectWriter(transport)
    return None
