"""Character streams: server-held state, stepped per model on a fixed tick (docs/streams.md).

The engine keeps, per model and stream key, a :class:`StreamGroup`: one slot per
open stream, with dense per-slot arrays (pending observation, pending flag, owner
connection id, character id, last observation time, generation) and the slot's
state rows in a :class:`~commonlib.state_table.StateTable`. A Tick packet writes
its rows into ``pending_obs`` with index operations (latest wins: overwriting a
row not yet stepped counts as coalesced), never a Python object per character.

Each model has a tick clock (:class:`~commonlib.tick_clock.GridTicker` on the
injected clock at ``tick_hz``, on the wall-clock grid every process shares). At
each tick the slots with a pending observation are stepped in one ``stream_step``
per group on the daemon's BatchRunner (a worker thread: the state
tensors are only touched there), and the outputs go to the sink: a TickResult per
owning connection and a UDP snapshot. A tick that fires while the previous step is
still running, and ticks the clock reports as skipped, are counted as missed and
never queued: under overload the engine skips ticks instead of falling behind.
"""

from __future__ import annotations

import commonlib.torch_env  # noqa: F401 - sets OMP_NUM_THREADS before torch loads

# isort: split

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from commonlib.batcher import BatchRunner
from commonlib.models.base import BaseModel, ConfigScalar, FloatArray
from commonlib.models.streaming import StreamingModel, StreamSpec
from commonlib.state_table import StateTable
from commonlib.stats import BucketHistogram
from commonlib.tick_clock import GridTicker
from util.errors import ErrorCode, InvalidInput, ServiceError, StreamError, UnknownModel

log = Logger()

IdArray = npt.NDArray[np.uint32]
IndexArray = npt.NDArray[np.int64]

TICK_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.033,
    0.066,
    0.25,
    1.0,
)
CHARACTERS_BUCKETS: tuple[float, ...] = (1, 4, 16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536)

CLOSE_CLIENT = 0
"""CloseReason CLIENT: the client sent StreamClose."""
CLOSE_IDLE = 1
"""CloseReason IDLE: no observation for ``idle_timeout_s``."""


class StreamOwner(Protocol):
    """Whoever owns streams: a client connection (only its id is read here)."""

    connection_id: int


@dataclass(frozen=True)
class StreamLimits:
    """The ``streams:`` config section, as the engine uses it."""

    enabled: bool = True
    tick_hz: float = 60.0
    max_per_connection: int = 4096
    max_total: int = 65_536
    idle_timeout_s: float = 30.0
    initial_capacity: int = 256


@dataclass(frozen=True)
class OpenedStream:
    """What StreamOpened reports about a stream just opened."""

    character_id: int
    model: str
    version: str
    spec: StreamSpec
    tick_hz: float
    next_tick: int
    next_tick_time_us: int


@dataclass(frozen=True, slots=True)
class ConsumedTick:
    """The newest Tick packet a server tick consumed from one connection."""

    request_id: int
    client_tick: int
    client_time_us: int


@dataclass(slots=True)
class OwnerPart:
    """One connection's rows of a group's tick output."""

    owner: StreamOwner
    consumed: ConsumedTick
    ids: IdArray
    outputs: FloatArray


@dataclass
class TickOutput:
    """One stepped group of one server tick: every row, and the rows per owning connection.

    ``error`` is set (and ``outputs`` empty) when the step failed.
    """

    model: str
    tick: int
    tick_time_us: int
    output_width: int
    ids: IdArray
    outputs: FloatArray
    parts: list[OwnerPart]
    batch_size: int
    step_ms: float
    tick_lag_ms: float
    error: str | None = None


class StreamSink(Protocol):
    """Where the engine's results go (aiServer/stream_replies.py encodes and sends them)."""

    def tick_done(self, output: TickOutput) -> None:
        """One group's outputs of one tick (or its failure)."""
        ...

    def stream_closed(self, owner: StreamOwner, character_id: int, reason: int) -> None:
        """The server closed a stream on its own (idle timeout): tell its owner."""
        ...


class StreamGroup:
    """The streams of one model whose configs share a stream key: slots and pending rows.

    The numpy arrays are the reactor thread's; ``table`` (the state tensors) is
    the worker thread's. A slot's initial state is queued (``take_inits``) and
    written by the next step that runs on the worker, before it gathers.
    """

    def __init__(
        self, key: Hashable, spec: StreamSpec, capacity: int, device: str, version: str = ""
    ) -> None:
        self.key = key
        self.version = version  # the model version its streams opened on and step with
        self.spec = spec
        self.table = StateTable(spec.state_shapes, capacity, device)
        self.capacity = capacity
        self.in_use = np.zeros(capacity, dtype=np.bool_)
        self.pending = np.zeros(capacity, dtype=np.bool_)
        self.pending_obs = np.zeros((capacity, spec.input_width), dtype=np.float32)
        self.owner = np.zeros(capacity, dtype=np.int64)
        self.character = np.zeros(capacity, dtype=np.uint32)
        self.last_seen = np.zeros(capacity, dtype=np.float64)
        self.generation = np.zeros(capacity, dtype=np.int64)
        self.open_count = 0
        # Lowest slot first, so a small table stays dense.
        self._free = list(range(capacity - 1, -1, -1))
        self._inits: list[tuple[int, tuple[FloatArray, ...]]] = []

    def allocate(
        self, owner_id: int, character_id: int, state: tuple[FloatArray, ...], now: float
    ) -> int:
        """A free slot for a new stream (doubling the arrays when full)."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.in_use[slot] = True
        self.pending[slot] = False
        self.owner[slot] = owner_id
        self.character[slot] = character_id
        self.last_seen[slot] = now
        self._inits.append((slot, state))
        self.open_count += 1
        return slot

    def release(self, slot: int) -> None:
        """Free a slot at once; a step already running for it is discarded on delivery."""
        self.in_use[slot] = False
        self.pending[slot] = False
        self.generation[slot] += 1
        self.open_count -= 1
        self._free.append(slot)

    def take_inits(self) -> list[tuple[int, tuple[FloatArray, ...]]]:
        """The initial states queued since the last step (for the worker to write)."""
        inits, self._inits = self._inits, []
        return inits

    def _grow(self) -> None:
        old = self.capacity
        new = old * 2
        for name in ("in_use", "pending", "owner", "character", "last_seen", "generation"):
            array = getattr(self, name)
            grown = np.zeros(new, dtype=array.dtype)
            grown[:old] = array
            setattr(self, name, grown)
        obs = np.zeros((new, self.spec.input_width), dtype=np.float32)
        obs[:old] = self.pending_obs
        self.pending_obs = obs
        self.capacity = new
        self._free.extend(range(new - 1, old - 1, -1))


@dataclass(slots=True)
class _GroupStep:
    """One group's share of a tick, built on the reactor and run on the worker."""

    group: StreamGroup
    capacity: int
    inits: list[tuple[int, tuple[FloatArray, ...]]]
    slots: IndexArray
    observations: FloatArray
    characters: IdArray
    owners: IndexArray
    generations: IndexArray
    outputs: FloatArray | None = None


@dataclass
class _TickRun:
    """A launched tick: what its delivery needs when the step comes back."""

    ms: ModelStreams
    steps: Sequence[_GroupStep]
    tick: int
    scheduled: float
    started: float
    consumed: Mapping[int, ConsumedTick]

    @property
    def batch_size(self) -> int:
        """Characters stepped in this tick (all groups)."""
        return sum(len(step.slots) for step in self.steps)


@dataclass
class _Index:
    """One connection's open streams of one model, sorted by character id for searchsorted."""

    keys: IdArray
    groups: IndexArray
    slots: IndexArray


_EMPTY_INDEX = _Index(
    np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
)


@dataclass
class _OwnerStreams:
    """One connection's streams: character id → (model, group position, slot)."""

    owner: StreamOwner
    streams: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    index: dict[str, _Index] = field(default_factory=dict)

    def lookup(self, model: str) -> _Index:
        index = self.index.get(model)
        if index is None:
            rows = sorted(
                (cid, group, slot) for cid, (m, group, slot) in self.streams.items() if m == model
            )
            if rows:
                keys, groups, slots = zip(*rows, strict=True)
                index = _Index(
                    np.array(keys, dtype=np.uint32),
                    np.array(groups, dtype=np.int64),
                    np.array(slots, dtype=np.int64),
                )
            else:
                index = _EMPTY_INDEX
            self.index[model] = index
        return index


class ModelStreams:
    """One model's stream groups, tick clock and counters."""

    def __init__(self, name: str, model: BaseModel, tick_hz: float) -> None:
        self.name = name
        self.model = model
        self.streaming: StreamingModel | None = model if isinstance(model, StreamingModel) else None
        self.interval = 1.0 / tick_hz
        self.groups: list[StreamGroup] = []
        self.group_of_key: dict[Hashable, int] = {}
        self.ticker: GridTicker | None = None
        self.tick = 0
        self.running = False
        self.latest: dict[int, ConsumedTick] = {}
        # Counters (metrics).
        self.ticks_stepped = 0
        self.ticks_missed = 0
        self.coalesced = 0
        self.observations = 0
        self.steps_failed = 0
        self.closed_idle = 0
        self.step_seconds = BucketHistogram(TICK_SECONDS_BUCKETS)
        self.characters = BucketHistogram(CHARACTERS_BUCKETS)

    @property
    def open_streams(self) -> int:
        """Streams open on this model now."""
        return sum(group.open_count for group in self.groups)

    def next_tick(self, now: float) -> int:
        """The number of the first tick after ``now`` (even if the clock runs late)."""
        if self.ticker is None or not self.ticker.running:
            return self.tick + 1
        return max(self.tick + 1, self.ticker.next_tick(now))

    def tick_time(self, tick: int) -> float:
        """The scheduled clock time of server tick ``tick``."""
        if self.ticker is None or not self.ticker.running:
            return tick * self.interval
        return self.ticker.tick_time(tick)


class StreamEngine:
    """Opens, closes and ticks the character streams of every enabled model.

    ``models`` are the facade's unloaded model instances (config checks, stream
    specs); ``load(name, version)`` returns the loaded one on the worker thread
    (version "": the model's default). A stream steps with the version it opened on
    until it closes: groups are per (version, stream key).
    """

    def __init__(
        self,
        models: Mapping[str, BaseModel],
        load: Callable[[str, str], BaseModel],
        runner: BatchRunner,
        clock: IReactorTime,
        sink: StreamSink,
        limits: StreamLimits | None = None,
        device: str = "cpu",
    ) -> None:
        self.limits = limits if limits is not None else StreamLimits()
        self._load = load
        self._runner = runner
        self._clock = clock
        self.sink = sink
        self.device = device
        self.models = {
            name: ModelStreams(name, model, self.limits.tick_hz) for name, model in models.items()
        }
        self._owners: dict[int, _OwnerStreams] = {}
        self.total_open = 0

    # -- open / close ------------------------------------------------------------------
    def open(
        self,
        owner: StreamOwner,
        model: str,
        version: str,
        character_id: int,
        config: Mapping[str, ConfigScalar],
        initial_state: bytes = b"",
        validator: BaseModel | None = None,
    ) -> OpenedStream:
        """Open one character's stream; ServiceError (a typed code) if refused.

        ``validator``: the unloaded instance of the (already resolved) ``version`` the
        stream opens on; None: the engine's model, whose version ``version`` must be.
        """
        ms = self._streaming_model(model)
        if validator is None:
            validator = ms.model
            if version and version != ms.model.version:
                raise UnknownModel(
                    f"model '{model}' has no version '{version}' (serving {ms.model.version})"
                )
            version = ms.model.version
        streaming = validator if isinstance(validator, StreamingModel) else None
        assert streaming is not None
        owner_streams = self._owners.get(owner.connection_id)
        if owner_streams is not None and character_id in owner_streams.streams:
            raise StreamError(
                ErrorCode.STREAM_EXISTS,
                f"character {character_id} already has an open stream on this connection",
                [character_id],
            )
        open_here = len(owner_streams.streams) if owner_streams is not None else 0
        limits = self.limits
        if open_here >= limits.max_per_connection:
            raise StreamError(
                ErrorCode.TOO_MANY_STREAMS,
                f"this connection has {open_here} streams open "
                f"(streams.max_per_connection={limits.max_per_connection})",
                [character_id],
            )
        if self.total_open >= limits.max_total:
            raise StreamError(
                ErrorCode.TOO_MANY_STREAMS,
                f"{self.total_open} streams open on this server "
                f"(streams.max_total={limits.max_total})",
                [character_id],
            )
        resolved = validator.plan(config).config
        spec = streaming.stream_spec(resolved)
        state = self._initial_state(streaming, resolved, spec, initial_state)
        key = streaming.stream_key(resolved)
        position = ms.group_of_key.get((version, key))
        if position is None:
            position = len(ms.groups)
            ms.groups.append(StreamGroup(key, spec, limits.initial_capacity, self.device, version))
            ms.group_of_key[(version, key)] = position
        slot = ms.groups[position].allocate(
            owner.connection_id, character_id, state, self._clock.seconds()
        )
        if owner_streams is None:
            owner_streams = self._owners[owner.connection_id] = _OwnerStreams(owner)
        owner_streams.streams[character_id] = (model, position, slot)
        owner_streams.index.pop(model, None)
        self.total_open += 1
        self._start_clock(ms)
        next_tick = ms.next_tick(self._clock.seconds())
        return OpenedStream(
            character_id,
            model,
            version,
            spec,
            limits.tick_hz,
            next_tick,
            round(ms.tick_time(next_tick) * 1_000_000),
        )

    def _streaming_model(self, model: str) -> ModelStreams:
        ms = self.models.get(model)
        if ms is None:
            raise UnknownModel(
                f"no model named '{model}'; available: {', '.join(sorted(self.models))}"
            )
        if not self.limits.enabled:
            raise ServiceError(
                ErrorCode.STREAMS_UNSUPPORTED, "character streams are disabled (streams.enabled)"
            )
        if ms.streaming is None:
            with_support = sorted(n for n, m in self.models.items() if m.streaming is not None)
            raise ServiceError(
                ErrorCode.STREAMS_UNSUPPORTED,
                f"model '{model}' has no stream support; models with streams: "
                f"{', '.join(with_support) or 'none'}",
            )
        return ms

    @staticmethod
    def _initial_state(
        streaming: StreamingModel,
        config: Mapping[str, int | float | bool],
        spec: StreamSpec,
        initial_state: bytes,
    ) -> tuple[FloatArray, ...]:
        if not initial_state:
            return tuple(
                np.ascontiguousarray(part, dtype=np.float32)
                for part in streaming.initial_state(config)
            )
        expected = spec.state_width * 4
        if len(initial_state) != expected:
            raise InvalidInput(
                f"initial_state has {len(initial_state)} bytes; this stream's state is "
                f"{spec.state_width} float32 values ({expected} bytes) or empty"
            )
        flat = np.frombuffer(initial_state, dtype="<f4").astype(np.float32)
        if not np.isfinite(flat).all():
            raise InvalidInput("initial_state contains NaN or infinite values")
        parts = []
        start = 0
        for shape in spec.state_shapes:
            size = int(np.prod(shape, dtype=np.int64))
            parts.append(flat[start : start + size].reshape(shape))
            start += size
        state = tuple(parts)
        streaming.check_initial_state(config, state)
        return state

    def close(self, owner: StreamOwner, character_id: int) -> None:
        """Close one stream and free its slot; StreamError UNKNOWN_STREAM if not open."""
        owner_streams = self._owners.get(owner.connection_id)
        if owner_streams is None or character_id not in owner_streams.streams:
            raise StreamError(
                ErrorCode.UNKNOWN_STREAM,
                f"character {character_id} has no open stream on this connection",
                [character_id],
            )
        self._free(owner_streams, character_id)

    def _free(self, owner_streams: _OwnerStreams, character_id: int) -> None:
        model, position, slot = owner_streams.streams.pop(character_id)
        owner_streams.index.pop(model, None)
        ms = self.models[model]
        ms.groups[position].release(slot)
        self.total_open -= 1
        if not owner_streams.streams:
            self._owners.pop(owner_streams.owner.connection_id, None)
            for each in self.models.values():
                each.latest.pop(owner_streams.owner.connection_id, None)

    def drop_owner(self, owner: StreamOwner) -> int:
        """Free every stream of a connection that went away; how many."""
        owner_streams = self._owners.get(owner.connection_id)
        if owner_streams is None:
            return 0
        count = len(owner_streams.streams)
        for character_id in list(owner_streams.streams):
            self._free(owner_streams, character_id)
        return count

    def open_on(self, model: str, version: str) -> int:
        """Streams open on one version of a model."""
        ms = self.models.get(model)
        if ms is None:
            return 0
        return sum(g.open_count for g in ms.groups if g.version == version)

    def streams_of(self, owner: StreamOwner) -> int:
        """Streams a connection holds open."""
        owner_streams = self._owners.get(owner.connection_id)
        return len(owner_streams.streams) if owner_streams is not None else 0

    # -- observations --------------------------------------------------------------------
    def observe(
        self,
        owner: StreamOwner,
        model: str,
        consumed: ConsumedTick,
        ids: IdArray,
        observations: FloatArray,
    ) -> list[StreamError]:
        """Take one Tick packet's rows (latest wins); the errors about some of its characters.

        Raises StreamError (nothing taken) when the packet as a whole is refused:
        unknown model, repeated ids, or observations not as wide as the streams'.
        """
        ms = self._streaming_model(model)
        n = len(ids)
        if n == 0:
            return []
        if n > 1:
            ordered = np.sort(ids)
            repeated = ordered[1:] == ordered[:-1]
            if repeated.any():
                dup = np.unique(ordered[1:][repeated])
                raise StreamError(
                    ErrorCode.INVALID_INPUT,
                    f"Tick repeats {len(dup)} character id(s); each character may appear "
                    "once per Tick (the whole packet was dropped)",
                    dup.tolist(),
                )
        owner_streams = self._owners.get(owner.connection_id)
        index = owner_streams.lookup(model) if owner_streams is not None else _EMPTY_INDEX
        keys = index.keys
        if len(keys):
            pos = np.searchsorted(keys, ids)
            np.minimum(pos, len(keys) - 1, out=pos)
            found = keys[pos] == ids
        else:
            pos = np.zeros(n, dtype=np.int64)
            found = np.zeros(n, dtype=np.bool_)
        errors: list[StreamError] = []
        if not found.all():
            unknown = ids[~found]
            errors.append(
                StreamError(
                    ErrorCode.UNKNOWN_STREAM,
                    f"{len(unknown)} character id(s) of this Tick have no open {model} stream "
                    "on this connection (never opened, or closed); the others were taken",
                    unknown.tolist(),
                )
            )
            if not found.any():
                return errors
        width = observations.shape[1]
        groups = ms.groups
        group_positions = index.groups[pos]
        single = len(groups) == 1
        touched = [0] if single else np.unique(group_positions[found]).tolist()
        for g in touched:
            if groups[g].spec.input_width != width:
                raise StreamError(
                    ErrorCode.INVALID_INPUT,
                    f"Tick observations are {width} floats per character but {model} "
                    f"streams take {groups[g].spec.input_width} (the whole packet was dropped)",
                )
        finite = np.isfinite(observations).all(axis=1)
        take = found & finite
        if not finite.all():
            bad = ids[found & ~finite]
            if len(bad):
                errors.append(
                    StreamError(
                        ErrorCode.INVALID_INPUT,
                        f"observation of {len(bad)} character(s) contains NaN or infinite "
                        "values; they were not stepped, the others were taken",
                        bad.tolist(),
                    )
                )
            if not take.any():
                return errors
        now = self._clock.seconds()
        taken = 0
        for g in touched:
            rows = take if single else take & (group_positions == g)
            slots = index.slots[pos[rows]]
            group = groups[g]
            ms.coalesced += int(np.count_nonzero(group.pending[slots]))
            group.pending[slots] = True
            group.pending_obs[slots] = observations[rows]
            group.last_seen[slots] = now
            taken += len(slots)
        ms.observations += taken
        ms.latest[owner.connection_id] = consumed
        return errors

    # -- warm-up ----------------------------------------------------------------------------
    def warm_up(self) -> Deferred[None]:
        """Run one stream step of 1 and of 64 characters per stream model (worker thread).

        Torch is slow on the first calls of new shapes; the daemon runs this before it
        listens, so the first real tick is as fast as the later ones.
        """
        names = [n for n, ms in self.models.items() if ms.streaming is not None]
        if not self.limits.enabled or not names:
            return succeed(None)
        runs = [self._runner.run(partial(self._warm_step, name)) for name in names]
        return gatherResults(runs, consumeErrors=True).addCallback(lambda _: None)

    def _warm_step(self, name: str) -> None:
        self.warm_model(self._load(name, ""))

    def warm_model(self, model: BaseModel) -> None:
        """Worker thread: a stream step of 1 and of 64 characters through a loaded model."""
        if not self.limits.enabled or not isinstance(model, StreamingModel):
            return
        config = model.plan({}).config
        spec = model.stream_spec(config)
        initial = model.initial_state(config)
        with torch.inference_mode():
            for batch in (1, 64):
                state = tuple(
                    torch.from_numpy(np.stack([part] * batch)).to(self.device) for part in initial
                )
                obs = torch.zeros((batch, spec.input_width), device=self.device)
                model.stream_step_for_key(model.stream_key(config), obs, state)

    # -- the tick --------------------------------------------------------------------------
    def _start_clock(self, ms: ModelStreams) -> None:
        if ms.ticker is not None:
            return
        ms.ticker = GridTicker(
            self._clock, ms.interval, partial(self._on_tick, ms), f"{ms.name} streams"
        )
        ms.ticker.start()

    def stop(self) -> None:
        """Stop every tick clock (the daemon is stopping)."""
        for ms in self.models.values():
            if ms.ticker is not None:
                ms.ticker.stop()
            ms.ticker = None

    def _on_tick(self, ms: ModelStreams, count: int) -> None:
        ms.tick += count
        if count > 1:
            ms.ticks_missed += count - 1
        now = self._clock.seconds()
        self._expire_idle(ms, now)
        if ms.running:
            ms.ticks_missed += 1
            return
        steps = []
        for group in ms.groups:
            if not group.open_count:
                continue
            slots = np.flatnonzero(group.pending)
            if not len(slots):
                continue
            group.pending[slots] = False
            steps.append(
                _GroupStep(
                    group,
                    group.capacity,
                    group.take_inits(),
                    slots,
                    group.pending_obs[slots],
                    group.character[slots],
                    group.owner[slots],
                    group.generation[slots],
                )
            )
        if not steps:
            return
        ms.running = True
        tick = ms.tick
        scheduled = ms.tick_time(tick)
        consumed = {
            owner: ms.latest[owner]
            for owner in np.unique(np.concatenate([s.owners for s in steps])).tolist()
            if owner in ms.latest
        }
        run = _TickRun(ms, steps, tick, scheduled, now, consumed)
        d: Deferred[float] = self._runner.run(lambda: self._run_steps(ms.name, steps))
        d.addCallbacks(self._stepped, self._step_failed, callbackArgs=(run,), errbackArgs=(run,))

    def _run_steps(self, name: str, steps: Sequence[_GroupStep]) -> float:
        """Worker thread: write queued initial states, gather, step, scatter; the wall time."""
        started = time.perf_counter()
        with torch.inference_mode():
            for step in steps:
                group = step.group
                model = self._load(name, group.version)
                if not isinstance(model, StreamingModel):
                    raise TypeError(f"model '{name}' has no stream support")
                table = group.table
                table.ensure_capacity(step.capacity)
                table.write_many(step.inits)
                index = torch.from_numpy(step.slots).to(table.device)
                state = table.gather(index)
                obs = torch.from_numpy(step.observations).to(table.device)
                outputs, new_state = model.stream_step_for_key(group.key, obs, state)
                expected = (len(step.slots), group.spec.output_width)
                if tuple(outputs.shape) != expected:
                    raise RuntimeError(
                        f"{name}.stream_step returned outputs of shape {tuple(outputs.shape)}, "
                        f"expected {expected}"
                    )
                table.scatter(index, new_state)
                step.outputs = np.ascontiguousarray(
                    outputs.detach().to("cpu", torch.float32).numpy()
                )
        return time.perf_counter() - started

    def _stepped(self, step_s: float, run: _TickRun) -> None:
        run.ms.ticks_stepped += 1
        run.ms.step_seconds.observe(step_s)
        run.ms.characters.observe(run.batch_size)
        self._deliver(run, step_s, None)

    def _step_failed(self, failure: Failure, run: _TickRun) -> None:
        run.ms.steps_failed += 1
        log.failure("stream step of {model} failed", failure, model=run.ms.name)
        self._deliver(run, 0.0, f"stream step failed: {failure.value!r}")

    def _deliver(self, run: _TickRun, step_s: float, error: str | None) -> None:
        """Hand each group's outputs to the sink, without the streams closed meanwhile."""
        run.ms.running = False
        for step in run.steps:
            live = step.group.generation[step.slots] == step.generations
            ids, owners = step.characters, step.owners
            outputs = (
                step.outputs
                if step.outputs is not None and error is None
                else np.zeros((len(ids), 0), dtype=np.float32)
            )
            if not live.all():
                ids, owners, outputs = ids[live], owners[live], outputs[live]
            self.sink.tick_done(
                TickOutput(
                    run.ms.name,
                    run.tick,
                    round(run.scheduled * 1_000_000),
                    step.group.spec.output_width,
                    ids,
                    outputs,
                    self._split_by_owner(ids, owners, outputs, run.consumed),
                    run.batch_size,
                    step_s * 1000.0,
                    (run.started - run.scheduled) * 1000.0,
                    error,
                )
            )

    def _split_by_owner(
        self,
        ids: IdArray,
        owners: IndexArray,
        outputs: FloatArray,
        consumed: Mapping[int, ConsumedTick],
    ) -> list[OwnerPart]:
        if not len(ids):
            return []
        parts = []
        first = int(owners[0])
        if (owners == first).all():
            chunks: list[tuple[int, Any]] = [(first, slice(None))]
        else:
            order = np.argsort(owners, kind="stable")
            ordered = owners[order]
            bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
            # One chunk of row positions per connection.
            chunks = [(int(owners[chunk[0]]), chunk) for chunk in np.split(order, bounds)]
        for owner_id, rows in chunks:
            owner_streams = self._owners.get(owner_id)
            if owner_streams is None:
                continue
            parts.append(
                OwnerPart(
                    owner_streams.owner,
                    consumed.get(owner_id, ConsumedTick(0, 0, 0)),
                    ids[rows],
                    outputs[rows],
                )
            )
        return parts

    def _expire_idle(self, ms: ModelStreams, now: float) -> None:
        cutoff = now - self.limits.idle_timeout_s
        for group in ms.groups:
            if not group.open_count:
                continue
            expired = np.flatnonzero(group.in_use & (group.last_seen <= cutoff))
            for slot in expired.tolist():
                owner_streams = self._owners[int(group.owner[slot])]
                character_id = int(group.character[slot])
                self._free(owner_streams, character_id)
                ms.closed_idle += 1
                self.sink.stream_closed(owner_streams.owner, character_id, CLOSE_IDLE)
