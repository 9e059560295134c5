"""TCP framing: a 4-byte unsigned big-endian length, then that many bytes.

This is Twisted's Int32StringReceiver with the limit set from configuration
(not Twisted's 99,999-byte default) and the camelCase hooks handed straight to
snake_case methods that subclasses implement.
"""

from __future__ import annotations

import struct

from twisted.protocols.basic import Int32StringReceiver

_PREFIX = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    """``payload`` with its 4-byte big-endian length prefix."""
    return _PREFIX.pack(len(payload)) + payload


class FramedProtocol(Int32StringReceiver):
    """Splits the byte stream into frames; ``MAX_LENGTH`` is set by the factory."""

    MAX_LENGTH = 1_048_576

    def stringReceived(self, string: bytes) -> None:
        self.frame_received(string)

    def lengthLimitExceeded(self, length: int) -> None:
        # Called before anything of the declared size is buffered or allocated.
        self.frame_too_large(length)

    def frame_received(self, payload: bytes) -> None:
        """One complete frame body arrived."""
        raise NotImplementedError

    def frame_too_large(self, length: int) -> None:
        """The length prefix exceeds MAX_LENGTH; the default closes the connection."""
        assert self.transport is not None
        self.transport.loseConnection()

    def send_frame(self, payload: bytes) -> None:
        """Write one frame."""
        assert self.transport is not None
        self.transport.write(_PREFIX.pack(len(payload)) + payload)
