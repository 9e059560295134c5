"""A Twisted client connection that speaks Envelopes through factory.client_codec."""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from commonlib.wire import pb
from factory.client_codec import (
    MAX_FRAME_BYTES,
    EnvelopeDecoder,
    FrameError,
    frame_envelope,
    frame_payload,
)


class EnvelopeClientProtocol(Protocol):
    """Decodes received bytes into Envelopes for :meth:`envelope_received`; sends frames.

    A bad frame from the server (too long, or not an Envelope) goes to
    :meth:`bad_frame`, which by default keeps the error in ``frame_error`` and aborts
    the connection: what follows it cannot be trusted.
    """

    max_frame_bytes = MAX_FRAME_BYTES

    def __init__(self) -> None:
        self.decoder = EnvelopeDecoder(self.max_frame_bytes)
        self.frame_error: FrameError | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.frame_error is not None:
            return  # aborted: the bytes still arriving are not read
        try:
            for envelope in self.decoder.feed(data):
                self.envelope_received(envelope)
        except FrameError as error:
            self.bad_frame(error)

    def envelope_received(self, envelope: pb.Envelope) -> None:
        """One whole Envelope arrived."""
        raise NotImplementedError

    def bad_frame(self, error: FrameError) -> None:
        """The server sent a frame the client cannot take: keep the reason, abort."""
        self.frame_error = error
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def lost_because(self, reason: Failure) -> str:
        """Why the connection ended: the bad frame that aborted it, else ``reason``."""
        if self.frame_error is not None:
            return f"bad frame from the server: {self.frame_error}"
        return str(reason.value)

    def send_envelope(self, envelope: pb.Envelope) -> None:
        """Write one framed Envelope."""
        assert self.transport is not None
        self.transport.write(frame_envelope(envelope))

    def send_payload(self, payload: bytes) -> None:
        """Write one already serialized Envelope, framed."""
        assert self.transport is not None
        self.transport.write(frame_payload(payload))
