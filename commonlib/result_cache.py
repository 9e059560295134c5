"""The result cache: answer a repeated inference request without running the model.

A result is keyed by model, version, the input's float32 bytes and the resolved
config (all of them hashed into one 128-bit BLAKE2b digest). A lookup goes through
up to two tiers:

1. the in-process LRU (:class:`ResultLru`, reactor thread, one dict lookup): a hit
   is answered at once, before the batcher;
2. optionally a shared Redis (:mod:`commonlib.redis_cache`), looked up off the
   reactor thread with a short timeout: a hit is copied into the LRU and answered;
   a miss, a timeout, an error or a full pool sends the request to the batcher, as
   if there were no cache. Redis never fails a request.

After the model has run a request its result is stored in the LRU and (fire and
forget) in Redis, for the model's TTL. Errors are never stored.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from commonlib.batcher import BatchedResult
from commonlib.models.base import ModelOutput, PreparedInput
from util.errors import ServiceError

CachedResult = BatchedResult[ModelOutput]


_F4LE = np.dtype("<f4")


def _key_prefix(model: str, version: str, config: Mapping[str, object]) -> bytes:
    return f"{model}\0{version}\0{sorted(config.items())!r}\0".encode()


def _digest(prefix: bytes, values: np.ndarray[Any, Any]) -> bytes:
    if values.dtype is not _F4LE and values.dtype != _F4LE:  # "is": the usual, quick case
        values = values.astype(_F4LE)
    return hashlib.blake2b(prefix + values.tobytes(), digest_size=16).digest()


def cache_key(model: str, version: str, prepared: PreparedInput) -> bytes:
    """The 16-byte digest of (model, version, resolved config, input float32 bytes).

    The config is taken resolved (defaults filled in), so a request that spells
    out a default and one that leaves it out share their result.
    """
    return _digest(_key_prefix(model, version, prepared.config), prepared.values)


class KeyMaker:
    """:func:`cache_key`, with the (model, version, config) part kept per config object.

    Requests with the same config share one resolved-config object (the model's
    cached plan), so its text is made once rather than per request. Each memo holds
    the config itself, so its ``id`` cannot be reused while it is remembered.
    """

    MAX_CONFIGS = 4096

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, str, int], tuple[object, bytes]] = {}

    def __call__(self, model: str, version: str, prepared: PreparedInput) -> bytes:
        config = prepared.config
        memo = self._prefixes.get((model, version, id(config)))
        if memo is not None and memo[0] is config:
            prefix = memo[1]
        else:
            prefix = _key_prefix(model, version, config)
            if len(self._prefixes) >= self.MAX_CONFIGS:
                self._prefixes.clear()
            self._prefixes[(model, version, id(config))] = (config, prefix)
        return _digest(prefix, prepared.values)


_HEADER = struct.Struct("<BII")
_FORMAT = 1


def encode_output(output: ModelOutput) -> bytes:
    """``output`` as bytes (in the LRU and in Redis): format byte, two counts, then the
    float32 LE values. A copy: it holds no view into the batch's arrays."""
    predictions = output.predictions.astype(_F4LE, copy=False).tobytes()
    if output.confidence is None:
        return _HEADER.pack(_FORMAT, len(predictions) // 4, 0) + predictions
    confidence = output.confidence.astype(_F4LE, copy=False).tobytes()
    header = _HEADER.pack(_FORMAT, len(predictions) // 4, len(confidence) // 4)
    return header + predictions + confidence


def decode_output(data: bytes) -> ModelOutput:
    """The inverse of :func:`encode_output`; ValueError if ``data`` is not one."""
    if len(data) < _HEADER.size:
        raise ValueError(f"{len(data)} bytes is shorter than the header")
    fmt, n_predictions, n_confidence = _HEADER.unpack_from(data)
    if fmt != _FORMAT or len(data) != _HEADER.size + 4 * (n_predictions + n_confidence):
        raise ValueError(f"not a cached result (format {fmt}, {len(data)} bytes)")
    values = np.frombuffer(data, dtype=_F4LE, offset=_HEADER.size)  # read-only, as bytes are
    if not n_confidence:
        return ModelOutput(values)
    return ModelOutput(values[:n_predictions], values[n_predictions:])


_Entry = tuple[bytes, float, str]
"""An LRU entry: the output as :func:`encode_output` bytes, when it expires, its model.

Bytes in a tuple rather than arrays in objects: an entry is two small objects the
garbage collector stops tracking, not five it keeps scanning.
"""


class ResultLru:
    """At most ``max_entries`` results, least recently used evicted first, each with a TTL.

    Counts per model the entries evicted for room (``evictions``) and those found
    expired (``expired``).
    """

    def __init__(self, max_entries: int, seconds: Callable[[], float]) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._seconds = seconds
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.evictions: Counter[str] = Counter()
        self.expired: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> bytes | None:
        """The live entry under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        data, expires, model = entry
        if expires <= self._seconds():
            del self._entries[key]
            self.expired[model] += 1
            return None
        self._entries.move_to_end(key)
        return data

    def put(self, key: bytes, model: str, data: bytes, ttl_s: float) -> None:
        """Store ``data`` for ``ttl_s`` seconds; past the bound, evict the least recently used."""
        entries = self._entries
        entries.pop(key, None)  # a key stored again goes to the end, as a new one does
        entries[key] = (data, self._seconds() + ttl_s, model)
        while len(entries) > self.max_entries:
            _, evicted = entries.popitem(last=False)
            self.evictions[evicted[2]] += 1


class RemoteTier(Protocol):
    """A shared cache behind the LRU (commonlib.redis_cache.RedisTier).

    ``failures`` counts, by (model, reason), the calls that failed or were skipped.
    """

    failures: Counter[tuple[str, str]]

    def start(self) -> None:
        """Get ready (e.g. start threads)."""
        ...

    def stop(self) -> None:
        """Release threads and connections."""
        ...

    def lookup(self, model: str, version: str, key: bytes) -> Deferred[tuple[bytes, float] | None]:
        """(the output as :func:`encode_output` bytes, checked; seconds it stays valid), or
        None on a miss or any failure; never fails."""
        ...

    def store(self, model: str, version: str, key: bytes, data: bytes, ttl_s: float) -> None:
        """Store ``data`` (an encoded output) for ``ttl_s`` seconds, in the background;
        failures are counted."""
        ...


@dataclass
class CacheStats:
    """One model's lookups: answered by the LRU or Redis, run on the model, or bypassed."""

    hits: Counter[str] = field(default_factory=Counter)
    misses: int = 0
    bypassed: int = 0


Submit = Callable[[], Deferred[CachedResult]]


class ResultCache:
    """The result cache in front of each model's batcher (see the module docstring).

    ``ttls`` gives each cached model's TTL in seconds; a model missing from it (or
    with 0) is never cached.
    """

    def __init__(
        self,
        max_entries: int,
        ttls: Mapping[str, float],
        clock: IReactorTime,
        remote: RemoteTier | None = None,
    ) -> None:
        self.lru = ResultLru(max_entries, clock.seconds)
        self._key = KeyMaker()
        self.ttls = {model: ttl for model, ttl in ttls.items() if ttl > 0}
        self.remote = remote
        self.stats: dict[str, CacheStats] = {model: CacheStats() for model in ttls}

    def start(self) -> None:
        """Start the remote tier's threads, if there is one."""
        if self.remote is not None:
            self.remote.start()

    def stop(self) -> None:
        """Stop the remote tier, if there is one."""
        if self.remote is not None:
            self.remote.stop()

    def infer(
        self,
        model: str,
        version: str,
        prepared: PreparedInput,
        submit: Submit,
        bypass: bool = False,
    ) -> Deferred[CachedResult]:
        """The cached result of ``prepared``, or ``submit()``'s (then stored).

        ``submit`` queues the request on the model's batcher; it may raise
        ServiceError (BUSY), at once when the LRU misses without Redis.
        """
        ttl = self.ttls.get(model)
        if ttl is None:
            return submit()
        stats = self.stats[model]
        if bypass:
            stats.bypassed += 1
            return submit()
        key = self._key(model, version, prepared)
        data = self.lru.get(key)
        if data is not None:
            stats.hits["local"] += 1
            return succeed(BatchedResult(decode_output(data), 0.0, 0, 0.0, cache_hit=True))
        remote = self.remote
        if remote is None:
            stats.misses += 1
            return self._run(model, version, key, ttl, submit)
        looked_up = remote.lookup(model, version, key)
        return looked_up.addCallback(self._after_remote, model, version, key, ttl, submit)

    def _after_remote(
        self,
        found: tuple[bytes, float] | None,
        model: str,
        version: str,
        key: bytes,
        ttl: float,
        submit: Submit,
    ) -> Deferred[CachedResult]:
        stats = self.stats[model]
        if found is not None:
            data, valid_s = found
            stats.hits["redis"] += 1
            self.lru.put(key, model, data, min(ttl, valid_s))
            return succeed(BatchedResult(decode_output(data), 0.0, 0, 0.0, cache_hit=True))
        stats.misses += 1
        try:
            return self._run(model, version, key, ttl, submit)
        except ServiceError as exc:  # BUSY: the reply is an error, as without a cache
            return fail(exc)

    def _run(
        self, model: str, version: str, key: bytes, ttl: float, submit: Submit
    ) -> Deferred[CachedResult]:
        return submit().addCallback(self._store, model, version, key, ttl)

    def _store(
        self, result: CachedResult, model: str, version: str, key: bytes, ttl: float
    ) -> CachedResult:
        data = encode_output(result.output)
        self.lru.put(key, model, data, ttl)
        if self.remote is not None:
            self.remote.store(model, version, key, data, ttl)
        return result
