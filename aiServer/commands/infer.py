"""InferRequest → aiFacade.infer → InferResponse (TCP) and UDP broadcast."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from aiServer.commands.registry import CommandContext, CommandHandler, commands
from aiServer.facade import InferenceResult
from aiServer.session import Session
from commonlib.models.base import ConfigScalar, FloatArray
from commonlib.stats import LATENCY_BUCKETS_S, BucketHistogram
from commonlib.wire import pb
from factory import fastcodec
from factory.codec import decode_envelope, infer_response_head, timings_batch_part
from factory.fastcodec import ParsedInfer
from util.errors import ErrorCode, InvalidInput, ServiceError, new_error_id

log = Logger()


def config_from_wire(entries: Mapping[str, pb.ConfigValue]) -> dict[str, ConfigScalar]:
    """The request's typed config map as Python scalars."""
    out: dict[str, ConfigScalar] = {}
    for key in entries:  # keys, then lookups: .items() goes through a slow Python view
        value = entries[key]
        kind = value.WhichOneof("kind")
        if kind is None:
            raise InvalidInput(f"config '{key}' has no value set")
        out[key] = getattr(value, kind)
    return out


def check_shape(values_count: int, shape: list[int]) -> None:
    """Series models take a 1-D tensor: shape [] or [n] (or [n, 1]) with n values."""
    if not shape:
        return
    if shape[0] != values_count or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(
            f"input shape {list(shape)} does not fit {values_count} values; "
            f"send [] or [{values_count}]"
        )


def tensor_values(tensor: pb.Tensor) -> Sequence[float] | FloatArray:
    """The tensor's values: the repeated field, or ``raw_values`` read as float32 LE."""
    raw = tensor.raw_values
    if not raw:
        return tensor.values
    if len(tensor.values):
        raise InvalidInput("input sets both values and raw_values; send one of them")
    if len(raw) % 4:
        raise InvalidInput(
            f"input raw_values has {len(raw)} bytes, not a multiple of 4 (float32 each)"
        )
    return np.frombuffer(raw, dtype="<f4")


@dataclass(slots=True)
class _ModelReplies:
    """Per-model facts the reply path needs, looked up once per request."""

    name: str
    version: str
    latency: BucketHistogram
    head: bytes = b""  # InferResponse model and version, encoded
    ok: int = 0


_Token = tuple[int, str, Session, float]  # request id, model, session, arrival
_FLOAT32 = np.dtype("<f4")
_NO_CONFIG: dict[str, ConfigScalar] = {}
_CONFIG_CACHE_SIZE = 4096


def float32_bytes(values: FloatArray) -> bytes:
    """``values`` as packed little-endian float32 (converted, rounding, if another type)."""
    if values.dtype != _FLOAT32:
        values = values.astype(_FLOAT32)
    return values.tobytes()


@commands.register("infer_request")
class InferHandler(CommandHandler):
    """Runs one inference request through the batcher and replies with its result.

    The requests in flight on a connection have distinct ids (a reused id is
    INVALID_INPUT); their number is limited before decoding, by the session's gate
    (aiServer.session.Session.admit).
    """

    def __init__(self, context: CommandContext) -> None:
        super().__init__(context)
        self.log_requests = context.log_requests
        self.request_log_level = LogLevel.info if context.access_log else LogLevel.debug
        self._models = {
            name: _ModelReplies(
                name,
                self.facade.version_of(name),
                BucketHistogram(LATENCY_BUCKETS_S),
                infer_response_head(name, self.facade.version_of(name)),
            )
            for name in self.facade.model_names()
        }
        self._errors: Counter[tuple[str, str]] = Counter()
        self._infer_to = self.facade.infer_to
        self._configs: dict[bytes, dict[str, ConfigScalar]] = {}
        self._seconds = self.clock.seconds

    @property
    def latency(self) -> dict[str, BucketHistogram]:
        """Per-model latency histograms, read by the metrics collector at scrape time."""
        return {name: model.latency for name, model in self._models.items()}

    @property
    def outcomes(self) -> Counter[tuple[str, str]]:
        """Requests answered, by (model or "other", "ok" or error code name)."""
        out = Counter(self._errors)
        for name, model in self._models.items():
            if model.ok:
                out[(name, "ok")] = model.ok
        return out

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Validate and queue; the reply goes out with its batch's (:meth:`batch_done`)."""
        request_id = envelope.request_id
        request = envelope.infer_request
        model = request.model
        inflight = session.inflight
        try:
            if request_id in inflight:
                raise InvalidInput(
                    f"request_id {request_id} is already in flight on this connection"
                )
            tensor = request.input
            values = tensor_values(tensor)
            if tensor.shape:
                check_shape(len(values), list(tensor.shape))
            config = request.config
            self._submit(
                request_id,
                model,
                request.version,
                values,
                config_from_wire(config) if config else {},
                session,
            )
        except ServiceError as exc:
            self._errors[(model if model in self._models else "other", exc.code.name)] += 1
            raise

    def handle_parsed(self, packet: tuple[ParsedInfer, bytes], session: Session) -> None:
        """:meth:`handle` for a request the C fast path read (factory.fastcodec).

        The same checks in the same order; each distinct config's wire bytes are
        converted once and cached (``_CONFIG_CACHE_SIZE`` of them).
        """
        (request_id, model, version, values, shape, raw_config), payload = packet
        inflight = session.inflight
        try:
            if request_id in inflight:
                raise InvalidInput(
                    f"request_id {request_id} is already in flight on this connection"
                )
            array = np.frombuffer(values, dtype=_FLOAT32)
            if shape:
                check_shape(len(array), list(shape))
            config = self._configs.get(raw_config) if raw_config else _NO_CONFIG
            if config is None:
                config = config_from_wire(decode_envelope(payload).infer_request.config)
                if len(self._configs) < _CONFIG_CACHE_SIZE:
                    self._configs[raw_config] = config
            self._submit(request_id, model, version, array, config, session)
        except ServiceError as exc:
            self._errors[(model if model in self._models else "other", exc.code.name)] += 1
            raise

    def _submit(
        self,
        request_id: int,
        model: str,
        version: str,
        values: Sequence[float] | FloatArray,
        config: Mapping[str, ConfigScalar],
        session: Session,
    ) -> None:
        inflight = session.inflight
        # In flight before it is queued: its batch may finish within the call (a runner
        # that runs batches inline), and the reply then takes it out again.
        inflight.add(request_id)
        try:
            self._infer_to(
                model, version, values, config, self, (request_id, model, session, self._seconds())
            )
        except ServiceError:
            inflight.discard(request_id)
            raise

    def batch_done(self, outcomes: list[tuple[object, InferenceResult | Failure]]) -> None:
        """Answer a batch's requests: each connection's replies in one write."""
        now = self._seconds()
        writes: dict[Session, list[bytes]] = {}
        batch_part = b""
        batch_of: tuple[int, float] | None = None
        models = self._models
        for token, outcome in outcomes:
            request_id, name, session, arrived = cast(_Token, token)
            session.inflight.discard(request_id)
            if isinstance(outcome, Failure):
                self._flush(session, writes.pop(session, None))  # replies keep their order
                self._fail(outcome, request_id, session, name)
                continue
            model = models[name]
            if batch_of != (outcome.batch_size, outcome.inference_s):
                batch_of = (outcome.batch_size, outcome.inference_s)
                batch_part = timings_batch_part(outcome.batch_size, outcome.inference_s * 1000.0)
            try:
                frame = self._encode(outcome, request_id, model, now - arrived, batch_part)
            except Exception:
                # The client is answered even if encoding fails.
                self._flush(session, writes.pop(session, None))
                self._fail(Failure(), request_id, session, name)
                continue
            frames = writes.get(session)
            if frames is None:
                writes[session] = [frame]
            else:
                frames.append(frame)
        for session, frames in writes.items():
            self._flush(session, frames)

    @staticmethod
    def _flush(session: Session, frames: list[bytes] | None) -> None:
        if frames:
            session.send_frames(frames[0] if len(frames) == 1 else b"".join(frames))

    def _encode(
        self,
        result: InferenceResult,
        request_id: int,
        model: _ModelReplies,
        total_s: float,
        batch_part: bytes,
    ) -> bytes:
        output = result.output
        confidence = output.confidence
        frame = fastcodec.encode_infer_reply(
            request_id,
            model.head,
            float32_bytes(output.predictions),
            None if confidence is None else float32_bytes(confidence),
            result.queue_wait_s * 1000.0,
            batch_part,
            total_s * 1000.0,
        )
        model.latency.observe(total_s)
        model.ok += 1
        if self.log_requests:
            log.emit(
                self.request_log_level,
                "request {request_id} model {model} batch {batch_size} "
                "queue {queue_wait_ms:.3f} ms inference {inference_ms:.3f} ms "
                "total {total_ms:.3f} ms",
                request_id=request_id,
                model=model.name,
                batch_size=result.batch_size,
                queue_wait_ms=result.queue_wait_s * 1000.0,
                inference_ms=result.inference_s * 1000.0,
                total_ms=total_s * 1000.0,
            )
        if self.facade.broadcasting(model.name):
            reply = pb.Envelope.FromString(frame[4:])
            self.facade.broadcast(request_id, reply.infer_response)
        return frame

    def _fail(self, failure: Failure, request_id: int, session: Session, model: str = "") -> None:
        session.inflight.discard(request_id)
        error = failure.value
        code = error.code.name if isinstance(error, ServiceError) else ErrorCode.INTERNAL.name
        self._errors[(model if model in self._models else "other", code)] += 1
        if isinstance(error, ServiceError):
            session.send_error(request_id, error.code, error.message)
            return
        error_id = new_error_id()
        log.failure(
            "inference failed for request {request_id} (error id {error_id})",
            failure,
            request_id=request_id,
            error_id=error_id,
        )
        session.send_error(
            request_id,
            ErrorCode.INTERNAL,
            f"inference failed (error id {error_id}; the server log has the details)",
        )
