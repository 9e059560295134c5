"""The client side of the TCP protocol: frames, an incremental decoder, request builders.

Every Python client in this repository speaks docs/protocol.md through this module:
the start-up self-check, the bot, the benchmarks and the tests. It is also the
reference for a Python client writer. It imports nothing from the application.

* :func:`frame_envelope` (and :func:`frame_payload` for an already serialized
  Envelope): the bytes of one frame, ready to write;
* :class:`EnvelopeDecoder`: feed it the received bytes in any chunks, take whole
  Envelopes out;
* :func:`read_envelope`: a blocking read of one Envelope from a socket, with a timeout;
* ``*_envelope`` builders for the requests a client sends.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence

import numpy as np
import numpy.typing as npt

from commonlib.wire import pb
from factory.codec import BadPacket, decode_envelope, encode_varint
from factory.tick_codec import pack_ids, pack_rows
from netlib.framing import frame

ConfigScalar = bool | int | float | str
Values = Iterable[float] | npt.NDArray[np.floating]

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""The decoder's default limit on a frame's length prefix (far above any server reply)."""

_LENGTH = struct.Struct(">I")
_RECV_BYTES = 65536


class FrameError(Exception):
    """A received frame the client cannot take: too long, or not an Envelope."""


def frame_payload(payload: bytes) -> bytes:
    """An already serialized Envelope with its 4-byte big-endian length prefix."""
    return frame(payload)


def frame_envelope(envelope: pb.Envelope) -> bytes:
    """One framed Envelope, ready to write."""
    return frame(envelope.SerializeToString())


def request_id_field(request_id: int) -> bytes:
    """Envelope field 1 (request_id) as protobuf writes it (nothing for 0).

    Prepended to a serialized Envelope that has no id, it gives that Envelope this id
    (protobuf fields may come in any order): a client encodes a request once and sends
    it under many ids for the cost of a few bytes.
    """
    return b"\x08" + encode_varint(request_id) if request_id else b""


class EnvelopeDecoder:
    """Splits a received byte stream into Envelopes, whatever chunks it arrives in.

    :meth:`feed` buffers the bytes and returns an iterator over the Envelopes complete
    now, in order; the ones not taken stay buffered for the next call. A length prefix
    above ``max_frame_bytes`` raises FrameError before anything of that size is
    buffered; the stream cannot be resynchronised after it, so every later call raises
    it again. A frame whose body is not an Envelope raises FrameError once (the frame
    is consumed) and decoding goes on with the next frame.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = b""
        self._offset = 0  # where the next frame starts in _buffer
        self._parts: list[bytes] = []  # received after _buffer, joined only when needed
        self._parts_size = 0
        self._needed = 4  # bytes from _offset that complete the next step

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken out as a frame."""
        return len(self._buffer) - self._offset + self._parts_size

    def feed(self, data: bytes) -> Iterator[pb.Envelope]:
        """Buffer ``data``; iterate the Envelopes now complete (FrameError on a bad one)."""
        if data:
            self._parts.append(data)
            self._parts_size += len(data)
        return iter(self.next_envelope, None)

    def next_envelope(self) -> pb.Envelope | None:
        """The next whole Envelope, or None until one is complete."""
        payload = self.next_payload()
        if payload is None:
            return None
        try:
            return decode_envelope(payload)
        except BadPacket as exc:
            raise FrameError(
                f"a frame of {len(payload)} bytes is not a valid Envelope: {exc}"
            ) from None

    def next_payload(self) -> bytes | None:
        """The body of the next whole frame (a serialized Envelope), or None until one is."""
        while True:
            buffer, offset = self._buffer, self._offset
            if len(buffer) - offset < self._needed:
                if len(buffer) - offset + self._parts_size < self._needed:
                    return None
                buffer = self._buffer = b"".join([buffer[offset:], *self._parts])
                offset = self._offset = 0
                self._parts.clear()
                self._parts_size = 0
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length > self.max_frame_bytes:
                # Not consumed: the stream cannot be resynchronised, every call fails.
                raise FrameError(
                    f"a frame's length prefix says {length} bytes, over the limit of "
                    f"{self.max_frame_bytes} (max_frame_bytes)"
                )
            end = offset + 4 + length
            if end <= len(buffer):
                self._needed = 4
                if end == len(buffer):
                    self._buffer, self._offset = b"", 0
                else:
                    self._offset = end
                return buffer[offset + 4 : end]
            self._needed = 4 + length  # then join the parts received after it, if enough


def read_envelope(
    sock: socket.socket, decoder: EnvelopeDecoder, timeout: float | None = None
) -> pb.Envelope:
    """The next Envelope on ``sock``: one ``decoder`` holds already, or read until one is whole.

    Keep one ``decoder`` per socket: bytes read past the Envelope stay in it for the
    next call. Raises TimeoutError when no Envelope is whole within ``timeout`` seconds
    (None: the socket's own timeout, per read), ConnectionError when the peer closes
    the connection first, FrameError on a bad frame.
    """
    envelope = decoder.next_envelope()
    if envelope is not None:
        return envelope
    deadline = None if timeout is None else time.monotonic() + timeout
    previous = sock.gettimeout()
    try:
        while envelope is None:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(_no_envelope(timeout, decoder))
                sock.settimeout(remaining)
            try:
                chunk = sock.recv(_RECV_BYTES)
            except TimeoutError:
                raise TimeoutError(_no_envelope(timeout, decoder)) from None
            if not chunk:
                left = decoder.buffered
                partial = f" ({left} bytes of a frame unread)" if left else ""
                raise ConnectionError(f"the server closed the connection{partial}")
            decoder.feed(chunk)
            envelope = decoder.next_envelope()
        return envelope
    finally:
        if deadline is not None:
            sock.settimeout(previous)


def _no_envelope(timeout: float | None, decoder: EnvelopeDecoder) -> str:
    waited = f"{timeout:g} s" if timeout is not None else "the socket's timeout"
    return f"no whole Envelope within {waited} ({decoder.buffered} bytes of one received)"


def config_value(value: ConfigScalar) -> pb.ConfigValue:
    """A typed ConfigValue for a Python scalar (bool, int, float, else text)."""
    if isinstance(value, bool):
        return pb.ConfigValue(bool_value=value)
    if isinstance(value, int):
        return pb.ConfigValue(int_value=value)
    if isinstance(value, float):
        return pb.ConfigValue(float_value=value)
    return pb.ConfigValue(string_value=value)


def set_config(
    target: MutableMapping[str, pb.ConfigValue], config: Mapping[str, ConfigScalar] | None
) -> None:
    """Fill a config map field (InferRequest.config, StreamOpen.config) with typed values."""
    for key, value in (config or {}).items():
        target[key].CopyFrom(config_value(value))


def float32_bytes(values: Values) -> bytes:
    """``values`` as IEEE 754 float32 little-endian bytes (``Tensor.raw_values``)."""
    return np.asarray(values if isinstance(values, np.ndarray) else list(values), "<f4").tobytes()


def infer_envelope(
    request_id: int,
    model: str,
    values: Values,
    config: Mapping[str, ConfigScalar] | None = None,
    version: str = "",
    raw: bool = False,
    cache: pb.CacheMode = pb.CACHE_MODE_USE,
    shape: Sequence[int] = (),
) -> pb.Envelope:
    """An InferRequest (``raw``: the values as ``Tensor.raw_values`` float32 bytes)."""
    envelope = pb.Envelope(request_id=request_id)
    request = envelope.infer_request
    request.model = model
    request.version = version
    request.cache = cache
    if raw:
        request.input.raw_values = float32_bytes(values)
    else:
        request.input.values.extend(values.tolist() if isinstance(values, np.ndarray) else values)
    request.input.shape.extend(shape)
    set_config(request.config, config)
    return envelope


def ping_envelope(request_id: int, client_time_ns: int = 0) -> pb.Envelope:
    """A Ping (the server answers Pong echoing ``client_time_ns``)."""
    return pb.Envelope(request_id=request_id, ping=pb.Ping(client_time_ns=client_time_ns))


def hello_envelope(request_id: int, token: str, client_name: str = "") -> pb.Envelope:
    """A Hello carrying an authentication token (docs/protocol.md §6)."""
    return pb.Envelope(request_id=request_id, hello=pb.Hello(token=token, client_name=client_name))


def list_models_envelope(request_id: int) -> pb.Envelope:
    """A ListModels."""
    return pb.Envelope(request_id=request_id, list_models=pb.ListModels())


def get_status_envelope(request_id: int) -> pb.Envelope:
    """A GetStatus."""
    return pb.Envelope(request_id=request_id, get_status=pb.GetStatus())


def subscribe_envelope(
    request_id: int,
    port: int,
    host: str = "",
    models: Iterable[str] = (),
    encoding: pb.Encoding = pb.ENCODING_PROTOBUF,
    max_datagram_bytes: int = 0,
) -> pb.Envelope:
    """A Subscribe: UDP results to ``host:port`` (empty host: the connection's own address)."""
    subscribe = pb.Subscribe(
        host=host, port=port, encoding=encoding, max_datagram_bytes=max_datagram_bytes
    )
    subscribe.models.extend(models)
    return pb.Envelope(request_id=request_id, subscribe=subscribe)


def unsubscribe_envelope(request_id: int, port: int, host: str = "") -> pb.Envelope:
    """An Unsubscribe of this connection's target ``host:port``."""
    return pb.Envelope(request_id=request_id, unsubscribe=pb.Unsubscribe(host=host, port=port))


def stream_open_envelope(
    request_id: int,
    model: str,
    character_id: int,
    config: Mapping[str, ConfigScalar] | None = None,
    initial_state: bytes = b"",
    version: str = "",
) -> pb.Envelope:
    """A StreamOpen for one character (docs/protocol.md §9)."""
    opening = pb.StreamOpen(
        model=model, character_id=character_id, initial_state=initial_state, version=version
    )
    set_config(opening.config, config)
    return pb.Envelope(request_id=request_id, stream_open=opening)


def stream_close_envelope(request_id: int, character_id: int) -> pb.Envelope:
    """A StreamClose for one character."""
    return pb.Envelope(
        request_id=request_id, stream_close=pb.StreamClose(character_id=character_id)
    )


def tick_envelope(
    request_id: int,
    model: str,
    ids: bytes | npt.ArrayLike,
    observations: bytes | npt.ArrayLike,
    client_tick: int = 0,
    client_time_us: int = 0,
) -> pb.Envelope:
    """A Tick: ids [N] as uint32 and observations [N, D] as float32, packed (§9).

    Either may be given packed already (bytes): a client sending the same ids every
    frame packs them once.
    """
    tick = pb.Tick(
        model=model,
        client_tick=client_tick,
        client_time_us=client_time_us,
        ids=ids if isinstance(ids, bytes) else pack_ids(ids),
        observations=observations if isinstance(observations, bytes) else pack_rows(observations),
    )
    return pb.Envelope(request_id=request_id, tick=tick)
