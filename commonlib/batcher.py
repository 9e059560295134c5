"""Dynamic batching: gather requests into one forward pass, answer each Deferred.

One :class:`DynamicBatcher` serves one model. Requests are queued by batch key
(requests with equal keys can share a forward pass). A queue becomes a batch when

* it holds ``max_batch_size`` requests (size trigger), or
* ``max_wait_s`` has passed since its oldest request arrived (time trigger), or
* ``eager_when_idle`` is set and the model has a free batch slot: the queue is then
  taken on the next reactor tick, so that every request that arrived in the same
  tick (e.g. many pipelined frames in one read) joins the batch, and a lone request
  is not held back waiting for company.

At most ``max_inflight_batches`` batches of a model run at once; the rest wait in
their queues and grow, which is what makes batches larger under load.

A request submitted with :meth:`DynamicBatcher.submit` gets a Deferred of its own;
one submitted with :meth:`DynamicBatcher.submit_to` costs no Deferred: its outcome
goes to its :class:`BatchSink`, once per batch with the outcomes of every request
of that batch that named the same sink (so the sink can answer a batch at once).
Time comes only from the injected clock, so tests drive it with ``task.Clock``.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from commonlib.admission import ModelAdmission
from commonlib.stats import LATENCY_BUCKETS_S, BucketHistogram
from util.errors import ErrorCode, ServiceError

I = TypeVar("I")  # noqa: E741 - item type, conventional single letter
O = TypeVar("O")  # noqa: E741
T = TypeVar("T")


class BatchRunner(Protocol):
    """Runs a blocking callable somewhere other than the reactor thread."""

    def start(self) -> None:
        """Get ready to run work (e.g. start threads)."""
        ...

    def stop(self) -> None:
        """Finish queued work and release resources."""
        ...

    def run(self, fn: Callable[[], T]) -> Deferred[T]:
        """Call ``fn`` and fire the Deferred with its result (on the reactor thread)."""
        ...


@runtime_checkable
class CallbackRunner(BatchRunner, Protocol):
    """A BatchRunner that can also hand a result to plain callbacks (commonlib.runner).

    The batcher uses :meth:`run_with` when its runner has it: a batch then costs no
    Deferred and no callback chain on the reactor thread.
    """

    def run_with(
        self, fn: Callable[[], T], done: Callable[[T], object], failed: Callable[[Failure], object]
    ) -> None:
        """Call ``fn``, then ``done(result)`` or ``failed(Failure)`` on the reactor thread."""
        ...


@dataclass(frozen=True)
class BatchPolicy:
    """When a queue becomes a batch, and how many batches may run at once."""

    max_batch_size: int = 8
    max_wait_s: float = 0.002
    eager_when_idle: bool = True
    max_inflight_batches: int = 1
    max_queue: int = 1024
    queue_timeout_s: float = 0.0
    max_queue_delay_s: float = 0.0
    overload_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        if self.max_inflight_batches < 1:
            raise ValueError("max_inflight_batches must be at least 1")
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if self.queue_timeout_s < 0:
            raise ValueError("queue_timeout_s must not be negative")
        if self.max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_s must not be negative")
        if self.overload_interval_s < 0:
            raise ValueError("overload_interval_s must not be negative")


@dataclass(slots=True)
class BatchedResult(Generic[O]):
    """One request's output with the timings of the batch it ran in.

    ``cache_hit``: the output came from the result cache (commonlib/result_cache.py)
    and no batch ran it (then the timings are 0).
    """

    output: O
    queue_wait_s: float
    batch_size: int
    inference_s: float
    cache_hit: bool = False


class BatchSink(Protocol[O]):
    """Takes the outcomes of requests submitted with ``submit_to``, a batch at a time."""

    def batch_done(self, outcomes: list[tuple[object, BatchedResult[O] | Failure]]) -> None:
        """(token, result or failure) of each request, in submission order."""
        ...


@dataclass(slots=True)
class _Pending(Generic[I, O]):
    item: I
    deferred: Deferred[BatchedResult[O]] | None  # None: the outcome goes to ``sink``
    enqueued: float
    sink: BatchSink[O] | None = None
    token: object = None


@dataclass
class _Queue(Generic[I, O]):
    items: deque[_Pending[I, O]] = field(default_factory=deque)
    timer: IDelayedCall | None = None
    reaper: IDelayedCall | None = None
    expired: bool = False


@dataclass(frozen=True)
class QueueStatus:
    """A snapshot of one model's batcher."""

    model: str
    depth: int
    keys: int
    inflight_batches: int
    batches_run: int
    requests_run: int
    batches_failed: int
    rejected: int
    timed_out: int
    batch_sizes: dict[int, int]

    @property
    def mean_batch_size(self) -> float:
        """Requests per batch so far (0 before the first batch)."""
        return self.requests_run / self.batches_run if self.batches_run else 0.0


class DynamicBatcher(Generic[I, O]):
    """Batches one model's requests and runs each batch through ``runner``.

    ``run_batch`` receives the items of one batch, in arrival order, and must return
    one output per item in the same order; it runs on the runner's thread. An output
    that is an ``Exception`` fails only its own request; an exception raised by
    ``run_batch`` fails every request of the batch.
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[Sequence[I]], Sequence[O | Exception]],
        runner: BatchRunner,
        clock: IReactorTime,
        policy: BatchPolicy,
        admission: ModelAdmission | None = None,
    ) -> None:
        self.name = name
        self.admission = admission
        if admission is not None:
            admission.full_batch = policy.max_batch_size
        self.policy = policy
        self._run_batch = run_batch
        self._runner = runner
        self._run_with = runner.run_with if isinstance(runner, CallbackRunner) else None
        self._clock = clock
        self._seconds = clock.seconds
        self._queues: dict[Hashable, _Queue[I, O]] = {}
        self._depth = 0
        self._inflight = 0
        self._running = 0  # requests in the batches running now
        self._tick: IDelayedCall | None = None
        self._batches_run = 0
        self._requests_run = 0
        self._batches_failed = 0
        self._rejected = 0
        self._timed_out = 0
        self._batch_sizes: Counter[int] = Counter()
        self.queue_wait = BucketHistogram(LATENCY_BUCKETS_S)
        self.inference_time = BucketHistogram(LATENCY_BUCKETS_S)

    # -- reactor thread -------------------------------------------------------
    def submit(self, key: Hashable, item: I) -> Deferred[BatchedResult[O]]:
        """Queue ``item`` under ``key``; the Deferred fires with its BatchedResult.

        Fails at once with BUSY when ``max_queue`` requests are already waiting.
        """
        d: Deferred[BatchedResult[O]] = Deferred()
        self._enqueue(key, _Pending(item, d, self._seconds()))
        return d

    def submit_to(
        self, key: Hashable, item: I, sink: BatchSink[O], token: object, now: float | None = None
    ) -> None:
        """Queue ``item`` under ``key``; ``sink`` gets (``token``, outcome) with its batch's.

        ``now``: the clock's time, when the caller has just read it. Raises BUSY at once
        when ``max_queue`` requests are already waiting.
        """
        self._enqueue(
            key, _Pending(item, None, self._seconds() if now is None else now, sink, token)
        )

    def _enqueue(self, key: Hashable, pending: _Pending[I, O]) -> None:
        policy = self.policy
        if self._depth >= policy.max_queue:
            self._rejected += 1
            raise ServiceError(
                ErrorCode.BUSY, f"{self.name}: {self._depth} requests queued (max_queue reached)"
            )
        # Admission by delay is decided before decoding, by the session's gate
        # (aiServer.session.Session.refusal), not here.
        admission = self.admission
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        queue.items.append(pending)
        self._depth += 1
        if admission is not None:
            admission.set_backlog(self._depth + self._running, pending.enqueued)
        n = len(queue.items)
        if n == 1 and policy.queue_timeout_s:
            # Bounds the wait even when every batch slot stays busy (a stalled model).
            queue.reaper = self._clock.callLater(policy.queue_timeout_s, self._reap, key)
        if n >= policy.max_batch_size:
            self._drain()
        elif n == 1:
            queue.timer = self._clock.callLater(policy.max_wait_s, self._expire, key)
            if (
                policy.eager_when_idle
                and self._tick is None
                and self._inflight < policy.max_inflight_batches
            ):
                # Run on the next tick, so every request of this tick joins the batch.
                self._tick = self._clock.callLater(0, self._on_tick)

    def status(self) -> QueueStatus:
        """Depth, in-flight batches and totals so far."""
        return QueueStatus(
            model=self.name,
            depth=self._depth,
            keys=len(self._queues),
            inflight_batches=self._inflight,
            batches_run=self._batches_run,
            requests_run=self._requests_run,
            batches_failed=self._batches_failed,
            rejected=self._rejected,
            timed_out=self._timed_out,
            batch_sizes=dict(self._batch_sizes),
        )

    def _on_tick(self) -> None:
        self._tick = None
        self._drain()

    def _expire(self, key: Hashable) -> None:
        queue = self._queues.get(key)
        if queue is None:
            return
        queue.timer = None
        queue.expired = True
        self._drain()

    def _reap(self, key: Hashable) -> None:
        """Fail the requests of ``key`` that waited longer than queue_timeout_s."""
        queue = self._queues.get(key)
        if queue is None:
            return
        queue.reaper = None
        timeout = self.policy.queue_timeout_s
        now = self._clock.seconds()
        items = queue.items
        while items and now - items[0].enqueued >= timeout:
            self._deadline_exceeded(items.popleft(), now)
            self._depth -= 1
        if self.admission is not None:
            self.admission.set_backlog(self._depth + self._running)
        if not items:
            self._forget(key, queue)
            return
        queue.reaper = self._clock.callLater(items[0].enqueued + timeout - now, self._reap, key)

    def _deadline_exceeded(self, pending: _Pending[I, O], now: float) -> None:
        self._timed_out += 1
        waited_ms = (now - pending.enqueued) * 1000.0
        failure = Failure(
            ServiceError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"{self.name}: queued {waited_ms:.0f} ms, over queue_timeout_ms="
                f"{self.policy.queue_timeout_s * 1000:.0f}",
            )
        )
        self._settle([pending], [failure])

    @staticmethod
    def _settle(
        batch: Sequence[_Pending[I, O]], settled: Sequence[BatchedResult[O] | Failure]
    ) -> None:
        """Fire each request's Deferred, or hand its sink the outcomes (one call per sink).

        ``settled[i]`` is ``batch[i]``'s outcome.
        """
        sink = batch[0].sink
        if sink is not None and all(pending.sink is sink for pending in batch):
            # The usual batch: every request came from one handler.
            sink.batch_done([(p.token, o) for p, o in zip(batch, settled, strict=True)])
            return
        sinks: dict[BatchSink[O], list[tuple[object, BatchedResult[O] | Failure]]] = {}
        for pending, outcome in zip(batch, settled, strict=True):
            sink = pending.sink
            if sink is not None:
                outcomes = sinks.get(sink)
                if outcomes is None:
                    outcomes = sinks[sink] = []
                outcomes.append((pending.token, outcome))
                continue
            d = pending.deferred
            assert d is not None
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)
        for sink, outcomes in sinks.items():
            sink.batch_done(outcomes)

    def _forget(self, key: Hashable, queue: _Queue[I, O]) -> None:
        for timer in (queue.timer, queue.reaper):
            if timer is not None and timer.active():
                timer.cancel()
        del self._queues[key]

    def _ready_key(self) -> Hashable | None:
        """The key of the queue to run next: a full or expired one first, oldest first."""
        full_or_expired: tuple[float, Hashable] | None = None
        oldest: tuple[float, Hashable] | None = None
        limit = self.policy.max_batch_size
        for key, queue in self._queues.items():
            head = queue.items[0].enqueued
            if (queue.expired or len(queue.items) >= limit) and (
                full_or_expired is None or head < full_or_expired[0]
            ):
                full_or_expired = (head, key)
            if oldest is None or head < oldest[0]:
                oldest = (head, key)
        if full_or_expired is not None:
            return full_or_expired[1]
        if self.policy.eager_when_idle and oldest is not None:
            return oldest[1]
        return None

    def _drain(self) -> None:
        while self._inflight < self.policy.max_inflight_batches and self._queues:
            key = self._ready_key()
            if key is None:
                return
            self._dispatch(key)

    def _dispatch(self, key: Hashable) -> None:
        queue = self._queues[key]
        items = queue.items
        take = min(len(items), self.policy.max_batch_size)
        batch = [items.popleft() for _ in range(take)]
        self._depth -= take
        if queue.timer is not None and queue.timer.active():
            queue.timer.cancel()
        queue.timer = None
        queue.expired = False
        now = self._clock.seconds()
        if items:
            # The remainder keeps its oldest request's deadline.
            deadline = items[0].enqueued + self.policy.max_wait_s
            if deadline <= now:
                queue.expired = True
            else:
                queue.timer = self._clock.callLater(deadline - now, self._expire, key)
        else:
            self._forget(key, queue)
        timeout = self.policy.queue_timeout_s
        if timeout and now - batch[0].enqueued >= timeout:
            late = [p for p in batch if now - p.enqueued >= timeout]
            for pending in late:
                self._deadline_exceeded(pending, now)
            batch = [p for p in batch if now - p.enqueued < timeout]
            if self.admission is not None:
                self.admission.set_backlog(self._depth + self._running + len(batch))
            if not batch:
                return
        self._inflight += 1
        self._running += len(batch)
        inputs = [p.item for p in batch]
        run_batch = self._run_batch

        def timed() -> tuple[Sequence[O | Exception], float]:
            started = time.perf_counter()
            outputs = run_batch(inputs)
            return outputs, time.perf_counter() - started

        run_with = self._run_with
        if run_with is None:
            d = self._runner.run(timed)
            d.addCallbacks(
                self._finished, self._failed, callbackArgs=(batch, now), errbackArgs=(batch,)
            )
            return

        def finished(result: tuple[Sequence[O | Exception], float]) -> None:
            self._finished(result, batch, now)

        def failed(failure: Failure) -> None:
            self._failed(failure, batch)

        run_with(timed, finished, failed)

    def _finished(
        self,
        result: tuple[Sequence[O | Exception], float],
        batch: list[_Pending[I, O]],
        started: float,
    ) -> None:
        outputs, inference_s = result
        self._inflight -= 1
        size = len(batch)
        self._running -= size
        if self.admission is not None:
            self.admission.batch_done(size, started, self._depth + self._running)
        self._batches_run += 1
        self._requests_run += size
        self._batch_sizes[size] += 1
        if len(outputs) != size:
            self._batches_failed += 1
            error = Failure(
                ServiceError(
                    ErrorCode.INTERNAL,
                    f"{self.name} returned {len(outputs)} outputs for {size} inputs",
                )
            )
            self._settle(batch, [error] * size)
        else:
            self.inference_time.observe(inference_s)
            waits = [started - pending.enqueued for pending in batch]
            self.queue_wait.observe_many(waits)
            # The next batch goes to the runner before this one's replies are encoded
            # and written: the model thread works while the reactor answers.
            self._drain()
            sink = batch[0].sink
            if sink is not None and all(pending.sink is sink for pending in batch):
                # The usual batch, every request from one handler: _settle's fast path,
                # with each (token, outcome) built in the same pass.
                sink.batch_done(
                    [
                        (
                            pending.token,
                            Failure(output)
                            if isinstance(output, Exception)
                            else BatchedResult(output, waited, size, inference_s),
                        )
                        for pending, output, waited in zip(batch, outputs, waits, strict=True)
                    ]
                )
                return
            self._settle(
                batch,
                [
                    Failure(output)
                    if isinstance(output, Exception)
                    else BatchedResult(output, waited, size, inference_s)
                    for output, waited in zip(outputs, waits, strict=True)
                ],
            )
            return
        self._drain()

    def _failed(self, failure: Failure, batch: list[_Pending[I, O]]) -> None:
        self._inflight -= 1
        self._running -= len(batch)
        if self.admission is not None:
            self.admission.set_backlog(self._depth + self._running)
        self._batches_failed += 1
        self._batches_run += 1
        self._requests_run += len(batch)
        self._batch_sizes[len(batch)] += 1
        self._settle(batch, [failure] * len(batch))
        self._drain()
