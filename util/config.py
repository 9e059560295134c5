"""YAML configuration, validated at start into strict, frozen typed sections.

Every key has a default here and the same default, with a line of documentation,
in ``config/default.yaml`` (``tests/test_config.py`` keeps them equal). Unknown or
misspelt keys are errors, and every error names the key and the problem.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config" / "default.yaml"

Port = Annotated[int, Field(ge=0, le=65535)]


class ConfigError(Exception):
    """The configuration is invalid; ``path`` names the failing key."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TlsConfig(_Section):
    """TLS on the TCP port; with client_ca, clients must present a certificate (mutual TLS)."""

    enabled: bool = False
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    handshake_timeout_s: float = Field(default=10.0, gt=0, le=3_600)


class AuthConfig(_Section):
    """Optional token authentication: a client's first packet must be a Hello with a token."""

    tokens: list[str] = Field(default_factory=list)
    token_file: str | None = None
    max_failures: int = Field(default=3, ge=1, le=100)
    deadline_s: float = Field(default=5.0, gt=0, le=3_600)
    pre_auth_max_frame_bytes: int = Field(default=4096, ge=64, le=1_048_576)


class ServerConfig(_Section):
    """The TCP listener."""

    host: str = "127.0.0.1"
    tcp_port: Port = 7600
    max_frame_bytes: int = Field(default=1_048_576, ge=64, le=64 * 1_048_576)
    port_file: str | None = None
    max_connections: int = Field(default=16_384, ge=1, le=1_000_000)
    listen_backlog: int = Field(default=4096, ge=1, le=65_535)
    max_inflight_per_connection: int = Field(default=32, ge=1, le=65_536)
    idle_timeout_s: float = Field(default=60.0, gt=0, le=86_400)
    frame_timeout_s: float = Field(default=10.0, gt=0, le=3_600)
    frame_grace_s: float = Field(default=1.0, gt=0, le=3_600)
    min_receive_rate_bytes_per_s: int = Field(default=16_384, ge=1, le=1 << 30)
    max_output_buffer_bytes: int = Field(default=1_048_576, ge=65_536, le=1 << 30)
    slow_reader_timeout_s: float = Field(default=10.0, gt=0, le=3_600)
    socket_send_buffer_bytes: int = Field(default=65_536, ge=0, le=1 << 30)
    abort_timeout_s: float = Field(default=15.0, gt=0, le=3_600)
    drain_timeout_s: float = Field(default=20.0, ge=0, le=3_600)
    workers: int = Field(default=1, ge=0, le=256)
    worker_restart_delay_s: float = Field(default=1.0, ge=0, le=600)
    tls: TlsConfig = TlsConfig()


class BatchingConfig(_Section):
    """Dynamic batching defaults, shared by every model unless it overrides them."""

    max_batch_size: int = Field(default=8, ge=1, le=4096)
    max_wait_ms: float = Field(default=2.0, ge=0.0, le=60_000.0)
    eager_when_idle: bool = True
    max_inflight_batches: int = Field(default=1, ge=1, le=64)
    max_queue: int = Field(default=1024, ge=1, le=1_000_000)
    queue_timeout_ms: float = Field(default=1000.0, ge=0.0, le=600_000.0)
    max_queue_delay_ms: float = Field(default=0.0, ge=0.0, le=600_000.0)
    overload_interval_ms: float = Field(default=20.0, ge=0.0, le=600_000.0)


class BatchingOverride(_Section):
    """Per-model batching overrides; unset keys inherit inference.batching."""

    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    max_wait_ms: float | None = Field(default=None, ge=0.0, le=60_000.0)
    eager_when_idle: bool | None = None
    max_inflight_batches: int | None = Field(default=None, ge=1, le=64)
    max_queue: int | None = Field(default=None, ge=1, le=1_000_000)
    queue_timeout_ms: float | None = Field(default=None, ge=0.0, le=600_000.0)
    max_queue_delay_ms: float | None = Field(default=None, ge=0.0, le=600_000.0)
    overload_interval_ms: float | None = Field(default=None, ge=0.0, le=600_000.0)


def _version_text(value: object) -> object:
    """YAML reads ``1`` as an int: versions are compared as their text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _version_name(value: str) -> str:
    if not (value.isdigit() and value[0] != "0" and len(value) <= 9):
        raise ValueError(f"'{value}' is not a version (a positive integer, e.g. 1 or 12)")
    return value


VersionName = Annotated[str, BeforeValidator(_version_text), AfterValidator(_version_name)]


class PinnedVersions(_Section):
    """``versions: {pinned: [v, ...]}``: serve exactly these versions."""

    pinned: list[VersionName] = Field(min_length=1)


def _version_policy(value: object) -> str | PinnedVersions:
    """``latest``, ``all`` or ``{pinned: [versions]}``, with one clear error otherwise."""
    if isinstance(value, PinnedVersions) or value in ("latest", "all"):
        return value
    if isinstance(value, dict) and set(value) == {"pinned"}:
        pinned = value["pinned"]
        if not isinstance(pinned, list) or not pinned:
            raise ValueError("pinned must be a non-empty list of versions, e.g. {pinned: [1, 2]}")
        return PinnedVersions(pinned=[_version_name(str(_version_text(v))) for v in pinned])
    raise ValueError("must be latest, all or {pinned: [versions]}, e.g. {pinned: [1, 2]}")


def _dump_version_policy(value: str | PinnedVersions) -> str | dict[str, list[str]]:
    return value if isinstance(value, str) else {"pinned": list(value.pinned)}


class ModelConfig(_Section):
    """One served model: whether it is enabled, its settings, versions, batching overrides."""

    enabled: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)
    versions: Annotated[
        str | PinnedVersions,
        PlainValidator(_version_policy),
        PlainSerializer(_dump_version_policy),
    ] = "latest"
    traffic: dict[VersionName, Annotated[int, Field(ge=0, le=1_000_000)]] = Field(
        default_factory=dict
    )
    batching: BatchingOverride = BatchingOverride()
    cache_ttl_s: float | None = Field(default=None, ge=0.0, le=30 * 86_400.0)


def _default_models() -> dict[str, ModelConfig]:
    return {
        # Measured: a cache hit costs the server more than moving_average itself does.
        "moving_average": ModelConfig(
            batching=BatchingOverride(max_batch_size=64), cache_ttl_s=0.0
        ),
        "lstm_timeseries": ModelConfig(
            batching=BatchingOverride(max_batch_size=64), cache_ttl_s=60.0
        ),
        "motion_lstm": ModelConfig(batching=BatchingOverride(max_batch_size=64)),
    }


class InferenceConfig(_Section):
    """Models, devices, the worker thread pool and batching."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    worker_threads: int = Field(default=1, ge=1, le=64)
    max_loaded_models: int = Field(default=4, ge=1, le=1024)
    repository: str | None = "models"
    gc_freeze: bool = True
    gil_switch_interval_ms: float = Field(default=5.0, ge=0.05, le=1000.0)
    batching: BatchingConfig = BatchingConfig()
    models: dict[str, ModelConfig] = Field(default_factory=_default_models)


class UdpTargetConfig(_Section):
    """A static UDP listener (e.g. a game engine) that receives results."""

    host: str
    port: int = Field(ge=1, le=65535)
    encoding: Literal["protobuf", "json"] = "protobuf"
    models: list[str] = Field(default_factory=list)


def _target_cidr(value: str) -> str:
    """An IPv4 network (``10.1.0.0/16``) a UDP target may lie in; ValueError otherwise."""
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise ValueError(f"not an IPv4 network in CIDR form: {exc}") from None
    for never in ("0.0.0.0/8", "240.0.0.0/4"):
        if network.subnet_of(ipaddress.IPv4Network(never)):
            raise ValueError(f"lies inside {never}, which is never a UDP target")
    return value


class UdpConfig(_Section):
    """UDP broadcast of results to game-engine listeners."""

    enabled: bool = True
    bind_host: str = "0.0.0.0"
    bind_port: Port = 0
    max_datagram_bytes: int = Field(default=1200, ge=128, le=65_507)
    max_subscribers: int = Field(default=64, ge=0, le=100_000)
    max_subscriptions_per_connection: int = Field(default=4, ge=0, le=10_000)
    lease_s: float = Field(default=60.0, gt=0, le=86_400)
    allowed_target_cidrs: list[Annotated[str, AfterValidator(_target_cidr)]] = Field(
        default_factory=list
    )
    min_target_port: int = Field(default=1024, ge=1, le=65535)
    targets: list[UdpTargetConfig] = Field(default_factory=list)


class HttpConfig(_Section):
    """The HTTP side door: health, readiness, Prometheus metrics, models, status."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9100


def _cidr(value: str) -> str:
    """An IPv4 or IPv6 network in CIDR form; ValueError otherwise."""
    try:
        ipaddress.ip_network(value)
    except ValueError as exc:
        raise ValueError(f"not a network in CIDR form: {exc}") from None
    return value


class AdminConfig(_Section):
    """Model admin commands (load, unload, reload): the ModelAdmin packet and POST /admin/*."""

    enabled: bool = True
    http_allowed_cidrs: list[Annotated[str, AfterValidator(_cidr)]] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"]
    )


class StreamsConfig(_Section):
    """Character streams (docs/streams.md): server-held state stepped on a per-model tick."""

    enabled: bool = True
    tick_hz: float = Field(default=60.0, ge=1.0, le=1000.0)
    max_per_connection: int = Field(default=4096, ge=1, le=1_000_000)
    max_total: int = Field(default=65_536, ge=1, le=10_000_000)
    idle_timeout_s: float = Field(default=30.0, gt=0, le=86_400)
    initial_capacity: int = Field(default=256, ge=1, le=1_000_000)


def _redis_url(value: str) -> str:
    """A redis://, rediss:// or unix:// URL; ValueError otherwise."""
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("names no host (e.g. redis://127.0.0.1:6379/0)")
    if parts.scheme != "unix":
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
        database = parts.path.lstrip("/")
        if database and not database.isdigit():
            raise ValueError(f"the database must be a number (redis://h:6379/0): {database!r}")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("names no socket path (e.g. unix:///run/redis.sock)")
    return value


class CacheConfig(_Section):
    """The result cache: an in-process LRU per process, optionally backed by a shared Redis."""

    enabled: bool = False
    max_entries: int = Field(default=100_000, ge=1, le=100_000_000)
    ttl_s: float = Field(default=60.0, gt=0.0, le=30 * 86_400.0)
    redis_url: Annotated[str, AfterValidator(_redis_url)] | None = None
    redis_timeout_ms: float = Field(default=20.0, gt=0.0, le=60_000.0)
    redis_threads: int = Field(default=2, ge=1, le=64)
    redis_max_pending: int = Field(default=256, ge=1, le=1_000_000)
    redis_retry_s: float = Field(default=1.0, ge=0.0, le=3_600.0)
    redis_key_prefix: str = Field(default="inference:result:", max_length=256)


class LoggingConfig(_Section):
    """Log level and format."""

    level: Literal["debug", "info", "warn", "error", "critical"] = "info"
    format: Literal["text", "json"] = "text"
    access_log: bool = False


class Config(_Section):
    """The whole daemon configuration."""

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    inference: InferenceConfig = InferenceConfig()
    udp: UdpConfig = UdpConfig()
    http: HttpConfig = HttpConfig()
    logging: LoggingConfig = LoggingConfig()
    streams: StreamsConfig = StreamsConfig()
    cache: CacheConfig = CacheConfig()
    admin: AdminConfig = AdminConfig()


def merged_batching(defaults: BatchingConfig, override: Mapping[str, Any]) -> dict[str, Any]:
    """A model's effective batching settings: its non-null overrides on top of the defaults."""
    merged = defaults.model_dump()
    merged.update({k: v for k, v in override.items() if v is not None})
    return merged


def _check_cross_fields(config: Config) -> None:
    if config.server.workers != 1 and config.udp.enabled and config.udp.bind_port:
        raise ConfigError(
            "must be 0 when server.workers is not 1 (each worker binds its own UDP sender)",
            "udp.bind_port",
        )
    tls = config.server.tls
    if tls.enabled and not (tls.cert and tls.key):
        raise ConfigError("TLS is enabled but cert or key is not set", "server.tls")
    if tls.client_ca and not tls.enabled:
        raise ConfigError("client_ca (mutual TLS) needs server.tls.enabled", "server.tls.client_ca")
    if not any(model.enabled for model in config.inference.models.values()):
        raise ConfigError(
            "no model is enabled: the server would have nothing to serve", "inference.models"
        )
    if config.cache.redis_url is not None and not config.cache.enabled:
        raise ConfigError("is set but cache.enabled is false", "cache.redis_url")
    for name, model in config.inference.models.items():
        if model.traffic and not any(model.traffic.values()):
            raise ConfigError(
                "every weight is 0: at least one version must take traffic",
                f"inference.models.{name}.traffic",
            )
        merged = merged_batching(config.inference.batching, model.batching.model_dump())
        batch, queue = merged["max_batch_size"], merged["max_queue"]
        if model.enabled and queue < batch:
            # A queue that cannot hold a full batch never fills one (and warm-up sends one).
            where = (
                f"inference.models.{name}.batching.max_queue"
                if model.batching.max_queue is not None
                else "inference.batching.max_queue"
            )
            raise ConfigError(
                f"{queue} is less than {name}'s max_batch_size {batch}: a batch could never fill",
                where,
            )


def validation_error(error: ValidationError, source: str = "", prefix: str = "") -> ConfigError:
    """A ConfigError naming each key ``error`` found bad, as ``prefix`` + its path.

    ``prefix`` places a nested document (e.g. "inference.models.x.settings.") in the
    whole config; ``source`` (the file) leads each line when given.
    """
    lines = []
    for item in error.errors():
        path = prefix + ".".join(str(p) for p in item["loc"]) if item["loc"] else prefix.rstrip(".")
        if item["type"] == "extra_forbidden":
            problem = "unknown key (check the spelling against config/default.yaml)"
        else:
            problem = f"{item['msg']} (got {item.get('input')!r})"
        lines.append(
            f"{source}: {path or '(top level)'}: {problem}" if source else f"{path}: {problem}"
        )
    first = prefix + ".".join(str(p) for p in error.errors()[0]["loc"])
    if source:
        return ConfigError("\n".join(lines), first)
    named = ConfigError("\n".join(lines))  # each line already starts with its key
    named.path = first
    return named


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate a parsed YAML document; raise ConfigError naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source) from None
    try:
        _check_cross_fields(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.path}: {exc.message}", exc.path) from None
    return config


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a YAML config file (``config/default.yaml`` by default)."""
    file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    return parse_config(data, str(file))


def resolve_path(value: str) -> Path:
    """A config path: absolute as given, relative to the project root otherwise."""
    path = Path(value)
    return path if path.is_absolute() else PROJECT_ROOT / path
