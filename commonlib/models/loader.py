"""An LRU loader holding at most ``capacity`` loaded models.

``get`` is called from worker threads (loading weights blocks), so the cache is
guarded by a lock; a model being loaded by one thread is waited for by others.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from commonlib.models.base import BaseModel, ModelSpec


@dataclass(frozen=True)
class CacheInfo:
    """A snapshot of the loader's cache."""

    loaded: int
    capacity: int
    hits: int
    misses: int
    evictions: int
    loaded_models: tuple[str, ...]
    load_seconds: Mapping[str, float] = field(default_factory=dict)


class ModelLoader:
    """Creates, loads and caches model instances, evicting the least recently used."""

    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        capacity: int,
        device: str = "cpu",
        on_load: Callable[[str, float], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._specs = dict(specs)
        self._capacity = capacity
        self._device = device
        self._on_load = on_load
        self._cache: OrderedDict[str, BaseModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Event] = {}
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._load_seconds: dict[str, float] = {}

    def get(self, name: str) -> BaseModel:
        """The loaded model ``name``, loading it (blocking) on a miss. KeyError if unknown."""
        spec = self._specs[name]
        while True:
            with self._lock:
                model = self._cache.get(name)
                if model is not None:
                    self._cache.move_to_end(name)
                    self._hits += 1
                    return model
                pending = self._loading.get(name)
                if pending is None:
                    self._misses += 1
                    done = threading.Event()
                    self._loading[name] = done
                    break
            pending.wait()
        try:
            started = time.perf_counter()
            if spec.verify is not None:
                spec.verify()
            model = spec.cls(spec.settings, self._device)
            model.load()
            elapsed = time.perf_counter() - started
            with self._lock:
                if self._specs.get(name) is spec:  # not removed or replaced meanwhile
                    self._insert(name, model, elapsed)
            if self._on_load is not None:
                self._on_load(name, elapsed)
            return model
        finally:
            with self._lock:
                del self._loading[name]
            done.set()

    def _insert(self, name: str, model: BaseModel, seconds: float) -> None:
        # Under the lock.
        self._cache[name] = model
        self._cache.move_to_end(name)
        self._load_seconds[name] = seconds
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
            self._evictions += 1

    def add_spec(self, name: str, spec: ModelSpec) -> None:
        """Serve ``name`` from ``spec``, loaded by the first ``get``."""
        with self._lock:
            self._specs[name] = spec

    def add(self, name: str, spec: ModelSpec, model: BaseModel, seconds: float) -> None:
        """Serve ``name`` from ``spec``, with ``model`` (already loaded from it) cached.

        Replaces an entry of the same name: a batch already running keeps the instance
        it got, the next ``get`` returns ``model``.
        """
        with self._lock:
            self._specs[name] = spec
            self._insert(name, model, seconds)
        if self._on_load is not None:
            self._on_load(name, seconds)

    def remove(self, name: str) -> None:
        """Forget ``name`` and free its instance (a ``get`` of it then raises KeyError)."""
        with self._lock:
            self._specs.pop(name, None)
            self._cache.pop(name, None)
            self._load_seconds.pop(name, None)

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` is in the cache now."""
        with self._lock:
            return name in self._cache

    def cache_info(self) -> CacheInfo:
        """Loaded count, capacity, hits, misses, evictions and which models are loaded."""
        with self._lock:
            return CacheInfo(
                loaded=len(self._cache),
                capacity=self._capacity,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                loaded_models=tuple(self._cache),
                load_seconds=dict(self._load_seconds),
            )
