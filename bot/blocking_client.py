"""A small blocking client for scripts, examples and integration tests.

It speaks the real wire protocol over a plain socket: 4-byte big-endian length,
then one serialized Envelope (docs/protocol.md).
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterable, Mapping

from commonlib.wire import pb

_PREFIX = struct.Struct(">I")


def config_value(value: bool | int | float | str) -> pb.ConfigValue:
    """A typed ConfigValue for a Python scalar."""
    if isinstance(value, bool):
        return pb.ConfigValue(bool_value=value)
    if isinstance(value, int):
        return pb.ConfigValue(int_value=value)
    if isinstance(value, float):
        return pb.ConfigValue(float_value=value)
    return pb.ConfigValue(string_value=value)


def infer_envelope(
    request_id: int,
    model: str,
    values: Iterable[float],
    config: Mapping[str, bool | int | float | str] | None = None,
    version: str = "",
    raw: bool = False,
) -> pb.Envelope:
    """An Envelope carrying one InferRequest (``raw``: the values as ``raw_values``)."""
    envelope = pb.Envelope(request_id=request_id)
    request = envelope.infer_request
    request.model = model
    request.version = version
    if raw:
        series = list(values)
        request.input.raw_values = struct.pack(f"<{len(series)}f", *series)
    else:
        request.input.values.extend(values)
    for key, value in (config or {}).items():
        request.config[key].CopyFrom(config_value(value))
    return envelope


def frame_bytes(envelope: pb.Envelope) -> bytes:
    """One framed Envelope, ready to write."""
    payload = envelope.SerializeToString()
    return _PREFIX.pack(len(payload)) + payload


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
        self._buffer = b""

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, envelope: pb.Envelope) -> None:
        """Write one framed Envelope."""
        self.sock.sendall(frame_bytes(envelope))

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes (for malformed-input tests and tools)."""
        self.sock.sendall(data)

    def receive(self) -> pb.Envelope:
        """Read the next Envelope; raises ConnectionError when the server closed."""
        header = self._read_exactly(4)
        (length,) = _PREFIX.unpack(header)
        envelope = pb.Envelope()
        envelope.ParseFromString(self._read_exactly(length))
        return envelope

    def request(self, envelope: pb.Envelope) -> pb.Envelope:
        """Send one Envelope and wait for the next reply."""
        self.send(envelope)
        return self.receive()

    def infer(
        self,
        model: str,
        values: Iterable[float],
        config: Mapping[str, bool | int | float | str] | None = None,
        request_id: int = 1,
        raw: bool = False,
    ) -> pb.Envelope:
        """One inference round trip (``raw``: send the values as ``Tensor.raw_values``)."""
        return self.request(infer_envelope(request_id, model, values, config, raw=raw))

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buffer)))
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data
