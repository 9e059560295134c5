"""aiFacade: the one entry point handlers use for models, batching and broadcast."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pydantic
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from aiServer.model_versions import (
    ServedModel,
    ServedVersion,
    VersionManager,
    loader_key,
    sticky_key,
)
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
from commonlib.models.repository import VersionRefused, has_repository, version_sort_key
from commonlib.result_cache import ResultCache
from commonlib.streams import OpenedStream, StreamEngine, StreamLimits, StreamOwner
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
    resolve_path,
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
    default: bool = True
    traffic: int = 0


@dataclass(frozen=True, slots=True)
class Lane:
    """Where the requests of one model, version named and config go (:meth:`AIFacade.lane`).

    Valid while the model's routing stays as it was (``current``): the version that
    answers, the resolved config and its batch key, the series' length bounds and the
    batcher's ``submit_to``. A request in a lane needs no routing, no config work and no
    validation beyond its length.
    """

    served: ServedModel
    epoch: int
    route: ServedVersion
    config: Mapping[str, int | float | bool]
    batch_key: Hashable
    queue_key: tuple[str, Hashable]
    min_length: int
    max_length: int
    submit_to: Callable[[Hashable, PreparedInput, BatchSink[ModelOutput], object, float], None]

    @property
    def current(self) -> bool:
        """False once a version was loaded, unloaded or swapped since the lane was made."""
        return self.served.epoch == self.epoch


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
        overload_interval_s=merged["overload_interval_ms"] / 1000.0,
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
        result_cache: ResultCache | None = None,
        load_runner: BatchRunner | None = None,
    ) -> None:
        """``load_runner`` loads and warms up versions for the admin commands (default:
        ``runner``; the daemon gives it a thread of its own so batches keep running)."""
        self.broadcaster = broadcaster
        self.result_cache = result_cache
        self.device = device
        self.runner = runner
        specs = model_specs(config, factory)
        self.loader = ModelLoader({}, config.max_loaded_models, device)
        repository = resolve_path(config.repository) if config.repository else None
        self.versions = VersionManager(
            repository, self.loader, load_runner or runner, clock, device
        )
        self.admission = AdmissionBoard(clock)
        self._routes: dict[str, ServedModel] = {}
        for name, spec in specs.items():
            model_config = config.models[name]
            policy = batch_policy(config.batching, model_config.batching.model_dump())
            batcher: DynamicBatcher[PreparedInput, ModelOutput] = DynamicBatcher(
                name,
                self._batch_function(name),
                runner,
                clock,
                policy,
                # Off (0): no admission at all, so it costs the hot path nothing.
                self.admission.model(name, policy.max_queue_delay_s, policy.overload_interval_s)
                if policy.max_queue_delay_s
                else None,
            )
            from_repository = "checkpoint" not in model_config.settings and has_repository(
                repository, name
            )
            served = ServedModel(name, model_config, spec.cls, batcher, from_repository)
            self.versions.start_versions(served, spec)
            self._routes[name] = self.versions.models[name] = served
        # Character streams step on the same runner (worker threads) as the batches.
        self.stream_replies = StreamReplies(broadcaster)
        self.streams = StreamEngine(
            {name: served.pick("", None).validator for name, served in self._routes.items()},
            self._load_version,
            runner,
            clock,
            self.stream_replies,
            streams,
            device,
        )
        self.versions.open_streams = self.streams.open_on
        self.versions.warm_streams = self.streams.warm_model

    def _load_version(self, model: str, version: str) -> BaseModel:
        """Worker thread: the loaded instance of ``model`` ``version`` (empty: the default)."""
        if not version:
            version = self._routes[model].pick("", None).version
        return self.loader.get(loader_key(model, version))

    def _batch_function(
        self, name: str
    ) -> Callable[[Sequence[PreparedInput]], Sequence[ModelOutput | InvalidInput]]:
        loader = self.loader

        def run(batch: Sequence[PreparedInput]) -> Sequence[ModelOutput | InvalidInput]:
            # Worker thread: a miss (first use, or evicted) loads the model here. A batch
            # holds one version's requests (the version is part of the batch key).
            return loader.get(loader_key(name, batch[0].version)).run_batch(batch)

        return run

    # -- inference ---------------------------------------------------------------
    def model_names(self) -> list[str]:
        """Names of the enabled models."""
        return sorted(self._routes)

    def version_of(self, model: str) -> str:
        """The default version of an enabled model (what a request naming none gets)."""
        return self._routes[model].pick("", None).version

    def infer(
        self,
        model: str,
        version: str,
        values: Sequence[float] | FloatArray,
        config: Mapping[str, ConfigScalar],
        bypass_cache: bool = False,
    ) -> Deferred[InferenceResult]:
        """Validate and queue one request; the Deferred fires with its result.

        With a result cache (and unless ``bypass_cache``), a cached result answers
        at once and a computed one is stored. Raises ServiceError (UNKNOWN_MODEL,
        INVALID_INPUT, BUSY) synchronously, so bad requests cost no Deferred.
        """
        route, d = self.submit(model, version, values, config, bypass_cache=bypass_cache)
        return d.addBoth(self._routes[model].settle, route)

    def submit(
        self,
        model: str,
        version: str,
        values: Sequence[float] | FloatArray,
        config: Mapping[str, ConfigScalar],
        sticky: int | None = None,
        bypass_cache: bool = False,
    ) -> tuple[ServedVersion, Deferred[InferenceResult]]:
        """:meth:`infer` for the hot path: also returns the version that answers, and the
        caller calls its ``settled`` once the Deferred fires (a callback less per request).

        ``version`` empty: the traffic split's pick for ``sticky`` (model_versions.
        sticky_key of the connection), or the default version. With a result cache
        (and unless ``bypass_cache``) a cached result of that version answers at once.
        """
        served, route, prepared = self._prepare(model, version, values, config, sticky)
        answered_by = route.version
        submit = partial(served.batcher.submit, (answered_by, prepared.batch_key), prepared)
        cache = self.result_cache
        if cache is None:
            d = submit()
        else:
            d = cache.infer(model, answered_by, prepared, submit, bypass_cache)
        served.pending[answered_by] += 1
        return route, d

    def caches(self, model: str) -> bool:
        """Whether ``model``'s results go through the result cache (a TTL is set)."""
        cache = self.result_cache
        return cache is not None and model in cache.ttls

    def infer_to(
        self,
        model: str,
        version: str,
        values: Sequence[float] | FloatArray,
        config: Mapping[str, ConfigScalar],
        sink: BatchSink[ModelOutput],
        token: object,
        sticky: int | None = None,
    ) -> ServedVersion:
        """Like :meth:`submit`, without a Deferred and without the result cache: ``sink``
        gets ((``token``, the version that answers), outcome) together with the other
        outcomes of the batch the request runs in, and calls that version's ``settled``."""
        served, route, prepared = self._prepare(model, version, values, config, sticky)
        served.pending[route.version] += 1
        try:
            served.batcher.submit_to(
                (route.version, prepared.batch_key), prepared, sink, (token, route)
            )
        except ServiceError:
            route.settled(False)
            raise
        return route

    def lane(self, model: str, version: str, config: Mapping[str, ConfigScalar]) -> Lane | None:
        """The :class:`Lane` of requests for ``model`` naming ``version`` with ``config``.

        None when each request must take :meth:`infer_to` or :meth:`submit`: a model
        behind the result cache, a model whose ``prepare`` is its own (it checks or keys
        each request itself, as motion_lstm does), or a request naming no version while
        traffic is split. Raises ServiceError as :meth:`infer_to` would for such a request.
        """
        served = self._routes.get(model)
        if served is None or (not version and served.split) or self.caches(model):
            return None
        route = served.pick(version, None)
        validator = route.validator
        if type(validator).prepare is not BaseModel.prepare:
            return None  # the model checks (or keys) each request itself
        plan = validator.plan(config)
        return Lane(
            served,
            served.epoch,
            route,
            plan.config,
            plan.batch_key,
            (route.version, plan.batch_key),
            plan.min_length,
            validator.input_schema.max_length,
            served.batcher.submit_to,
        )

    def _prepare(
        self,
        model: str,
        version: str,
        values: Sequence[float] | FloatArray,
        config: Mapping[str, ConfigScalar],
        sticky: int | None,
    ) -> tuple[ServedModel, ServedVersion, PreparedInput]:
        """The model, the version that answers and the validated request (ServiceError
        if it is refused)."""
        served = self._routes.get(model)
        if served is None:
            raise UnknownModel(
                f"no model named '{model}'; available: {', '.join(self.model_names())}"
            )
        route = served.pick(version, sticky)
        prepared = route.validator.prepare(values, config)
        prepared.version = route.version
        return served, route, prepared

    def open_stream(
        self,
        owner: StreamOwner,
        model: str,
        version: str,
        character_id: int,
        config: Mapping[str, ConfigScalar],
        initial_state: bytes = b"",
    ) -> OpenedStream:
        """Open a character stream on the version named, or the split's pick for it.

        The stream stays on that version until it closes (docs/streams.md).
        """
        served = self._routes.get(model)
        if served is None:
            return self.streams.open(owner, model, version, character_id, config, initial_state)
        route = served.pick(version, sticky_key(owner.connection_id, character_id))
        return self.streams.open(
            owner, model, route.version, character_id, config, initial_state, route.validator
        )

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
        return [
            (name, *served.pick("", None).validator.warmup_request())
            for name, served in sorted(self._routes.items())
        ]

    def _warm_round(self, batch: int) -> Deferred[list[InferenceResult]]:
        """One request per model version (``batch`` 1) or a full batch of each (``batch`` 0)."""
        runs: list[Deferred[InferenceResult]] = []
        for name, served in self._routes.items():
            for version, route in served.versions.items():
                values, config = route.validator.warmup_request()
                size = batch or served.batcher.policy.max_batch_size
                runs.extend(self._warm_requests(name, version, values, config, size))
        return gatherResults(runs, consumeErrors=True)

    def _warm_requests(
        self,
        name: str,
        version: str,
        values: FloatArray,
        config: dict[str, ConfigScalar],
        size: int,
    ) -> list[Deferred[InferenceResult]]:
        runs: list[Deferred[InferenceResult]] = []
        for _ in range(size):
            try:
                # Never through the result cache: every round must run the model.
                run = self.infer(name, version, values, config, bypass_cache=True)
            except ServiceError as exc:
                raise StartupError(
                    f"inference.models.{name}", f"its warm-up request was refused: {exc}"
                ) from None
            runs.append(run.addErrback(_name_setting, name, self._routes[name].versions[version]))
        return runs

    # -- introspection -------------------------------------------------------------
    def compute_paths(self) -> list[tuple[str, str, str]]:
        """(model, version, what runs its forward pass) of each loaded version that says."""
        paths = []
        for name, served in sorted(self._routes.items()):
            for version, route in sorted(served.versions.items()):
                if self.loader.is_loaded(route.key):
                    path = self.loader.get(route.key).compute_path
                    if path:
                        paths.append((name, version, path))
        return paths

    def describe_models(self) -> list[ModelDescription]:
        """Every served version of every enabled model: description, schemas, load state.

        One entry per version, oldest first; ``default`` marks what a request naming no
        version gets when traffic is not split.
        """
        return [
            ModelDescription(
                name=name,
                version=version,
                description=route.validator.description,
                loaded=self.loader.is_loaded(route.key),
                input_schema=route.validator.describe_input(),
                output_schema=route.validator.describe_output(),
                default=served.default is route,
                traffic=served.config.traffic.get(version, 0),
            )
            for name, served in sorted(self._routes.items())
            for version, route in sorted(
                served.versions.items(), key=lambda item: version_sort_key(item[0])
            )
        ]

    def get_queue_status(self) -> list[QueueStatus]:
        """Queue depth, batches run and mean batch size, per model."""
        return [served.batcher.status() for _, served in sorted(self._routes.items())]

    def batchers(self) -> list[tuple[str, DynamicBatcher[PreparedInput, ModelOutput]]]:
        """Each enabled model's batcher, by name (for metrics)."""
        return [(name, served.batcher) for name, served in sorted(self._routes.items())]

    def version_answers(self) -> list[tuple[str, str, int]]:
        """(model, version, requests answered) for every version that answered any."""
        return [
            (name, version, count)
            for name, served in sorted(self._routes.items())
            for version, count in sorted(served.answered.items())
        ]

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
        self,
        host: str,
        port: int,
        encoding: Encoding,
        models: frozenset[str],
        owner: object,
        max_datagram_bytes: int | None = None,
    ) -> UdpTarget:
        """Add (or renew) ``owner``'s UDP target; errors are ServiceErrors for the client.

        ``host`` must already be allowed for the client (aiServer.udp_policy);
        ``max_datagram_bytes`` None means ``udp.max_datagram_bytes``.
        """
        if self.broadcaster is None:
            raise ServiceError(ErrorCode.UNAVAILABLE, "UDP broadcast is disabled (udp.enabled)")
        unknown = sorted(models - set(self._routes))
        if unknown:
            raise UnknownModel(f"cannot subscribe to unknown model(s): {', '.join(unknown)}")
        try:
            return self.broadcaster.add_target(
                host, port, encoding, models, owner=owner, max_datagram_bytes=max_datagram_bytes
            )
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


def _name_setting(failure: Failure, model: str, route: ServedVersion) -> Failure:
    """A version's load failure as a StartupError: a SettingsError names the config key
    (or the version's manifest when it came from the repository), a refused version the
    file at fault."""
    error = failure.value
    if isinstance(error, VersionRefused):
        return Failure(StartupError(f"inference.models.{model}", str(error)))
    if isinstance(error, SettingsError):
        if route.manifest is not None:
            where = route.manifest.weights or route.manifest.path
            return Failure(StartupError(f"inference.models.{model}", f"{where}: {error}"))
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
    if timings.cache_hit:
        out["timings"]["cache_hit"] = True
    if response.confidence:
        out["confidence"] = float32_list(response.confidence)
    return out


def describe_json(description: ModelDescription) -> tuple[str, str]:
    """The input and output schemas as JSON text, for ModelInfo."""
    return json.dumps(description.input_schema), json.dumps(description.output_schema)
