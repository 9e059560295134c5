"""InferRequest → aiFacade.infer → InferResponse (TCP) and UDP broadcast."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from aiServer.commands.registry import CommandContext, CommandHandler, commands
from aiServer.facade import InferenceResult, Lane
from aiServer.model_versions import ServedVersion
from aiServer.session import Session
from commonlib.models.base import ConfigScalar, FloatArray, PreparedInput
from commonlib.stats import LATENCY_BUCKETS_S, BucketHistogram
from commonlib.wire import pb
from factory import fastcodec
from factory.codec import (
    decode_envelope,
    encode_envelope,
    infer_response_head,
    timings_batch_part,
)
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


def cache_bypassed(mode: int) -> bool:
    """Whether InferRequest.cache asks to bypass the result cache; INVALID_INPUT if unknown."""
    if mode == pb.CACHE_MODE_USE:
        return False
    if mode == pb.CACHE_MODE_BYPASS:
        return True
    raise InvalidInput(f"cache = {mode} is not a cache mode (0 = USE, 1 = BYPASS)")


@dataclass(slots=True)
class _ModelReplies:
    """Per-model facts the reply path needs, looked up once per request."""

    name: str
    latency: BucketHistogram
    heads: dict[str, bytes] = field(default_factory=dict)  # version -> InferResponse head
    ok: int = 0
    latencies: list[float] = field(default_factory=list)  # of the batch being answered

    def observe(self) -> None:
        """Count the latencies of the batch just answered in the histogram."""
        if self.latencies:
            self.latency.observe_many(self.latencies)
            self.latencies.clear()

    def head(self, version: str) -> bytes:
        """InferResponse fields model and version, encoded once per version."""
        head = self.heads.get(version)
        if head is None:
            head = self.heads[version] = infer_response_head(self.name, version)
        return head


_Token = tuple[int, str, Session, float]  # request id, model, session, arrival
_Routed = tuple[_Token, ServedVersion]  # what the facade hands the sink: and the version
_FLOAT32 = np.dtype("<f4")
_NO_CONFIG: dict[str, ConfigScalar] = {}
_CONFIG_CACHE_SIZE = 4096


def float32_bytes(values: FloatArray) -> bytes:
    """``values`` as packed little-endian float32 (converted, rounding, if another type)."""
    dtype = values.dtype
    if dtype is not _FLOAT32 and dtype != _FLOAT32:  # identity first: the usual case
        values = values.astype(_FLOAT32)
    return values.tobytes()


def computed_reply(
    request_id: int, head: bytes, result: InferenceResult, batch_part: bytes, total_s: float
) -> bytes:
    """The framed InferResponse of a result the model computed (factory.fastcodec's encoder).

    ``head`` is the encoded model and version, ``batch_part`` the Timings' batch fields.
    """
    output = result.output
    confidence = output.confidence
    return fastcodec.encode_infer_reply(
        request_id,
        head,
        float32_bytes(output.predictions),
        None if confidence is None else float32_bytes(confidence),
        result.queue_wait_s * 1000.0,
        batch_part,
        total_s * 1000.0,
    )


def cached_reply(
    request_id: int, model: str, version: str, result: InferenceResult, total_s: float
) -> pb.Envelope:
    """The InferResponse of a result-cache hit (Timings: only total_ms and cache_hit)."""
    reply = pb.Envelope(request_id=request_id)
    response = reply.infer_response
    response.model = model
    response.version = version
    output = result.output
    response.predictions.extend(output.predictions.tolist())
    if output.confidence is not None:
        response.confidence.extend(output.confidence.tolist())
    response.timings.total_ms = total_s * 1000.0
    response.timings.cache_hit = True
    return reply


@commands.register("infer_request")
class InferHandler(CommandHandler):
    """Runs one inference request through the batcher and replies with its result.

    The requests in flight on a connection have distinct ids (a reused id is
    INVALID_INPUT); their number is limited before decoding, by the session's gate
    (aiServer.session.Session.refusal).
    """

    def __init__(self, context: CommandContext) -> None:
        super().__init__(context)
        self.log_requests = context.log_requests
        self.request_log_level = LogLevel.info if context.access_log else LogLevel.debug
        self._models = {
            name: _ModelReplies(name, BucketHistogram(LATENCY_BUCKETS_S))
            for name in self.facade.model_names()
        }
        self._errors: Counter[tuple[str, str]] = Counter()
        self._infer_to = self.facade.infer_to
        self._caches = self.facade.caches
        self._configs: dict[bytes, dict[str, ConfigScalar]] = {}
        self._lanes: dict[tuple[str, str, bytes], Lane] = {}
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
                cache_bypassed(request.cache),
            )
        except ServiceError as exc:
            self._errors[(model if model in self._models else "other", exc.code.name)] += 1
            raise

    def handle_parsed(self, packet: tuple[ParsedInfer, bytes], session: Session) -> None:
        """:meth:`handle` for a request the C fast path read (factory.fastcodec).

        The same checks in the same order. A request whose (model, version, config
        bytes) was seen before takes that triple's :class:`aiServer.facade.Lane`:
        routed, resolved and validated once, it only has its length checked here;
        anything else (and any error) takes :meth:`_handle_parsed`.
        """
        (request_id, model, version, values, shape, raw_config), _payload = packet
        lane = self._lanes.get((model, version, raw_config))
        inflight = session.inflight
        count = len(values) >> 2  # parse_infer only takes whole float32s
        if (
            lane is None
            or (shape and shape != (count,) and shape != (count, 1))
            or request_id in inflight
            or not lane.min_length <= count <= lane.max_length
            or lane.served.epoch != lane.epoch  # routing changed: Lane.current, inlined
        ):
            self._handle_parsed(packet, session)
            return
        route = lane.route
        inflight.add(request_id)
        route.pending[route.version] += 1
        now = self._seconds()
        try:
            item = PreparedInput(
                np.frombuffer(values, dtype=_FLOAT32), lane.config, lane.batch_key, route.version
            )
            lane.submit_to(
                lane.queue_key,
                item,
                self,
                ((request_id, model, session, now), route),
                now,
            )
        except ServiceError as exc:  # BUSY: the model's queue is full
            inflight.discard(request_id)
            route.settled(False)
            self._errors[(model, exc.code.name)] += 1
            raise

    def _handle_parsed(self, packet: tuple[ParsedInfer, bytes], session: Session) -> None:
        """:meth:`handle_parsed` for a request outside the lanes; opens its lane.

        Each distinct config's wire bytes are converted once and cached
        (``_CONFIG_CACHE_SIZE`` of them, and as many lanes).
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
        lanes = self._lanes
        key = (model, version, raw_config)
        lane = lanes.get(key)
        if (lane is None or not lane.current) and len(lanes) < _CONFIG_CACHE_SIZE:
            # Accepted, so its model, version and config are valid: this cannot raise.
            new_lane = self.facade.lane(model, version, config)
            if new_lane is not None:
                lanes[key] = new_lane

    def _submit(
        self,
        request_id: int,
        model: str,
        version: str,
        values: Sequence[float] | FloatArray,
        config: Mapping[str, ConfigScalar],
        session: Session,
        bypass_cache: bool = False,
    ) -> None:
        inflight = session.inflight
        # In flight before it is queued: its batch may finish within the call (a runner
        # that runs batches inline), and the reply then takes it out again.
        inflight.add(request_id)
        token = (request_id, model, session, self._seconds())
        sticky = session.connection_id  # A/B splits are sticky per connection
        try:
            if self._caches(model):
                # Through the result cache: a hit answers at once, without a batch.
                route, d = self.facade.submit(model, version, values, config, sticky, bypass_cache)
                d.addBoth(self._one_done, (token, route))
            else:
                self._infer_to(model, version, values, config, self, token, sticky)
        except ServiceError:
            inflight.discard(request_id)
            raise

    def _one_done(self, outcome: InferenceResult | Failure, routed: _Routed) -> None:
        """A request that went through the result cache: answered like a batch of one."""
        self.batch_done([(routed, outcome)])

    def batch_done(self, outcomes: list[tuple[object, InferenceResult | Failure]]) -> None:
        """Answer a batch's requests: each connection's replies in one write.

        What is the same for the whole batch (the Timings' batch part, the reply head
        of the version, whether the model is broadcast or logged) is worked out when it
        changes from one outcome to the next, not per reply.
        """
        now = self._seconds()
        writes: dict[Session, list[bytes]] = {}
        models = self._models
        # Requests settled and answered of each run of outcomes of one version (a batch
        # is one version's): counted in ints, handed to the version once per run.
        counted: ServedVersion | None = None
        settled = answered = 0
        batch_part = b""
        batch_size, inference_s = -1, -1.0
        name, model, plain = "", None, False
        route, head = None, b""
        # One cast per batch, not per reply (a function call each): the tokens are _Routed.
        for routed, outcome in cast(list[tuple[_Routed, InferenceResult | Failure]], outcomes):
            (request_id, model_name, session, arrived), request_route = routed
            session.inflight.discard(request_id)
            if request_route is not counted:
                if counted is not None:
                    counted.settle_many(settled, answered)
                counted, settled, answered = request_route, 0, 0
            settled += 1
            if isinstance(outcome, Failure):
                self._flush(session, writes.pop(session, None))  # replies keep their order
                self._fail(outcome, request_id, session, model_name)
                continue
            answered += 1
            if model_name != name or model is None:
                name, model = model_name, models[model_name]
                plain = not self.log_requests and not self.facade.broadcasting(name)
            if request_route is not route:
                route, head = request_route, model.head(request_route.version)
            if outcome.inference_s != inference_s or outcome.batch_size != batch_size:
                batch_size, inference_s = outcome.batch_size, outcome.inference_s
                batch_part = timings_batch_part(batch_size, inference_s * 1000.0)
            total_s = now - arrived
            try:
                if plain and not outcome.cache_hit:
                    frame = computed_reply(request_id, head, outcome, batch_part, total_s)
                    model.latencies.append(total_s)
                    model.ok += 1
                else:
                    frame = self._encode(
                        outcome, request_id, model, route.version, total_s, batch_part
                    )
            except Exception:
                # The client is answered even if encoding fails.
                self._flush(session, writes.pop(session, None))
                self._fail(Failure(), request_id, session, model_name)
                continue
            frames = writes.get(session)
            if frames is None:
                writes[session] = [frame]
            else:
                frames.append(frame)
        if counted is not None:
            counted.settle_many(settled, answered)
        for replies in models.values():
            replies.observe()
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
        version: str,
        total_s: float,
        batch_part: bytes,
    ) -> bytes:
        if result.cache_hit:
            frame = encode_envelope(cached_reply(request_id, model.name, version, result, total_s))
        else:
            frame = computed_reply(request_id, model.head(version), result, batch_part, total_s)
        model.latencies.append(total_s)
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
