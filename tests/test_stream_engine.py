"""The stream engine on task.Clock with a manual runner: slots, latest wins, the tick, limits."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from twisted.internet.task import Clock

from commonlib.models.base import BaseModel, ConfigParam, ModelOutput, PreparedInput
from commonlib.models.moving_average import MovingAverageModel
from commonlib.models.streaming import ResolvedConfig, StreamingModel, StreamSpec, StreamState
from commonlib.streams import (
    CLOSE_IDLE,
    ConsumedTick,
    StreamEngine,
    StreamLimits,
    StreamOwner,
    TickOutput,
)
from tests.support import ManualRunner
from util.errors import ErrorCode, ServiceError, StreamError

HZ = 10.0
TICK = 1 / HZ


class SumModel(BaseModel, StreamingModel):
    """Each character's state is the running sum of its observations times ``scale``."""

    name = "summer"
    config_params = {"scale": ConfigParam(float, 1.0, 0.0, 10.0)}

    def batch_key(self, config: Mapping[str, int | float | bool]) -> Hashable:
        return None

    def preprocess(self, batch: Sequence[PreparedInput]) -> Any:
        return batch

    def predict(self, batch_input: Any) -> Any:
        return batch_input

    def postprocess(self, raw: Any, batch: Sequence[PreparedInput]) -> list[ModelOutput]:
        return []

    def stream_spec(self, config: ResolvedConfig) -> StreamSpec:
        return StreamSpec(2, 2, ((2,),))

    def stream_key(self, config: ResolvedConfig) -> Hashable:
        return config["scale"]

    def stream_step(
        self, observations: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, StreamState]:
        raise AssertionError("the engine calls stream_step_for_key")

    def stream_step_for_key(
        self, key: Hashable, observations: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, StreamState]:
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(observations.shape[0])
        total = state[0] + observations * float(key)  # type: ignore[arg-type]
        return total.clone(), (total,)

    fail = False

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []


@dataclass
class Owner:
    connection_id: int


class Sink:
    """Records what the engine hands out."""

    def __init__(self) -> None:
        self.outputs: list[TickOutput] = []
        self.closed: list[tuple[int, int, int]] = []

    def tick_done(self, output: TickOutput) -> None:
        self.outputs.append(output)

    def stream_closed(self, owner: StreamOwner, character_id: int, reason: int) -> None:
        self.closed.append((owner.connection_id, character_id, reason))

    def take(self) -> dict[int, list[float]]:
        """Every character's output row of the outputs since the last call."""
        rows: dict[int, list[float]] = {}
        for output in self.outputs:
            rows.update(zip(output.ids.tolist(), output.outputs.tolist(), strict=True))
        self.outputs.clear()
        return rows


@dataclass
class Rig:
    engine: StreamEngine
    clock: Clock
    runner: ManualRunner
    sink: Sink
    model: SumModel

    def observe(self, owner: Owner, ids: list[int], rows: list[list[float]], rid: int = 1) -> Any:
        return self.engine.observe(
            owner,
            "summer",
            ConsumedTick(rid, rid * 10, rid * 100),
            np.array(ids, dtype=np.uint32),
            np.array(rows, dtype=np.float32).reshape(len(ids), -1),
        )

    def tick(self, periods: int = 1) -> int:
        """Advance ``periods`` tick periods, then run what was launched; steps run."""
        self.clock.advance(TICK * periods)
        return self.runner.run_pending()


def make_rig(**limits: Any) -> Rig:
    clock = Clock()
    runner = ManualRunner()
    sink = Sink()
    model = SumModel()
    models: dict[str, BaseModel] = {"summer": model, "moving_average": MovingAverageModel()}
    engine = StreamEngine(
        models,
        lambda name, version: models[name],
        runner,
        clock,
        sink,
        StreamLimits(**{"tick_hz": HZ, "initial_capacity": 4, **limits}),
    )
    return Rig(engine, clock, runner, sink, model)


A, B = Owner(1), Owner(2)


def test_latest_observation_wins_and_replaced_ones_are_counted_coalesced() -> None:
    rig = make_rig()
    for cid in (7, 8):
        rig.engine.open(A, "summer", "", cid, {})
    assert rig.observe(A, [7], [[1.0, 1.0]]) == []
    rig.observe(A, [7, 8], [[5.0, 6.0], [2.0, 2.0]], rid=2)
    assert rig.engine.models["summer"].coalesced == 1
    assert rig.tick() == 1
    (output,) = rig.sink.outputs
    assert output.tick == 1 and output.batch_size == 2
    assert rig.sink.take() == {7: [5.0, 6.0], 8: [2.0, 2.0]}
    assert rig.tick() == 0, "nothing new: no step"


def test_characters_without_an_observation_keep_their_state() -> None:
    rig = make_rig()
    for cid in (1, 2):
        rig.engine.open(A, "summer", "", cid, {"scale": 2.0})
    rig.observe(A, [1, 2], [[1.0, 0.0], [1.0, 0.0]])
    rig.tick()
    rig.observe(A, [1], [[1.0, 0.0]])
    rig.tick()
    assert rig.sink.take() == {1: [4.0, 0.0], 2: [2.0, 0.0]}
    rig.observe(A, [2], [[0.5, 0.0]])
    rig.tick()
    assert rig.sink.take() == {2: [3.0, 0.0]}, "2 kept its state through the tick it skipped"


def test_a_tick_while_the_step_runs_is_missed_and_never_queued() -> None:
    rig = make_rig()
    rig.engine.open(A, "summer", "", 1, {})
    ms = rig.engine.models["summer"]
    rig.observe(A, [1], [[1.0, 1.0]])
    rig.clock.advance(TICK)  # launches the step; the runner holds it (still running)
    rig.observe(A, [1], [[10.0, 10.0]])
    for _ in range(3):
        rig.clock.advance(TICK)
    assert ms.ticks_missed == 3 and len(rig.runner.pending) == 1
    rig.runner.run_pending()
    assert rig.sink.take() == {1: [1.0, 1.0]}
    rig.clock.advance(TICK * 3.5)  # the clock fell behind: one call with count 3
    assert ms.ticks_missed == 5 and ms.tick == 7
    rig.runner.run_pending()
    assert rig.sink.take() == {1: [11.0, 11.0]}, "the pending observation stepped once"
    assert ms.ticks_stepped == 2


def test_idle_streams_are_closed_freed_and_their_owner_told() -> None:
    rig = make_rig(idle_timeout_s=1.0)
    rig.engine.open(A, "summer", "", 1, {})
    rig.engine.open(A, "summer", "", 2, {})
    for _ in range(6):
        rig.observe(A, [2], [[1.0, 1.0]])
        rig.tick(2)
    assert rig.sink.closed == [(1, 1, CLOSE_IDLE)]
    assert rig.engine.total_open == 1 and rig.engine.models["summer"].closed_idle == 1
    errors = rig.observe(A, [1, 2], [[1.0, 1.0], [1.0, 1.0]])
    assert [(e.code, e.character_ids) for e in errors] == [(ErrorCode.UNKNOWN_STREAM, [1])]


def test_tables_grow_by_doubling_and_keep_every_stream_state() -> None:
    rig = make_rig()  # initial capacity 4
    for cid in range(3):
        rig.engine.open(A, "summer", "", cid, {})
    rig.observe(A, [0, 1, 2], [[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    rig.tick()
    for cid in range(3, 10):
        rig.engine.open(A, "summer", "", cid, {})
    group = rig.engine.models["summer"].groups[0]
    assert group.capacity == 16
    ids = list(range(10))
    rig.observe(A, ids, [[1.0, 0.0]] * 10)
    rig.tick()
    assert group.table.capacity == 16
    assert rig.sink.take() == {i: [1.0 + (i + 1 if i < 3 else 0), 0.0] for i in ids}


def test_a_slot_freed_during_a_step_is_not_reported_and_its_reuse_starts_fresh() -> None:
    rig = make_rig()
    rig.engine.open(A, "summer", "", 1, {})
    rig.observe(A, [1], [[3.0, 3.0]])
    rig.clock.advance(TICK)  # step launched, not run
    rig.engine.close(A, 1)
    rig.engine.open(B, "summer", "", 9, {}, np.array([0.5, 0.5], "<f4").tobytes())
    rig.runner.run_pending()  # the old step scatters into the (reused) slot
    assert rig.sink.take() == {}
    rig.observe(B, [9], [[1.0, 1.0]])
    rig.tick()
    assert rig.sink.take() == {9: [1.5, 1.5]}, "the new stream began from its own state"


def test_each_owner_gets_its_rows_and_its_newest_consumed_tick() -> None:
    rig = make_rig()
    rig.engine.open(A, "summer", "", 1, {})
    rig.engine.open(B, "summer", "", 1, {})  # ids are per connection
    rig.engine.open(A, "summer", "", 2, {})
    rig.observe(A, [1], [[1.0, 1.0]], rid=3)
    rig.observe(B, [1], [[2.0, 2.0]], rid=4)
    rig.observe(A, [2], [[3.0, 3.0]], rid=5)
    rig.tick()
    (output,) = rig.sink.outputs
    parts = {part.owner.connection_id: part for part in output.parts}
    assert parts[1].consumed == ConsumedTick(5, 50, 500)
    assert parts[1].ids.tolist() == [1, 2] and parts[1].outputs.tolist() == [[1, 1], [3, 3]]
    assert parts[2].consumed == ConsumedTick(4, 40, 400)
    assert parts[2].ids.tolist() == [1] and parts[2].outputs.tolist() == [[2, 2]]


def test_streams_with_different_keys_step_in_separate_groups() -> None:
    rig = make_rig()
    rig.engine.open(A, "summer", "", 1, {"scale": 1.0})
    rig.engine.open(A, "summer", "", 2, {"scale": 3.0})
    rig.observe(A, [1, 2], [[1.0, 1.0], [1.0, 1.0]])
    rig.tick()
    assert len(rig.sink.outputs) == 2
    assert rig.sink.take() == {1: [1.0, 1.0], 2: [3.0, 3.0]}


def test_dropping_an_owner_frees_every_stream_at_once() -> None:
    rig = make_rig(max_total=3)
    for cid in range(3):
        rig.engine.open(A, "summer", "", cid, {})
    assert rig.engine.drop_owner(A) == 3
    assert rig.engine.total_open == 0 and rig.engine.models["summer"].open_streams == 0
    for cid in range(3):
        rig.engine.open(B, "summer", "", cid, {})


@pytest.mark.parametrize(
    ("limits", "model", "config", "state", "code", "words"),
    [
        ({}, "nope", {}, b"", ErrorCode.UNKNOWN_MODEL, "no model named 'nope'"),
        ({}, "moving_average", {}, b"", ErrorCode.STREAMS_UNSUPPORTED, "no stream support"),
        ({"enabled": False}, "summer", {}, b"", ErrorCode.STREAMS_UNSUPPORTED, "disabled"),
        ({}, "summer", {"scale": 99.0}, b"", ErrorCode.INVALID_INPUT, "above the maximum"),
        ({}, "summer", {}, b"\0" * 12, ErrorCode.INVALID_INPUT, "2 float32 values (8 bytes)"),
        ({}, "summer", {}, np.array([1, np.nan], "<f4").tobytes(), ErrorCode.INVALID_INPUT, "NaN"),
        ({"max_per_connection": 1}, "summer", {}, b"", ErrorCode.TOO_MANY_STREAMS, "max_per_"),
        ({"max_total": 1}, "summer", {}, b"", ErrorCode.TOO_MANY_STREAMS, "max_total=1"),
    ],
)
def test_refused_opens_get_typed_errors(
    limits: dict[str, Any],
    model: str,
    config: dict[str, Any],
    state: bytes,
    code: ErrorCode,
    words: str,
) -> None:
    rig = make_rig(**limits)
    if "max_" in str(limits):
        rig.engine.open(A, "summer", "", 100, {})
    with pytest.raises(ServiceError) as raised:
        rig.engine.open(A, model, "", 1, config, state)
    assert raised.value.code == code and words in raised.value.message


def test_duplicate_ids_and_closing_unknown_ones_are_refused() -> None:
    rig = make_rig()
    rig.engine.open(A, "summer", "", 1, {})
    with pytest.raises(StreamError) as raised:
        rig.engine.open(A, "summer", "", 1, {})
    assert raised.value.code == ErrorCode.STREAM_EXISTS and raised.value.character_ids == [1]
    with pytest.raises(StreamError) as raised:
        rig.engine.close(A, 2)
    assert raised.value.code == ErrorCode.UNKNOWN_STREAM and raised.value.character_ids == [2]
    with pytest.raises(ServiceError) as version:
        rig.engine.open(A, "summer", "9", 3, {})
    assert version.value.code == ErrorCode.UNKNOWN_MODEL


def test_opened_reports_widths_and_the_next_tick_phase() -> None:
    rig = make_rig()
    rig.clock.advance(100.0)
    first = rig.engine.open(A, "summer", "", 1, {})
    assert (first.next_tick, first.next_tick_time_us) == (1, round((100.0 + TICK) * 1e6))
    assert (first.spec.input_width, first.spec.output_width, first.spec.state_width) == (2, 2, 2)
    rig.clock.advance(TICK * 2.5)
    later = rig.engine.open(A, "summer", "", 2, {})
    assert (later.next_tick, later.next_tick_time_us) == (3, round((100.0 + 3 * TICK) * 1e6))


def test_ticks_fall_on_the_clock_grid_shared_by_every_process() -> None:
    # Two daemons (or workers) whose first streams open at different times tick together.
    first, second = make_rig(), make_rig()
    first.clock.advance(100.004)
    second.clock.advance(100.011)
    a = first.engine.open(A, "summer", "", 1, {})
    b = second.engine.open(A, "summer", "", 1, {})
    grid = round(1001 * TICK * 1e6)  # the first multiple of the period after 100.011 s
    assert a.next_tick_time_us == b.next_tick_time_us == grid


@pytest.mark.allow_logged_errors
def test_a_failed_step_reports_an_error_to_its_owners_and_the_tick_goes_on() -> None:
    rig = make_rig()
    rig.engine.open(A, "summer", "", 1, {})
    rig.model.fail = True
    rig.observe(A, [1], [[1.0, 1.0]], rid=6)
    rig.tick()
    (output,) = rig.sink.outputs
    assert output.error is not None and "boom" in output.error
    assert output.parts[0].ids.tolist() == [1] and output.parts[0].consumed.request_id == 6
    rig.sink.outputs.clear()
    rig.model.fail = False
    rig.observe(A, [1], [[1.0, 1.0]])
    rig.tick()
    assert rig.sink.take() == {1: [1.0, 1.0]}
    assert rig.engine.models["summer"].steps_failed == 1


def test_warm_up_steps_each_stream_model_at_two_batch_sizes_before_serving() -> None:
    rig = make_rig()
    done: list[None] = []
    rig.engine.warm_up().addCallback(done.append)
    assert not done
    rig.runner.run_pending()
    assert done == [None] and rig.model.batches == [1, 64]
    assert rig.engine.total_open == 0 and rig.engine.models["summer"].groups == []
