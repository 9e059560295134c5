"""aiFacade: the one entry point handlers use for models, batching and broadcast."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from aiServer.startup import StartupError
from aiServer.stream_replies import StreamReplies
from commonlib.admission import AdmissionBoard
from commonlib.batcher import (
    BatchedResult,
    BatchPolicy,
    BatchRunner,
    BatchSink,
    DynamicBatcher,
    QueueStatus,
)
from commonlib.json_floats import float32_list
from commonlib.models.base import (
    BaseModel,
    ConfigScalar,
    FloatArray,
    ModelOutput,
    ModelSpec,
    PreparedInput,
    SettingsError,
)
from commonlib.models.loader import CacheInfo, ModelLoader
from commonlib.models.registry import ModelFactory
from commonlib.streams import StreamEngine, StreamLimits, StreamOwner
from commonlib.wire import pb
from netlib.udp_broadcast import (
    Encoding,
    InvalidTarget,
    TargetLimitReached,
    TargetTaken,
    UdpBroadcaster,
    UdpTarget,
)
from util.config import (
    BatchingConfig,
    ConfigError,
    InferenceConfig,
    merged_batching,
    validation_error,
)
from util.errors import ErrorCode, InvalidInput, ServiceError, UnknownModel

InferenceResult = BatchedResult[ModelOutput]


@dataclass(frozen=True)
class ModelDescription:
    """What ListModels and /models report for one model."""

    name: str
    version: str
    description: str
    loaded: bool
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]


def batch_policy(defaults: BatchingConfig, override: Mapping[str, Any]) -> BatchPolicy:
    """The effective policy: per-model overrides on top of the defaults."""
    merged = merged_batching(defaults, override)
    return BatchPolicy(
        max_batch_size=merged["max_batch_size"],
        max_wait_s=merged["max_wait_ms"] / 1000.0,
        eager_when_idle=merged["eager_when_idle"],
        max_inflight_batches=merged["max_inflight_batches"],
        max_queue=merged["max_queue"],
        queue_timeout_s=merged["queue_timeout_ms"] / 1000.0,
        max_queue_delay_s=merged["max_queue_delay_ms"] / 1000.0,
    )


def model_specs(config: InferenceConfig, factory: ModelFactory) -> dict[str, ModelSpec]:
    """The enabled models with their validated settings; ConfigError naming the bad key."""
    specs: dict[str, ModelSpec] = {}
    for name, model_config in config.models.items():
        if not model_config.enabled:
            continue
        if name not in factory:
            known = ", ".join(factory.names())
            raise ConfigError(f"no such model is registered ({known})", f"inference.models.{name}")
        cls = factory.get(name)
        try:
            settings = cls.parse_settings(model_config.settings)
        except pydantic.ValidationError as exc:
            raise validation_error(exc, prefix=f"inference.models.{name}.settings.") from None
        specs[name] = ModelSpec(cls, settings)
    return specs


class AIFacade:
    """Owns the enabled models, their loader and batchers, and the UDP broadcaster."""

    def __init__(
        self,
        config: InferenceConfig,
        factory: ModelFactory,
        runner: BatchRunner,
        clock: IReactorTime,
        broadcaster: UdpBroadcaster | None = None,
        device: str = "cpu",
        streams: StreamLimits | None = None,
    ) -> None:
        self.broadcaster = broadcaster
        self.device = device
        self.runner = runner
        specs = model_specs(config, factory)
        self.loader = ModelLoader(specs, config.max_loaded_models, device)
        # Unloaded instances: validation and batch keys need no weights.
        self._validators: dict[str, BaseModel] = {
            name: spec.cls(spec.settings, device) for name, spec in specs.items()
        }
        self.admission = AdmissionBoard(clock)
        self._batchers: dict[str, DynamicBatcher[PreparedInput, ModelOutput]] = {}
        for name in specs:
            policy = batch_policy(config.batching, config.models[name].batching.model_dump())
            self._batchers[name] = DynamicBatcher(
                name,
                self._batch_function(name),
                runner,
                clock,
                policy,
                # Off (0): no admission at all, so it costs the hot path nothing.
                self.admission.model(name, policy.max_queue_delay_s)
                if policy.max_queue_delay_s
                else None,
            )
        self._routes = {name: (v, self._batchers[name]) for name, v in self._validators.items()}
        # Character streams step on the same runner (worker threads) as the batches.
        self.stream_replies = StreamReplies(broadcaster)
        self.streams = StreamEngine(
            self._validators,
            self.loader.get,
            runner,
            clock,
            self.stream_replies,
            streams,
            device,
        )

    def _batch_function(
        self, name: str
    ) -> Callable[[Sequence[PreparedInput]], Sequence[ModelOutput | InvalidInput]]:
        loader = self.loader

        def run(batch: Sequence[PreparedInput]) -> Sequence[ModelOutput | InvalidInput]:
            # Worker thread: a miss (first use, or evicted) loads the model here.
            return loader.get(name).run_batch(batch)

        return run

    # -- inference ---------------------------------------------------------------
    def model_names(self) -> list[str]:
        """Names of the enabled models."""
        return sorted(self._validators)

    def version_of(self, model: str) -> str:
        """The served version of an enabled model."""
        return self._validators[model].version

    def infer(
        self,
        model: str,
        version: str,
        values: Sequence[float] | FloatArray,
        config: Mapping[str, ConfigScalar],
    ) -> Deferred[InferenceResult]:
        """Validate and queue one request; the Deferred fires with its result.

        Raises ServiceError (UNKNOWN_MODEL, INVALID_INPUT, BUSY) synchronously, so
        bad requests cost no Deferred.
        """
        batcher, prepared = self._prepare(model, version, values, config)
        return batcher.submit(prepared.batch_key, prepared)

    def infer_to(
        self,
        model: str,
        version: str,
        values: Sequence[float] | FloatArray,
        config: Mapping[str, ConfigScalar],
        sink: BatchSink[ModelOutput],
        token: object,
    ) -> None:
        """Like :meth:`infer`, without a Deferred: ``sink`` gets (``token``, outcome)
        together with the other outcomes of the batch the request runs in."""
        batcher, prepared = self._prepare(model, version, values, config)
        batcher.submit_to(prepared.batch_key, prepared, sink, token)

    def _prepare(
        self,
        model: str,
        version: str,
        values: Sequence[float] | FloatArray,
        config: Mapping[str, ConfigScalar],
    ) -> tuple[DynamicBatcher[PreparedInput, ModelOutput], PreparedInput]:
        """The model's batcher and the validated request; ServiceError if it is refused."""
        route = self._routes.get(model)
        if route is None:
            raise UnknownModel(
                f"no model named '{model}'; available: {', '.join(self.model_names())}"
            )
        validator, batcher = route
        if version and version != validator.version:
            raise UnknownModel(
                f"model '{model}' has no version '{version}' (serving {validator.version})"
            )
        return batcher, validator.prepare(values, config)

    WARMUP_ROUNDS = 3

    def warm_up(self) -> Deferred[None]:
        """Load every enabled model, then run warm-up batches through each.

        The first round loads the models (in parallel when there are several worker
        threads); each round then runs a single request and a full batch per model,
        because frameworks such as torch are still slow on their first few calls.
        """
        d: Deferred[Any] = self._warm_round(batch=1)
        for _ in range(self.WARMUP_ROUNDS):
            d.addCallback(lambda _: self._warm_round(batch=1))
            d.addCallback(lambda _: self._warm_round(batch=0))
        d.addCallback(lambda _: self.streams.warm_up())
        return d.addCallback(lambda _: None)

    def warmup_requests(self) -> list[tuple[str, FloatArray, dict[str, ConfigScalar]]]:
        """(model, input, config) of a valid request for each enabled model."""
        return [(name, *v.warmup_request()) for name, v in sorted(self._validators.items())]

    def _warm_round(self, batch: int) -> Deferred[list[InferenceResult]]:
        """One request per model (``batch`` 1) or a full batch of each (``batch`` 0)."""
        runs: list[Deferred[InferenceResult]] = []
        for name, validator in self._validators.items():
            values, config = validator.warmup_request()
            size = batch or self._batchers[name].policy.max_batch_size
            for _ in range(size):
                try:
                    run = self.infer(name, "", values, config)
                except ServiceError as exc:
                    raise StartupError(
                        f"inference.models.{name}", f"its warm-up request was refused: {exc}"
                    ) from None
                runs.append(run.addErrback(_name_setting, name))
        return gatherResults(runs, consumeErrors=True)

    # -- introspection -------------------------------------------------------------
    def describe_models(self) -> list[ModelDescription]:
        """Every enabled model with its version, description, schemas and load state."""
        return [
            ModelDescription(
                name=name,
                version=v.version,
                description=v.description,
                loaded=self.loader.is_loaded(name),
                input_schema=v.describe_input(),
                output_schema=v.describe_output(),
            )
            for name, v in sorted(self._validators.items())
        ]

    def get_queue_status(self) -> list[QueueStatus]:
        """Queue depth, batches run and mean batch size, per model."""
        return [b.status() for _, b in sorted(self._batchers.items())]

    def batchers(self) -> list[tuple[str, DynamicBatcher[PreparedInput, ModelOutput]]]:
        """Each enabled model's batcher, by name (for metrics)."""
        return sorted(self._batchers.items())

    def get_cache_info(self) -> CacheInfo:
        """The model loader's cache: loaded, hits, misses, evictions."""
        return self.loader.cache_info()

    # -- broadcast -----------------------------------------------------------------
    def broadcasting(self, model: str) -> bool:
        """True when some UDP target wants ``model``'s results now."""
        broadcaster = self.broadcaster
        return broadcaster is not None and broadcaster.has_targets and broadcaster.wants(model)

    def broadcast(self, request_id: int, response: pb.InferResponse) -> None:
        """Send one result to the UDP targets that want its model."""
        broadcaster = self.broadcaster
        if broadcaster is None or not self.broadcasting(response.model):
            return

        def as_protobuf() -> bytes:
            return pb.BroadcastResult(request_id=request_id, result=response).SerializeToString()

        def as_json() -> dict[str, Any]:
            return result_json(request_id, response)

        broadcaster.publish(response.model, as_protobuf, as_json)

    def subscribe(
        self, host: str, port: int, encoding: Encoding, models: frozenset[str], owner: object
    ) -> UdpTarget:
        """Add (or renew) ``owner``'s UDP target; errors are ServiceErrors for the client.

        ``host`` must already be allowed for the client (aiServer.udp_policy).
        """
        if self.broadcaster is None:
            raise ServiceError(ErrorCode.UNAVAILABLE, "UDP broadcast is disabled (udp.enabled)")
        unknown = sorted(models - set(self._validators))
        if unknown:
            raise UnknownModel(f"cannot subscribe to unknown model(s): {', '.join(unknown)}")
        try:
            return self.broadcaster.add_target(host, port, encoding, models, owner=owner)
        except InvalidTarget as exc:
            raise ServiceError(ErrorCode.INVALID_INPUT, str(exc)) from None
        except TargetTaken as exc:
            raise ServiceError(ErrorCode.PERMISSION_DENIED, str(exc)) from None
        except TargetLimitReached as exc:
            raise ServiceError(ErrorCode.BUSY, str(exc)) from None

    def unsubscribe(self, host: str, port: int, owner: object) -> bool:
        """Remove ``owner``'s UDP target; False when it holds none at host:port."""
        if self.broadcaster is None:
            return False
        try:
            return self.broadcaster.remove_target(host, port, owner)
        except InvalidTarget as exc:
            raise ServiceError(ErrorCode.INVALID_INPUT, str(exc)) from None

    def drop_subscriptions(self, owner: object) -> None:
        """Forget the UDP targets a closed connection added."""
        if self.broadcaster is not None:
            self.broadcaster.remove_owned_by(owner)

    def drop_streams(self, owner: StreamOwner) -> None:
        """Free the character streams of a closed connection at once."""
        self.streams.drop_owner(owner)


def _name_setting(failure: Failure, model: str) -> Failure:
    """A model's SettingsError (raised by its load) as a StartupError naming the config key."""
    error = failure.value
    if isinstance(error, SettingsError):
        key = f"inference.models.{model}.settings.{error.setting}"
        return Failure(StartupError(key, str(error)))
    return failure


def result_json(request_id: int, response: pb.InferResponse) -> dict[str, Any]:
    """The JSON form of one result, as sent to JSON UDP targets.

    Predictions and confidences keep their float32 values exactly (commonlib.json_floats).
    """
    timings = response.timings
    out: dict[str, Any] = {
        "request_id": request_id,
        "model": response.model,
        "version": response.version,
        "predictions": float32_list(response.predictions),
        "timings": {
            "queue_wait_ms": round(timings.queue_wait_ms, 3),
            "batch_size": timings.batch_size,
            "inference_ms": round(timings.inference_ms, 3),
            "total_ms": round(timings.total_ms, 3),
        },
    }
    if response.confidence:
        out["confidence"] = float32_list(response.confidence)
    return out


def describe_json(description: ModelDescription) -> tuple[str, str]:
    """The input and output schemas as JSON text, for ModelInfo."""
    return json.dumps(description.input_schema), json.dumps(description.output_schema)
