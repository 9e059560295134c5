"""DynamicBatcher step by step with task.Clock and batches the test completes itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from commonlib.batcher import BatchedResult, BatchPolicy, DynamicBatcher
from tests.support import ManualRunner
from util.errors import ErrorCode, ServiceError


def _double(items: Sequence[int]) -> list[int]:
    return [2 * i for i in items]


class Recorder:
    """Collects results and failures of submitted requests."""

    def __init__(self) -> None:
        self.results: dict[Any, BatchedResult[int]] = {}
        self.failures: dict[Any, Exception] = {}

    def watch(self, tag: Any, d: Deferred[BatchedResult[int]]) -> None:
        d.addCallbacks(
            lambda r: self.results.__setitem__(tag, r),
            lambda f: self.failures.__setitem__(tag, f.value),
        )


def make(
    policy: BatchPolicy, fn: Any = _double
) -> tuple[DynamicBatcher[int, int], Clock, ManualRunner]:
    clock = Clock()
    runner = ManualRunner()
    return DynamicBatcher("m", fn, runner, clock, policy), clock, runner


def test_size_trigger_fires_at_exactly_max_batch_size() -> None:
    batcher, _clock, runner = make(
        BatchPolicy(max_batch_size=4, max_wait_s=1.0, eager_when_idle=False)
    )
    rec = Recorder()
    for i in range(3):
        rec.watch(i, batcher.submit("k", i))
    assert runner.pending == []
    rec.watch(3, batcher.submit("k", 3))
    assert len(runner.pending) == 1
    runner.run_pending()
    assert {k: r.output for k, r in rec.results.items()} == {0: 0, 1: 2, 2: 4, 3: 6}
    assert {r.batch_size for r in rec.results.values()} == {4}
    assert batcher.status().batches_run == 1


def test_time_trigger_fires_at_exactly_max_wait() -> None:
    batcher, clock, runner = make(
        BatchPolicy(max_batch_size=8, max_wait_s=0.002, eager_when_idle=False)
    )
    rec = Recorder()
    rec.watch("a", batcher.submit("k", 1))
    clock.advance(0.001)
    rec.watch("b", batcher.submit("k", 2))
    clock.advance(0.000999)
    assert runner.pending == []
    clock.advance(0.000001)
    assert len(runner.pending) == 1
    runner.run_pending()
    assert rec.results["a"].batch_size == 2
    assert rec.results["a"].queue_wait_s == pytest.approx(0.002)
    assert rec.results["b"].queue_wait_s == pytest.approx(0.001)


def test_seed_wait_of_two_seconds_is_honoured() -> None:
    batcher, clock, runner = make(
        BatchPolicy(max_batch_size=8, max_wait_s=2.0, eager_when_idle=False)
    )
    batcher.submit("k", 1)
    clock.advance(1.999)
    assert runner.pending == []
    clock.advance(0.001)
    assert len(runner.pending) == 1


def test_eager_runs_on_the_next_tick_with_everything_from_this_tick() -> None:
    batcher, clock, runner = make(
        BatchPolicy(max_batch_size=8, max_wait_s=1.0, eager_when_idle=True)
    )
    rec = Recorder()
    for i in range(5):
        rec.watch(i, batcher.submit("k", i))
    assert runner.pending == []
    clock.advance(0)
    assert len(runner.pending) == 1
    runner.run_pending()
    assert {r.batch_size for r in rec.results.values()} == {5}


def test_busy_worker_lets_the_queue_grow_and_takes_it_when_free() -> None:
    batcher, clock, runner = make(
        BatchPolicy(max_batch_size=8, max_wait_s=0.002, eager_when_idle=True)
    )
    rec = Recorder()
    rec.watch(0, batcher.submit("k", 0))
    clock.advance(0)
    assert len(runner.pending) == 1
    for i in range(1, 11):
        rec.watch(i, batcher.submit("k", i))
    clock.advance(0.01)  # deadlines pass, but the one slot is busy
    assert len(runner.pending) == 1
    assert batcher.status().depth == 10
    fn, d = runner.pending.pop(0)
    d.callback(fn())
    # Completion starts the next batch at once: the full 8, then the remaining 2.
    assert len(runner.pending) == 1
    runner.run_pending()
    sizes = sorted(r.batch_size for r in rec.results.values())
    assert sizes == [1] + [2] * 2 + [8] * 8
    assert batcher.status().batch_sizes == {1: 1, 8: 1, 2: 1}


def test_next_batch_is_running_before_the_finished_one_is_answered() -> None:
    # The model thread takes the next batch while the reactor encodes and writes the
    # replies of the one that finished, instead of waiting for them.
    batcher, clock, runner = make(
        BatchPolicy(max_batch_size=8, max_wait_s=0.002, eager_when_idle=True)
    )
    pending_when_answered: list[int] = []

    class Sink:
        def batch_done(self, outcomes: list[tuple[object, Any]]) -> None:
            pending_when_answered.append(len(runner.pending))

    sink = Sink()
    batcher.submit_to("k", 0, sink, 0)
    clock.advance(0)
    for i in range(1, 4):
        batcher.submit_to("k", i, sink, i)
    fn, d = runner.pending.pop(0)
    d.callback(fn())
    assert pending_when_answered == [1]
    assert batcher.status().inflight_batches == 1
    runner.run_pending()
    assert pending_when_answered == [1, 0]
    assert batcher.status().batch_sizes == {1: 1, 3: 1}


def test_queues_of_different_keys_are_independent() -> None:
    batcher, clock, runner = make(
        BatchPolicy(
            max_batch_size=2, max_wait_s=0.005, eager_when_idle=False, max_inflight_batches=4
        )
    )
    rec = Recorder()
    rec.watch("a1", batcher.submit("a", 1))
    rec.watch("b1", batcher.submit("b", 10))
    rec.watch("a2", batcher.submit("a", 2))  # fills queue a
    assert len(runner.pending) == 1
    runner.run_pending()
    assert set(rec.results) == {"a1", "a2"}
    clock.advance(0.005)  # b's own deadline
    runner.run_pending()
    assert rec.results["b1"].output == 20 and rec.results["b1"].batch_size == 1


def test_a_failing_batch_fails_only_its_own_requests() -> None:
    def explode_on_13(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("boom")
        return _double(items)

    batcher, _clock, runner = make(
        BatchPolicy(max_batch_size=2, max_wait_s=1.0, eager_when_idle=False), explode_on_13
    )
    rec = Recorder()
    for tag, value in [("x", 13), ("y", 1), ("z", 2), ("w", 3)]:
        rec.watch(tag, batcher.submit("k", value))
    runner.run_pending()
    assert set(rec.failures) == {"x", "y"}
    assert isinstance(rec.failures["x"], RuntimeError)
    assert {k: r.output for k, r in rec.results.items()} == {"z": 4, "w": 6}
    assert batcher.status().batches_failed == 1


def test_wrong_number_of_outputs_is_an_internal_error() -> None:
    batcher, _clock, runner = make(
        BatchPolicy(max_batch_size=2, max_wait_s=1.0, eager_when_idle=False), lambda items: [1]
    )
    rec = Recorder()
    rec.watch("a", batcher.submit("k", 1))
    rec.watch("b", batcher.submit("k", 2))
    runner.run_pending()
    assert isinstance(rec.failures["a"], ServiceError)
    assert rec.failures["a"].code == ErrorCode.INTERNAL


def test_max_queue_rejects_exactly_the_excess() -> None:
    batcher, _clock, _runner = make(
        BatchPolicy(max_batch_size=100, max_wait_s=1.0, eager_when_idle=False, max_queue=5)
    )
    accepted, rejected = 0, 0
    for i in range(8):
        try:
            batcher.submit("k", i)
            accepted += 1
        except ServiceError as exc:
            assert exc.code == ErrorCode.BUSY
            rejected += 1
    assert (accepted, rejected) == (5, 3)
    assert batcher.status().rejected == 3


def test_invalid_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchPolicy(max_batch_size=0)


class CallbackRunner:
    """A runner that hands results to plain callbacks (commonlib.runner's ``run_with``)
    when the test says; its Deferred ``run`` must not be used."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Any, Any]] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, fn: Any) -> Deferred[Any]:
        raise AssertionError("the batcher took a Deferred from a runner offering run_with")

    def run_with(self, fn: Any, done: Any, failed: Any) -> None:
        self.pending.append((fn, done, failed))

    def run_pending(self) -> None:
        while self.pending:
            fn, done, failed = self.pending.pop(0)
            try:
                result = fn()
            except Exception:
                failed(Failure())
            else:
                done(result)


def test_a_runner_with_run_with_runs_batches_without_a_deferred() -> None:
    clock = Clock()
    runner = CallbackRunner()
    policy = BatchPolicy(max_batch_size=2, max_wait_s=1.0, eager_when_idle=False)
    batcher: DynamicBatcher[int, int] = DynamicBatcher("m", _double, runner, clock, policy)
    rec = Recorder()
    for i in range(2):
        rec.watch(i, batcher.submit("k", i))
    runner.run_pending()
    assert {k: r.output for k, r in rec.results.items()} == {0: 0, 1: 2}

    def broken(items: Sequence[int]) -> list[int]:
        raise ValueError("model broke")

    failing: DynamicBatcher[int, int] = DynamicBatcher("m", broken, runner, clock, policy)
    for i in range(2, 4):
        rec.watch(i, failing.submit("k", i))
    runner.run_pending()
    assert {k: type(e) for k, e in rec.failures.items()} == {2: ValueError, 3: ValueError}
    assert failing.status().batches_failed == 1
    assert batcher.status().batches_run == 1
