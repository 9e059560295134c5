"""The packet codec: Envelope bytes ↔ messages, and Error packets.

Handlers import this module; it imports nothing from the application.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from commonlib.wire import pb
from netlib.framing import frame
from util.errors import ErrorCode

Envelope = pb.Envelope


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


def error_envelope(request_id: int, code: ErrorCode, message: str) -> pb.Envelope:
    """An Envelope carrying an Error for ``request_id``."""
    envelope = Envelope(request_id=request_id)
    error = envelope.error
    error.code = int(code)  # type: ignore[assignment]
    error.message = message
    return envelope
