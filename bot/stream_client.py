"""The bot's side of character streams: generated observations and one engine connection.

:class:`ObservationBank` holds a few seconds of generated motion per model (for
``motion_lstm`` 17-joint poses from :mod:`commonlib.motion`, 51 floats; for
``lstm_timeseries`` a noisy series, 1 float), so that a frame's observations for
all of a connection's characters are one numpy gather and one ``tobytes``.

:class:`StreamConnection` is one engine's TCP connection: it opens its characters'
streams (pipelined StreamOpen, one StreamOpened each), sends one packed Tick per
frame, and hands every TickResult, Error and StreamClosed to its owner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from commonlib.motion import FPS, FRAME_WIDTH, generate_motion
from commonlib.wire import pb
from factory.client_codec import stream_open_envelope, tick_envelope
from factory.client_protocol import EnvelopeClientProtocol
from factory.tick_codec import pack_ids

CLIPS = 16  # distinct generated motions; character i plays clip i % CLIPS
CLIP_FRAMES = 600  # 10 s at 60 Hz, looped
STREAM_MODELS = ("motion_lstm", "lstm_timeseries")


class StreamOpenError(Exception):
    """The server refused a StreamOpen."""


class ObservationBank:
    """Looped generated observations: ``rows(first, count, frame)`` → ``[count, D]`` float32."""

    def __init__(self, model: str, clips: int = CLIPS, frames: int = CLIP_FRAMES) -> None:
        if model == "motion_lstm":
            bank = np.stack([generate_motion(seed, frames) for seed in range(clips)])
            self.data = bank.reshape(clips, frames, FRAME_WIDTH)
        else:  # a 1-float series: a slow wave per clip plus noise
            rng = np.random.default_rng(7)
            t = np.arange(frames) / FPS
            waves = [
                np.sin(2 * np.pi * (0.2 + 0.05 * c) * t + c) + rng.normal(0, 0.05, frames)
                for c in range(clips)
            ]
            self.data = np.asarray(waves, dtype=np.float32)[:, :, None]
        self.clips, self.frames, self.width = self.data.shape

    def rows(self, first: int, count: int, frame: int) -> npt.NDArray[np.float32]:
        """Frame ``frame`` of characters ``first .. first + count - 1`` (each its own phase)."""
        chars = np.arange(first, first + count)
        return self.data[chars % self.clips, (chars * 37 + frame) % self.frames]


class StreamConnection(EnvelopeClientProtocol):
    """One engine connection: its streams, one Tick per frame, results to ``on_result``."""

    def __init__(
        self,
        index: int,
        clock: Any,
        on_result: Callable[[StreamConnection, pb.TickResult, float], None],
    ) -> None:
        super().__init__()
        self.index = index
        self.clock = clock
        self.on_result = on_result
        self.opening: dict[int, Deferred[pb.StreamOpened]] = {}
        self.errors: dict[str, int] = {}  # Tick errors by code: characters refused
        self.closed_by_server = 0  # StreamClosed pushed by the server (idle)
        self.unexpected = 0
        self.ids_bytes = b""
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        # An engine's frames must leave at once: Nagle would hold a Tick back until
        # the previous one is acknowledged (up to a delayed ACK, tens of ms).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def open_streams(
        self, model: str, first_id: int, count: int, config: dict[str, int] | None = None
    ) -> Deferred[list[pb.StreamOpened]]:
        """Open characters ``first_id ..`` (request id = character id); fires with the replies."""
        self.ids_bytes = pack_ids(np.arange(first_id, first_id + count, dtype=np.uint32))
        waits: list[Deferred[pb.StreamOpened]] = []
        for character_id in range(first_id, first_id + count):
            d: Deferred[pb.StreamOpened] = Deferred()
            self.opening[character_id] = d
            waits.append(d)
            self.send_envelope(stream_open_envelope(character_id, model, character_id, config))
        return gatherResults(waits, consumeErrors=True)

    def send_tick(
        self, model: str, frame: int, time_us: int, observations: npt.NDArray[np.float32]
    ) -> None:
        """Frame ``frame``'s Tick: every character's observation, packed."""
        tick = tick_envelope(frame, model, self.ids_bytes, observations, frame, time_us)
        self.send_envelope(tick)

    def envelope_received(self, envelope: pb.Envelope) -> None:
        kind = envelope.WhichOneof("body")
        if kind == "tick_result":
            self.on_result(self, envelope.tick_result, self.clock.seconds())
            return
        waiting = self.opening.pop(envelope.request_id, None) if self.opening else None
        if waiting is not None:
            if kind == "stream_opened":
                waiting.callback(envelope.stream_opened)
            else:
                code = pb.ErrorCode.Name(envelope.error.code).removeprefix("ERROR_CODE_")
                waiting.errback(Failure(StreamOpenError(f"{code}: {envelope.error.message}")))
        elif kind == "error":
            code = pb.ErrorCode.Name(envelope.error.code).removeprefix("ERROR_CODE_")
            refused = max(1, len(envelope.error.character_ids))
            self.errors[code] = self.errors.get(code, 0) + refused
        elif kind == "stream_closed":
            self.closed_by_server += 1
        else:
            self.unexpected += 1

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        opening, self.opening = self.opening, {}
        cause = self.lost_because(reason)
        for waiting in opening.values():
            waiting.errback(Failure(StreamOpenError(f"connection lost: {cause}")))
        if not self.lost.called:
            self.lost.callback(None)
