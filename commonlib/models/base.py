"""The model contract: validation on the reactor thread, batched work on a worker.

A request's life inside a model:

1. ``prepare`` (reactor thread, cheap): check the input and config against the
   schema and return a :class:`PreparedInput`; raise :class:`InvalidInput` if not.
2. ``batch_key`` (once per distinct config): requests with equal keys can share
   one forward pass.
3. ``run_batch`` (worker thread): ``preprocess`` the whole batch into one array,
   ``predict`` it in one vectorised call, ``postprocess`` into one
   :class:`ModelOutput` per request, in order.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pydantic

from util.errors import InvalidInput

FloatArray = npt.NDArray[np.float32]
_PLAN_CACHE_SIZE = 4096
ConfigScalar = int | float | bool | str


@dataclass(frozen=True)
class ConfigParam:
    """One typed, bounded setting a request may pass in its config map."""

    kind: type[int] | type[float] | type[bool]
    default: int | float | bool
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""
    choices: tuple[int | float | bool, ...] | None = None
    """When set, the only values accepted (described as ``enum``)."""

    def coerce(self, key: str, value: ConfigScalar) -> int | float | bool:
        """Return ``value`` as this parameter's type or raise InvalidInput."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise InvalidInput(f"config '{key}' must be a bool, got {_type_name(value)}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(
                f"config '{key}' must be {self.kind.__name__}, got {_type_name(value)}"
            )
        if self.kind is int:
            if not isinstance(value, int):
                raise InvalidInput(f"config '{key}' must be an int, got float")
        elif not math.isfinite(value):
            raise InvalidInput(f"config '{key}' must be finite")
        if self.minimum is not None and value < self.minimum:
            raise InvalidInput(f"config '{key}' = {value} is below the minimum {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidInput(f"config '{key}' = {value} is above the maximum {self.maximum:g}")
        if self.choices is not None and value not in self.choices:
            accepted = ", ".join(str(c) for c in self.choices)
            raise InvalidInput(f"config '{key}' = {value} is not accepted (accepted: {accepted})")
        return self.kind(value)

    def describe(self) -> dict[str, Any]:
        """JSON-able description of this parameter for ListModels and /models."""
        out: dict[str, Any] = {"type": self.kind.__name__, "default": self.default}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices is not None:
            out["enum"] = list(self.choices)
        if self.doc:
            out["description"] = self.doc
        return out


def _type_name(value: object) -> str:
    return type(value).__name__


@dataclass(slots=True)
class PreparedInput:
    """A validated request: a 1-D float32 series, its complete config, and its batch key.

    Requests with equal ``batch_key`` may share one forward pass. ``values`` may be a
    read-only view of the request's bytes (``Tensor.raw_values``): models copy, never
    write into it.
    """

    values: FloatArray
    config: Mapping[str, int | float | bool]
    batch_key: Hashable = None
    version: str = ""
    """The model version that runs it (set by the daemon's facade when it routes it)."""


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What one distinct request config resolves to, computed once and cached."""

    config: Mapping[str, int | float | bool]
    batch_key: Hashable
    min_length: int


@dataclass(slots=True)
class ModelOutput:
    """One request's result: predictions and, where the model has one, confidence."""

    predictions: FloatArray
    confidence: FloatArray | None = None


@dataclass(frozen=True)
class InputSchema:
    """Bounds on the input series a model accepts."""

    min_length: int = 1
    max_length: int = 4096
    description: str = ""
    min_length_param: str | None = None
    """A config key whose value the series must be at least as long as (e.g. window_size)."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description for ListModels and /models."""
        out: dict[str, Any] = {
            "type": "float32 series",
            "shape": "[n], [n, 1] or empty (n = the number of values)",
            "min_length": self.min_length,
            "max_length": self.max_length,
            "description": self.description,
        }
        if self.min_length_param:
            out["min_length_config"] = self.min_length_param
        return out


class ModelSettings(pydantic.BaseModel):
    """A model's ``settings`` from the config: strict, frozen, unknown keys forbidden.

    A model with settings declares them as a subclass of this (one typed, bounded
    field per setting, each with its default) named in ``BaseModel.settings_model``;
    the daemon validates ``inference.models.<name>.settings`` against it at start.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)


class SettingsError(ValueError):
    """A model cannot serve with its settings (found in ``load``); ``setting`` names the key."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class BaseModel(ABC):
    """A model served by the daemon. Register subclasses with ``model_factory``.

    Subclasses set ``description``, ``config_params``, ``input_schema`` and
    ``output_description`` and implement ``batch_key``, ``preprocess``, ``predict``
    and ``postprocess``. Heavy state (weights) is created in ``load``, which runs on
    a worker thread; the constructor must stay cheap. A model with settings sets
    ``settings_model`` to its :class:`ModelSettings` subclass and narrows the
    ``settings`` annotation to it; ``load`` raises :class:`SettingsError` naming the
    setting that makes the model unusable (a missing checkpoint, say).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    config_params: ClassVar[Mapping[str, ConfigParam]] = {}
    input_schema: ClassVar[InputSchema] = InputSchema()
    output_description: ClassVar[str] = ""
    settings_model: ClassVar[type[ModelSettings]] = ModelSettings
    settings: ModelSettings

    def __init__(
        self, settings: Mapping[str, Any] | ModelSettings | None = None, device: str = "cpu"
    ) -> None:
        self.settings = self.parse_settings(settings)
        self.device = device
        self._plans: dict[tuple[Any, ...], RequestPlan] = {}

    @classmethod
    def parse_settings(cls, settings: Mapping[str, Any] | ModelSettings | None) -> ModelSettings:
        """``settings`` as a ``settings_model``; pydantic.ValidationError if they do not fit."""
        if isinstance(settings, cls.settings_model):
            return settings
        if isinstance(settings, ModelSettings):
            settings = settings.model_dump()
        return cls.settings_model.model_validate(dict(settings or {}))

    @property
    def compute_path(self) -> str:
        """What runs the forward pass (e.g. a C kernel or TorchScript), for the start-up log.

        Empty when there is nothing to choose between (the default).
        """
        return ""

    # -- schema -------------------------------------------------------------
    def accepted_params(self) -> Mapping[str, ConfigParam]:
        """The request config this instance accepts: ``config_params`` unless its settings
        narrow them (a value that must equal a setting)."""
        return self.config_params

    def describe_input(self) -> dict[str, Any]:
        """The input and config schema as a JSON-able dict."""
        return {
            "input": self.input_schema.describe(),
            "config": {k: p.describe() for k, p in self.accepted_params().items()},
        }

    @classmethod
    def describe_output(cls) -> dict[str, Any]:
        """The output schema as a JSON-able dict."""
        return {"predictions": "float32 series", "description": cls.output_description}

    def prepare(
        self, values: Sequence[float] | FloatArray, config: Mapping[str, ConfigScalar]
    ) -> PreparedInput:
        """Validate one request's shape and config (reactor thread). Raises InvalidInput.

        Everything that depends only on the config (resolution, cross-field checks,
        the batch key, the minimum length) is computed once per distinct config and
        cached; per request only the series is converted and its length checked.
        Finiteness is checked per batch in ``run_batch``, vectorised.
        """
        plan = self.plan(config)
        array = as_float32_series(values)
        n = array.shape[0]
        if n < plan.min_length:
            raise InvalidInput(self._too_short(n, plan))
        if n > self.input_schema.max_length:
            raise InvalidInput(
                f"input has {n} values; {self.name} accepts at most {self.input_schema.max_length}"
            )
        return PreparedInput(array, plan.config, plan.batch_key)

    def plan(self, config: Mapping[str, ConfigScalar]) -> RequestPlan:
        """The cached :class:`RequestPlan` of ``config``; InvalidInput if it is not valid."""
        # The key carries each value's type, since True == 1 == 1.0 would otherwise collide.
        cache_key = tuple([(k, v.__class__, v) for k, v in config.items()])
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._make_plan(config)
            if len(self._plans) < _PLAN_CACHE_SIZE:
                self._plans[cache_key] = plan
        return plan

    def _make_plan(self, config: Mapping[str, ConfigScalar]) -> RequestPlan:
        resolved = self.resolve_config(config)
        self.check_config(resolved)
        schema = self.input_schema
        min_length = schema.min_length
        if schema.min_length_param is not None:
            min_length = max(min_length, int(resolved[schema.min_length_param]))
        return RequestPlan(resolved, self.batch_key(resolved), min_length)

    def _too_short(self, n: int, plan: RequestPlan) -> str:
        schema = self.input_schema
        if n < schema.min_length or schema.min_length_param is None:
            return f"input has {n} values; {self.name} needs at least {schema.min_length}"
        return f"input has {n} values but {schema.min_length_param} is {plan.min_length}"

    def resolve_config(
        self, config: Mapping[str, ConfigScalar]
    ) -> Mapping[str, int | float | bool]:
        """The request's config checked against ``accepted_params``, defaults filled in."""
        params = self.accepted_params()
        resolved: dict[str, int | float | bool] = {}
        for key, value in config.items():
            param = params.get(key)
            if param is None:
                raise InvalidInput(
                    f"unknown config key '{key}' for {self.name}; "
                    f"known: {', '.join(sorted(params))}"
                )
            resolved[key] = param.coerce(key, value)
        for key, param in params.items():
            if key not in resolved:
                resolved[key] = param.default
        return resolved

    def check_config(  # noqa: B027 - optional hook
        self, config: Mapping[str, int | float | bool]
    ) -> None:
        """Cross-field checks of a resolved config (run once per distinct config).

        Raise InvalidInput. The series' minimum length is declared instead, with
        ``InputSchema.min_length_param``.
        """

    def warmup_request(self) -> tuple[FloatArray, dict[str, ConfigScalar]]:
        """A valid dummy request (input, config) for the warm-up batch at start."""
        length = max(self.input_schema.min_length, 32)
        return np.sin(np.linspace(0.0, 6.0, length, dtype=np.float32)), {}

    @abstractmethod
    def batch_key(self, config: Mapping[str, int | float | bool]) -> Hashable:
        """Requests whose resolved configs give equal keys may run in one forward pass."""

    # -- worker thread ------------------------------------------------------
    def load(self) -> None:  # noqa: B027 - optional hook: models without weights skip it
        """Load weights or other heavy state (worker thread)."""

    @abstractmethod
    def preprocess(self, batch: Sequence[PreparedInput]) -> Any:
        """Turn a batch of requests into one model input (e.g. a [B, T] array)."""

    @abstractmethod
    def predict(self, batch_input: Any) -> Any:
        """One vectorised forward pass over the whole batch."""

    @abstractmethod
    def postprocess(self, raw: Any, batch: Sequence[PreparedInput]) -> list[ModelOutput]:
        """Split the forward pass's output into one result per request, in order."""

    def run_batch(self, batch: Sequence[PreparedInput]) -> Sequence[ModelOutput | InvalidInput]:
        """Run one batch (worker thread): one result per item, in order.

        Non-finite inputs are found here, with one vectorised check for the whole
        batch rather than one per request on the reactor; each such request gets
        InvalidInput, and the others run exactly as they would have alone.
        """
        bad = non_finite_items(batch)
        if not bad:
            return self.forward(batch)
        clean = [item for i, item in enumerate(batch) if i not in bad]
        ran = iter(self.forward(clean) if clean else [])
        error = InvalidInput("input contains NaN or infinite values")
        return [error if i in bad else next(ran) for i in range(len(batch))]

    def forward(self, batch: Sequence[PreparedInput]) -> list[ModelOutput]:
        """preprocess → one vectorised predict → postprocess."""
        outputs = self.postprocess(self.predict(self.preprocess(batch)), batch)
        if len(outputs) != len(batch):
            raise RuntimeError(
                f"{self.name} returned {len(outputs)} outputs for {len(batch)} inputs"
            )
        return outputs


def as_float32_series(values: Sequence[float] | FloatArray) -> FloatArray:
    """``values`` as a 1-D float32 array; InvalidInput if it is not a flat series."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 1:
        raise InvalidInput(f"input must be a flat series of values, got shape {list(array.shape)}")
    return array


def non_finite_items(batch: Sequence[PreparedInput]) -> set[int]:
    """Indexes of the items whose input holds NaN or ±inf (usually none)."""
    flat = batch[0].values if len(batch) == 1 else np.concatenate([item.values for item in batch])
    if np.isfinite(flat).all():
        return set()
    return {i for i, item in enumerate(batch) if not np.isfinite(item.values).all()}


@dataclass
class ModelSpec:
    """A registered model class with the settings the config gives it."""

    cls: type[BaseModel]
    settings: ModelSettings = field(default_factory=ModelSettings)
    verify: Callable[[], None] | None = None
    """Run (worker thread) before each load, e.g. the weights' checksum; raises if unusable."""

    @property
    def name(self) -> str:
        """The model's registered name."""
        return self.cls.name

    @property
    def version(self) -> str:
        """The model's version string."""
        return self.cls.version
