"""A small blocking client for scripts, examples and integration tests.

It speaks the real wire protocol over a plain socket through the client codec
(factory/client_codec.py): 4-byte big-endian length, then one serialized Envelope
(docs/protocol.md).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping

from commonlib.wire import pb
from factory.client_codec import (
    ConfigScalar,
    EnvelopeDecoder,
    Values,
    frame_envelope,
    infer_envelope,
    read_envelope,
)

# The names this module had before the codec existed, for callers not moved yet.
frame_bytes = frame_envelope
__all__ = ["BlockingClient", "frame_bytes", "infer_envelope"]


class BlockingClient:
    """One TCP connection; send Envelopes, receive them in order of arrival."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        source_host: str | None = None,
    ) -> None:
        source = (source_host, 0) if source_host is not None else None
        raw = socket.create_connection((host, port), timeout=timeout, source_address=source)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = tls.wrap_socket(raw, server_hostname=host) if tls else raw
        self.decoder = EnvelopeDecoder()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, envelope: pb.Envelope) -> None:
        """Write one framed Envelope."""
        self.sock.sendall(frame_envelope(envelope))

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes (for malformed-input tests and tools)."""
        self.sock.sendall(data)

    def receive(self, timeout: float | None = None) -> pb.Envelope:
        """The next Envelope (see factory.client_codec.read_envelope for the errors).

        ``timeout`` None: the connection's timeout for each read.
        """
        return read_envelope(self.sock, self.decoder, timeout)

    def request(self, envelope: pb.Envelope) -> pb.Envelope:
        """Send one Envelope and wait for the next reply."""
        self.send(envelope)
        return self.receive()

    def infer(
        self,
        model: str,
        values: Values,
        config: Mapping[str, ConfigScalar] | None = None,
        request_id: int = 1,
        raw: bool = False,
    ) -> pb.Envelope:
        """One inference round trip (``raw``: send the values as ``Tensor.raw_values``)."""
        return self.request(infer_envelope(request_id, model, values, config, raw=raw))
