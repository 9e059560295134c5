"""Model versions: which serve, which one answers a request, and load / unload / reload.

Each enabled model is a :class:`ServedModel`: its served versions (one loader entry
``name@version`` each), the default version (the highest served), and the A/B split
of ``inference.models.<name>.traffic``. Requests and streams that name no version
get the split's pick (sticky: the same connection, or stream, always lands on the
same version while the split is unchanged) or the default.

:class:`VersionManager` applies the admin commands. A version is verified, loaded
and warmed up on a worker thread, and only then installed on the reactor thread:
the next batch of that model runs on it. A version being unloaded leaves the routing
at once but stays loaded until its queued requests are answered and its open streams
close (streams stay on the version they opened on), so no request fails.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from commonlib.batcher import BatchRunner, DynamicBatcher
from commonlib.models.base import BaseModel, ModelOutput, ModelSpec, PreparedInput, SettingsError
from commonlib.models.loader import ModelLoader
from commonlib.models.repository import (
    Manifest,
    SettingsMismatch,
    VersionRefused,
    check_weights,
    is_version,
    read_manifest,
    version_settings,
    version_sort_key,
    versions_on_disk,
)
from util.config import ConfigError, ModelConfig, PinnedVersions
from util.errors import ErrorCode, InvalidInput, ServiceError, UnknownModel, new_error_id

log = Logger()
T = TypeVar("T")

_HASH = 2654435761  # Knuth's multiplicative hash: spreads consecutive connection ids
RELEASE_POLL_S = 0.25
WARMUP_ROUNDS = 3


def loader_key(model: str, version: str) -> str:
    """The loader's (and Status's ``loaded_models``) name of one model version."""
    return f"{model}@{version}"


def sticky_key(connection_id: int, character_id: int | None = None) -> int:
    """The A/B key of a connection's requests, or of one of its streams."""
    if character_id is None:
        return connection_id
    return connection_id * 1_000_003 + character_id + 1


@dataclass(eq=False)
class ServedVersion:
    """One version of a model: its spec, an unloaded instance for validation, its manifest.

    Compared and hashed by identity (the reply path counts answers per instance).
    """

    model: str
    version: str
    spec: ModelSpec
    validator: BaseModel
    manifest: Manifest | None = None
    # The model's counters by version (ServedModel.install shares them).
    pending: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)

    @property
    def key(self) -> str:
        """The loader key."""
        return loader_key(self.model, self.version)

    def settled(self, ok: bool) -> None:
        """One request this version took was answered (``ok``: with a result)."""
        self.pending[self.version] -= 1
        if ok:
            self.answered[self.version] += 1

    def settle_many(self, count: int, ok: int) -> None:
        """``count`` requests this version took were answered, ``ok`` of them with a result."""
        self.pending[self.version] -= count
        if ok:
            self.answered[self.version] += ok


class ServedModel:
    """One model's served versions, default version, traffic split and counters."""

    def __init__(
        self,
        name: str,
        config: ModelConfig,
        cls: type[BaseModel],
        batcher: DynamicBatcher[PreparedInput, ModelOutput],
        from_repository: bool,
    ) -> None:
        self.name = name
        self.config = config
        self.cls = cls
        self.batcher = batcher
        self.from_repository = from_repository
        self.versions: dict[str, ServedVersion] = {}
        self.retiring: dict[str, ServedVersion] = {}
        self.default: ServedVersion | None = None
        self.pending: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self._split: tuple[tuple[int, str], ...] = ()
        self._total = 0
        self.epoch = 0
        """Changes whenever the routing does (what the facade's lanes check)."""

    def install(self, served: ServedVersion) -> None:
        """Serve ``served`` (replacing the same version's entry)."""
        served.pending = self.pending
        served.answered = self.answered
        self.retiring.pop(served.version, None)
        self.versions[served.version] = served
        self._route()

    def retire(self, version: str) -> ServedVersion:
        """Take ``version`` out of the routing (it is released once idle)."""
        served = self.versions.pop(version)
        self.retiring[version] = served
        self._route()
        return served

    def _route(self) -> None:
        self.epoch += 1
        ordered = sorted(self.versions, key=version_sort_key)
        self.default = self.versions[ordered[-1]] if ordered else None
        bound = 0
        split = []
        for version, weight in sorted(self.config.traffic.items()):
            if weight and version in self.versions:
                bound += weight
                split.append((bound, version))
        self._split = tuple(split)
        self._total = bound

    def served_versions(self) -> list[str]:
        """The served versions, oldest first."""
        return sorted(self.versions, key=version_sort_key)

    @property
    def split(self) -> bool:
        """Whether requests naming no version are split between versions (A/B)."""
        return bool(self._split)

    def pick(self, requested: str, sticky: int | None) -> ServedVersion:
        """The version that answers: the one named, else the split's (sticky) or the default."""
        if requested:
            served = self.versions.get(requested)
            if served is None:
                raise UnknownModel(
                    f"model '{self.name}' has no version '{requested}' "
                    f"(serving {', '.join(self.served_versions())})"
                )
            return served
        if sticky is not None and self._split:
            bucket = (sticky * _HASH) % 4294967296 % self._total
            for bound, version in self._split:
                if bucket < bound:
                    return self.versions[version]
        default = self.default
        assert default is not None  # a model always serves at least one version
        return default

    def settle(self, result: Any, route: ServedVersion) -> Any:
        """Deferred callback and errback alike: ``route`` answered one request."""
        route.settled(not isinstance(result, Failure))
        return result


@dataclass
class AdminResult:
    """What an admin command did, and the versions served after it."""

    model: str
    versions: list[str]
    default_version: str
    message: str


@dataclass
class _Built:
    served: ServedVersion
    model: BaseModel
    seconds: float


@dataclass
class VersionManager:
    """The served versions of every enabled model, and the admin commands on them.

    ``load_runner`` runs the loads and warm-ups: a thread of its own in the daemon, so
    batches keep running meanwhile. ``open_streams`` counts the streams open on a
    model version (the stream engine); ``warm_streams`` runs a stream step through a
    freshly loaded model (on the load thread).
    """

    repository: Path | None
    loader: ModelLoader
    load_runner: BatchRunner
    clock: IReactorTime
    device: str
    models: dict[str, ServedModel] = field(default_factory=dict)
    open_streams: Callable[[str, str], int] = lambda model, version: 0
    warm_streams: Callable[[BaseModel], None] = lambda model: None
    _lock: DeferredLock = field(default_factory=DeferredLock)
    _release_timer: Any = None

    # -- start-up ------------------------------------------------------------------------
    def start_versions(self, served: ServedModel, spec: ModelSpec) -> None:
        """Install the versions ``served``'s policy selects at start (files read here).

        ConfigError naming the key (or the manifest) when the policy cannot be met.
        """
        name = served.name
        key = f"inference.models.{name}"
        if not served.from_repository:
            version = served.cls.version
            wanted = policy_versions(served.config.versions, [version], key)
            for each in wanted:
                served.install(
                    ServedVersion(name, each, spec, spec.cls(spec.settings, self.device))
                )
        else:
            assert self.repository is not None
            on_disk = versions_on_disk(self.repository, name)
            if not on_disk:
                raise ConfigError(
                    f"no version in {self.repository / name} (each is <version>/manifest.json)",
                    key,
                )
            for version in policy_versions(served.config.versions, on_disk, key):
                try:
                    served.install(self._describe(served, version))
                except SettingsMismatch as exc:
                    raise ConfigError(str(exc), f"{key}.settings.{exc.setting}") from None
                except VersionRefused as exc:
                    raise ConfigError(str(exc), key) from None
        missing = sorted(set(served.config.traffic) - set(served.versions))
        if missing:
            raise ConfigError(
                f"version(s) {', '.join(missing)} are not served "
                f"(serving {', '.join(served.served_versions())}; see versions)",
                f"{key}.traffic",
            )
        for route in served.versions.values():
            self.loader.add_spec(route.key, route.spec)

    def _describe(self, served: ServedModel, version: str) -> ServedVersion:
        """Read and check a version's manifest (no weights loaded); VersionRefused."""
        assert self.repository is not None
        manifest = read_manifest(self.repository, served.name, version)
        settings = version_settings(manifest, served.cls, served.config.settings)
        spec = ModelSpec(served.cls, settings, partial(check_weights, manifest))
        return ServedVersion(
            served.name, version, spec, served.cls(settings, self.device), manifest
        )

    # -- admin commands -----------------------------------------------------------------
    def model(self, name: str) -> ServedModel:
        """The enabled model ``name``; UnknownModel otherwise."""
        served = self.models.get(name)
        if served is None:
            raise UnknownModel(
                f"no model named '{name}'; available: {', '.join(sorted(self.models))}"
            )
        return served

    def load(self, name: str, version: str) -> Deferred[AdminResult]:
        """Verify, load and warm ``version`` (empty: the newest on disk), then serve it."""
        served = self._repository_model(name)
        return Deferred.fromCoroutine(self._locked(self._load(served, version)))

    def unload(self, name: str, version: str) -> Deferred[AdminResult]:
        """Stop serving ``version``: it answers what it has queued, keeps its open streams."""
        served = self.model(name)

        async def unload() -> AdminResult:
            return self._unload(served, version)

        return Deferred.fromCoroutine(self._locked(unload()))

    def reload(self, name: str, version: str) -> Deferred[AdminResult]:
        """``version``: as :meth:`load`; empty: re-read the repository, apply the policy."""
        served = self._repository_model(name)
        work = self._load(served, version) if version else self._apply_policy(served)
        return Deferred.fromCoroutine(self._locked(work))

    def reload_all(self) -> Deferred[list[AdminResult | ServiceError]]:
        """Apply every repository model's policy to what the repository holds now (SIGHUP)."""
        return Deferred.fromCoroutine(self._reload_all())

    async def _reload_all(self) -> list[AdminResult | ServiceError]:
        results: list[AdminResult | ServiceError] = []
        for served in self.models.values():
            if served.from_repository:
                try:
                    results.append(await self._locked(self._apply_policy(served)))
                except Exception as exc:
                    results.append(admin_error(exc))
        return results

    async def _locked(self, work: Coroutine[Any, Any, T]) -> T:
        """Admin commands run one at a time."""
        await self._lock.acquire()
        try:
            return await work
        finally:
            self._lock.release()

    def _repository_model(self, name: str) -> ServedModel:
        served = self.model(name)
        if not served.from_repository:
            raise InvalidInput(
                f"model '{name}' is not served from the repository "
                "(its settings name a checkpoint, or the repository has no directory for it)"
            )
        return served

    async def _load(self, served: ServedModel, version: str) -> AdminResult:
        built = await self.load_runner.run(partial(self._build, served, version))
        self._install(built)
        return self._result(served, f"loaded {built.served.version}")

    def _build(self, served: ServedModel, version: str) -> _Built:
        """Worker thread: verify, load and warm up one version (nothing served changes)."""
        assert self.repository is not None
        if not version:
            on_disk = versions_on_disk(self.repository, served.name)
            if not on_disk:
                raise VersionRefused(self.repository / served.name, "holds no version")
            version = on_disk[-1]
        described = self._describe(served, version)
        manifest = described.manifest
        assert manifest is not None
        started = time.perf_counter()
        check_weights(manifest)
        model = served.cls(described.spec.settings, self.device)
        try:
            model.load()
        except SettingsError as exc:
            raise VersionRefused(manifest.weights or manifest.path, str(exc)) from None
        try:
            warm_up(model, described.validator, served.batcher.policy.max_batch_size)
            self.warm_streams(model)
        except Exception as exc:
            raise VersionRefused(manifest.path, f"its warm-up failed: {exc!r}") from exc
        return _Built(described, model, time.perf_counter() - started)

    def _install(self, built: _Built) -> _Built:
        """Reactor thread: the next batch of the model runs on the new version."""
        served = self.models[built.served.model]
        self.loader.add(built.served.key, built.served.spec, built.model, built.seconds)
        served.install(built.served)
        log.info(
            "model {model} version {version} serving (verified, loaded and warmed in "
            "{seconds:.2f}s); default {default}",
            model=served.name,
            version=built.served.version,
            seconds=built.seconds,
            default=served.default.version if served.default else "",
        )
        return built

    def _unload(self, served: ServedModel, version: str) -> AdminResult:
        if version not in served.versions:
            raise UnknownModel(
                f"model '{served.name}' does not serve version '{version}' "
                f"(serving {', '.join(served.served_versions())})"
            )
        if len(served.versions) == 1:
            raise InvalidInput(
                f"version {version} is the only version of '{served.name}' served; "
                "load another first"
            )
        served.retire(version)
        self._release_idle()
        log.info(
            "model {model} version {version} unloaded; default {default}",
            model=served.name,
            version=version,
            default=served.default.version if served.default else "",
        )
        return self._result(served, f"unloaded {version}")

    async def _apply_policy(self, served: ServedModel) -> AdminResult:
        """Load the versions the policy wants that are not served, then unload the rest."""
        wanted = await self.load_runner.run(partial(self._wanted, served))
        done = []
        for version in wanted:
            if version not in served.versions:
                built = await self.load_runner.run(partial(self._build, served, version))
                self._install(built)
                done.append(f"loaded {version}")
        for version in served.served_versions():
            if version not in wanted:
                self._unload(served, version)
                done.append(f"unloaded {version}")
        return self._result(served, "; ".join(done) or "nothing to change")

    def _wanted(self, served: ServedModel) -> list[str]:
        """Worker thread: the versions the policy serves out of the repository now."""
        assert self.repository is not None
        root = self.repository
        key = f"inference.models.{served.name}"
        try:
            return policy_versions(served.config.versions, versions_on_disk(root, served.name), key)
        except ConfigError as exc:
            raise VersionRefused(root / served.name, exc.message) from None

    def _result(self, served: ServedModel, message: str) -> AdminResult:
        default = served.default.version if served.default is not None else ""
        return AdminResult(served.name, served.served_versions(), default, message)

    # -- releasing unloaded versions ------------------------------------------------------
    def _release_idle(self) -> None:
        """Free the retired versions with nothing queued and no stream open; poll the rest."""
        waiting = False
        for served in self.models.values():
            for version, retired in list(served.retiring.items()):
                if served.pending[version] > 0 or self.open_streams(served.name, version):
                    waiting = True
                    continue
                del served.retiring[version]
                self.loader.remove(retired.key)
                log.info(
                    "model {model} version {version} released", model=served.name, version=version
                )
        self._release_timer = None
        if waiting:
            self._release_timer = self.clock.callLater(RELEASE_POLL_S, self._release_idle)

    def stop(self) -> None:
        """Stop polling for idle retired versions (the daemon stops)."""
        if self._release_timer is not None and self._release_timer.active():
            self._release_timer.cancel()
        self._release_timer = None


def policy_versions(policy: str | PinnedVersions, on_disk: Sequence[str], key: str) -> list[str]:
    """The versions ``policy`` serves out of ``on_disk`` (oldest first); ConfigError naming
    ``key`` + ``.versions`` when it cannot be met."""
    if not on_disk:
        raise ConfigError("no version to serve", f"{key}.versions")
    if policy == "latest":
        return [on_disk[-1]]
    if policy == "all":
        return list(on_disk)
    assert isinstance(policy, PinnedVersions)
    missing = [v for v in policy.pinned if v not in on_disk]
    if missing:
        raise ConfigError(
            f"pinned version(s) {', '.join(missing)} not found (available: {', '.join(on_disk)})",
            f"{key}.versions.pinned",
        )
    return sorted(set(policy.pinned), key=version_sort_key)


def warm_up(model: BaseModel, validator: BaseModel, max_batch_size: int) -> None:
    """Worker thread: run a single request and a full batch through ``model`` a few times."""
    values, config = validator.warmup_request()
    prepared = validator.prepare(values, config)
    for _ in range(WARMUP_ROUNDS):
        for size in (1, max_batch_size):
            for output in model.run_batch([prepared] * size):
                if isinstance(output, Exception):
                    raise output


def admin_error(error: BaseException) -> ServiceError:
    """An admin command's failure as the error its client gets (TCP and HTTP)."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, VersionRefused):
        return ServiceError(ErrorCode.VERSION_REFUSED, str(error))
    error_id = new_error_id()
    log.error(
        "model admin command failed (error id {error_id}): {error!r}",
        error_id=error_id,
        error=error,
    )
    return ServiceError(
        ErrorCode.INTERNAL, f"internal error (error id {error_id}; the server log has the details)"
    )


ADMIN_ACTIONS = ("load", "unload", "reload")


def run_admin(
    manager: VersionManager, action: str, model: str, version: str
) -> Deferred[AdminResult]:
    """One admin command (``load``, ``unload`` or ``reload``), for the TCP and HTTP doors.

    Raises ServiceError at once for a bad command; the Deferred fails with what
    :func:`admin_error` turns into the client's error.
    """
    if version and not is_version(version):
        raise InvalidInput(f"version '{version}' is not a version (a positive integer, e.g. 2)")
    if action == "load":
        return manager.load(model, version)
    if action == "unload":
        if not version:
            raise InvalidInput("unload needs the version to stop serving")
        return manager.unload(model, version)
    if action == "reload":
        return manager.reload(model, version)
    raise InvalidInput(f"unknown admin action '{action}'; use one of {', '.join(ADMIN_ACTIONS)}")
