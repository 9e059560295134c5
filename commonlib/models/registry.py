"""The model registry: a model joins with ``@model_factory.register("name")``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from commonlib.models.base import BaseModel, ModelSettings

M = TypeVar("M", bound=type[BaseModel])


class ModelFactory:
    """Maps model names to their classes and builds instances."""

    def __init__(self) -> None:
        self._classes: dict[str, type[BaseModel]] = {}

    def register(self, name: str) -> Callable[[M], M]:
        """Class decorator: register a BaseModel subclass under ``name``."""

        def decorate(cls: M) -> M:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"model name '{name}' is already registered")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> type[BaseModel]:
        """The class registered as ``name``; KeyError if none."""
        return self._classes[name]

    def create(
        self,
        name: str,
        settings: Mapping[str, Any] | ModelSettings | None = None,
        device: str = "cpu",
    ) -> BaseModel:
        """A new, not yet loaded instance of the model ``name``."""
        return self._classes[name](settings, device)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


model_factory = ModelFactory()
"""The process-wide registry that the bundled models register into."""
