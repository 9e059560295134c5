"""Error codes and the exception that carries one to the client.

The numeric values are the wire values of ``inferenceserver.v1.ErrorCode`` in
``proto/inference.proto``; ``tests/test_errors.py`` keeps the two in step.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from enum import IntEnum


class ErrorCode(IntEnum):
    """Documented error codes sent to clients (see docs/protocol.md)."""

    UNSPECIFIED = 0
    UNKNOWN_COMMAND = 1
    UNKNOWN_MODEL = 2
    INVALID_INPUT = 3
    FRAME_TOO_LARGE = 4
    BAD_PACKET = 5
    BUSY = 6
    INTERNAL = 7
    DEADLINE_EXCEEDED = 8
    UNAUTHENTICATED = 9
    UNAVAILABLE = 10
    UNKNOWN_STREAM = 11
    STREAM_EXISTS = 12
    TOO_MANY_STREAMS = 13
    STREAMS_UNSUPPORTED = 14
    PERMISSION_DENIED = 15
    VERSION_REFUSED = 16


class ServiceError(Exception):
    """A failure that is answered to the client as an Error packet."""

    character_ids: Sequence[int] = ()
    """The characters the error concerns (Error.character_ids); empty for most errors."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidInput(ServiceError):
    """The request's input or config does not match the model's schema."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_INPUT, message)


class UnknownModel(ServiceError):
    """No enabled model (or version) has that name."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNKNOWN_MODEL, message)


def new_error_id() -> str:
    """A short random id that ties an INTERNAL error sent to a client to its log line.

    The client gets the id, never the exception's text (which may hold internals).
    """
    return secrets.token_hex(6)


class StreamError(ServiceError):
    """A character-stream error about some characters (sent with Error.character_ids)."""

    def __init__(self, code: ErrorCode, message: str, character_ids: Sequence[int] = ()) -> None:
        super().__init__(code, message)
        self.character_ids = [int(c) for c in character_ids]
