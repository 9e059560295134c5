"""TCP framing: a 4-byte unsigned big-endian length, then that many bytes.

:class:`FramedProtocol` splits the byte stream into frames, as Twisted's
Int32StringReceiver does, with the limit set from configuration (not Twisted's
99,999-byte default) and the frames of a read split in one call
(:func:`split_frames`, which factory.fastcodec replaces with its C twin).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from twisted.internet.protocol import Protocol

_PREFIX = struct.Struct(">I")

Splitter = Callable[[bytes, int, int, int], tuple[list[bytes], int, int]]


def frame(payload: bytes) -> bytes:
    """``payload`` with its 4-byte big-endian length prefix."""
    return _PREFIX.pack(len(payload)) + payload


def split_frames(
    data: bytes, offset: int, max_length: int, limit: int
) -> tuple[list[bytes], int, int]:
    """The complete frames of ``data[offset:]``, at most ``limit`` of them.

    Returns ``(payloads, next_offset, oversize)``: ``next_offset`` is where the first
    frame not returned starts; ``oversize`` is the declared length of the frame there
    when it exceeds ``max_length`` (known from its prefix alone, before its body has
    arrived), else -1.
    """
    frames: list[bytes] = []
    end = len(data)
    unpack = _PREFIX.unpack_from
    while len(frames) < limit and end - offset >= 4:
        (length,) = unpack(data, offset)
        if length > max_length:
            return frames, offset, length
        if length > end - offset - 4:
            break
        offset += 4
        frames.append(data[offset : offset + length])
        offset += length
    return frames, offset, -1


class FramedProtocol(Protocol):
    """Splits the byte stream into frames; ``MAX_LENGTH`` is set by the factory.

    Setting ``paused`` stops the frame loop after the frame being handled; the
    frames not handled stay in ``_unprocessed`` until the next :meth:`dataReceived`.
    """

    MAX_LENGTH = 1_048_576
    paused = False
    _unprocessed = b""
    split: Splitter = staticmethod(split_frames)

    def dataReceived(self, data: bytes) -> None:
        buffered = self._unprocessed
        data = buffered + data if buffered else data
        self._unprocessed = data
        offset = self.handle_frames(data)
        self._unprocessed = data[offset:] if offset else data

    def handle_frames(self, data: bytes) -> int:
        """Hand each complete frame of ``data`` on; the offset of the first not handled."""
        offset = 0
        while not self.paused:
            payloads, _, oversize = self.split(data, offset, self.MAX_LENGTH, 1 << 30)
            for payload in payloads:
                if self.paused:
                    return offset
                offset += 4 + len(payload)
                self.frame_received(payload)
            if oversize < 0:
                return offset  # the rest is a partial frame
            if not payloads:
                self.frame_too_large(oversize)
                return offset
        return offset

    def frame_received(self, payload: bytes) -> None:
        """One complete frame body arrived."""
        raise NotImplementedError

    def frame_too_large(self, length: int) -> None:
        """The length prefix exceeds MAX_LENGTH; the default closes the connection.

        Called before anything of the declared size is buffered or allocated.
        """
        assert self.transport is not None
        self.transport.loseConnection()

    def send_frame(self, payload: bytes) -> None:
        """Write one frame."""
        assert self.transport is not None
        self.transport.write(_PREFIX.pack(len(payload)) + payload)
