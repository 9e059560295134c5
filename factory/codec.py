"""The packet codec: Envelope bytes ↔ messages, and Error packets.

Handlers import this module; it imports nothing from the application.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from commonlib.wire import pb
from netlib.framing import frame
from util.errors import ErrorCode

Envelope = pb.Envelope
_LENGTH = struct.Struct(">I")


class BadPacket(Exception):
    """The frame is not a valid Envelope."""


def decode_envelope(payload: bytes) -> pb.Envelope:
    """Parse one frame body; raise BadPacket with the parser's reason if invalid."""
    envelope = Envelope()
    try:
        envelope.ParseFromString(payload)
    except DecodeError as exc:
        raise BadPacket(str(exc) or "not a valid Envelope") from None
    except RecursionError:
        raise BadPacket("message nesting too deep") from None
    return envelope


def encode_envelope(envelope: pb.Envelope) -> bytes:
    """Serialize and frame one Envelope."""
    return frame(envelope.SerializeToString())


def error_envelope(
    request_id: int, code: ErrorCode, message: str, character_ids: Sequence[int] = ()
) -> pb.Envelope:
    """An Envelope carrying an Error for ``request_id`` (about ``character_ids``, if any)."""
    envelope = Envelope(request_id=request_id)
    error = envelope.error
    error.code = int(code)  # type: ignore[assignment]
    error.message = message
    if character_ids:
        error.character_ids.extend(character_ids)
    return envelope


_INFER_REQUEST_TAG = 0x52  # Envelope field 10 (infer_request), wire type 2
_ERROR_TAG = b"\xaa\x01"  # Envelope field 21 (error), wire type 2


def encode_varint(value: int) -> bytes:
    """``value`` (non-negative) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(payload: bytes | bytearray, i: int) -> tuple[int, int]:
    """The varint at ``payload[i]`` and the offset after it; (-1, i) if cut short."""
    value, shift, end = 0, 0, min(len(payload), i + 10)
    while i < end:
        byte = payload[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7
    return -1, i


_MODEL_TAG = 0x0A  # InferRequest field 1 (model), wire type 2


def peek_infer_head(payload: bytes) -> tuple[int, bytes] | None:
    """(request id, model name bytes) of an InferRequest frame without decoding it.

    Only the canonical layout is recognised (request_id, then infer_request as the
    frame's last field, its first field model); anything else returns None and takes
    the normal path. An unset model reads as ``b""``.
    """
    if not payload:
        return None
    request_id, i = 0, 0
    if payload[0] == 0x08:
        request_id, i = read_varint(payload, 1)
        if request_id < 0 or request_id >= 1 << 64:
            return None
    if i >= len(payload) or payload[i] != _INFER_REQUEST_TAG:
        return None
    body_length, i = read_varint(payload, i + 1)
    if body_length < 0 or i + body_length != len(payload):
        return None  # more fields follow (a request_id after the body?): decode it
    if i >= len(payload) or payload[i] != _MODEL_TAG:
        return request_id, b""
    length, i = read_varint(payload, i + 1)
    if length < 0 or i + length > len(payload):
        return None
    return request_id, payload[i : i + length]


def error_frame(request_id: int, error_body: bytes) -> bytes:
    """A framed Envelope{request_id, error} from an already serialized Error."""
    envelope = b""
    if request_id:
        envelope = b"\x08" + encode_varint(request_id)
    envelope += _ERROR_TAG + encode_varint(len(error_body)) + error_body
    return frame(envelope)


def refuse_run(
    data: bytes,
    offset: int,
    max_length: int,
    limit: int,
    every: bytes | None,
    by_model: dict[bytes, bytes],
) -> tuple[bytes, int, int, dict[bytes, int] | None]:
    """Refuse the run of frames at ``data[offset:]`` the admission gate refuses, in one go.

    A complete frame (length at most ``max_length``) is refused when it is an
    InferRequest :func:`peek_infer_head` reads and ``every`` is set (its BUSY body for
    any model), or its model is in ``by_model`` (the body for that model). The run
    stops at the first frame that is incomplete, too large, not such a request or of
    a model not refused, or after ``limit`` frames. Returns ``(busy_frames,
    next_offset, count, models)``: every refusal's framed Error, in order, in one
    buffer; where the first frame not refused starts; how many were refused; and
    per model, how many were refused by ``by_model`` (None when none were).
    """
    out: list[bytes] = []
    models: dict[bytes, int] | None = None
    end = len(data)
    while len(out) < limit and end - offset >= 4:
        (length,) = _LENGTH.unpack_from(data, offset)
        if length > max_length or length > end - offset - 4:
            break
        head = peek_infer_head(data[offset + 4 : offset + 4 + length])
        if head is None:
            break
        request_id, model = head
        body = every
        if body is None:
            body = by_model.get(model)
            if body is None:
                break
            models = models if models is not None else {}
            models[model] = models.get(model, 0) + 1
        out.append(error_frame(request_id, body))
        offset += 4 + length
    return b"".join(out), offset, len(out), models


_FLOAT32 = struct.Struct("<f")
_FLOAT32_ZERO = b"\0\0\0\0"
_INFER_RESPONSE_TAG = b"\xa2\x01"  # Envelope field 20 (infer_response), wire type 2


def infer_response_head(model: str, version: str) -> bytes:
    """InferResponse fields 1 and 2 (model, version), encoded once per model."""
    out = b""
    for tag, text in ((b"\x0a", model), (b"\x12", version)):
        data = text.encode("utf-8")
        if data:
            out += tag + encode_varint(len(data)) + data
    return out


def _float32_field(tag: bytes, value: float) -> bytes:
    """A float field, omitted when its bits are all zero (proto3; -0.0 is sent)."""
    data = _FLOAT32.pack(value)
    return b"" if data == _FLOAT32_ZERO else tag + data


def timings_batch_part(batch_size: int, inference_ms: float) -> bytes:
    """Timings fields 2 and 3 (batch_size, inference_ms): the same for a whole batch."""
    return (b"\x10" + encode_varint(batch_size) if batch_size else b"") + _float32_field(
        b"\x1d", inference_ms
    )


def encode_infer_reply(
    request_id: int,
    head: bytes,
    predictions: bytes,
    confidence: bytes | None,
    queue_wait_ms: float,
    batch_part: bytes,
    total_ms: float,
) -> bytes:
    """One framed Envelope{request_id, infer_response}, byte for byte as protobuf writes it.

    ``head`` is :func:`infer_response_head`, ``predictions`` and ``confidence`` the
    float32 little-endian values (packed), ``batch_part`` :func:`timings_batch_part`.
    The Timings field is always present (the server always sets it).
    """
    timings = (
        _float32_field(b"\x0d", queue_wait_ms) + batch_part + _float32_field(b"\x25", total_ms)
    )
    body = head
    if predictions:
        body += b"\x1a" + encode_varint(len(predictions)) + predictions
    if confidence:
        body += b"\x22" + encode_varint(len(confidence)) + confidence
    body += b"\x2a" + encode_varint(len(timings)) + timings
    envelope = _INFER_RESPONSE_TAG + encode_varint(len(body)) + body
    if request_id:
        envelope = b"\x08" + encode_varint(request_id) + envelope
    return _LENGTH.pack(len(envelope)) + envelope
