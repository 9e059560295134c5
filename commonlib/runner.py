"""Run model work on the daemon's own bounded worker threads, never the reactor thread.

Each batch crosses threads twice, so the crossing is kept lean: a C-implemented
``queue.SimpleQueue`` of (callable, Deferred) pairs that a fixed set of worker
threads take from, and one ``reactor.callFromThread`` per finished batch to fire
its Deferred (or, with :meth:`ThreadPoolRunner.run_with`, a plain callback: no
Deferred at all) on the reactor thread. Twisted's ``deferToThreadPool`` does the same
through its ThreadPool, context propagation and lock-based queue, which cost 2.1x
the CPU per round trip here (bench/bench_handoff.py, docs/performance.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

T = TypeVar("T")
# (work, what gets its result, what gets its Failure), both called on the reactor thread.
_Job = tuple[Callable[[], Any], Callable[[Any], object], Callable[[Failure], object]] | None


class ThreadPoolRunner:
    """A BatchRunner backed by ``threads`` dedicated daemon threads named ``{name}-N``.

    Work submitted before ``start`` waits in the queue and runs once the threads
    start; ``stop`` lets the threads finish what is queued, then joins them.
    """

    def __init__(self, reactor: IReactorFromThreads, threads: int, name: str = "inference") -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._reactor = reactor
        self._queue: SimpleQueue[_Job] = SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        self._started = False

    @property
    def thread_names(self) -> list[str]:
        """The worker threads' names."""
        return [t.name for t in self._threads]

    def start(self) -> None:
        """Start the worker threads."""
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def stop(self) -> None:
        """Finish queued work and join the worker threads."""
        if not self._started:
            return
        self._started = False
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def run(self, fn: Callable[[], T]) -> Deferred[T]:
        """Call ``fn`` on a worker thread; the Deferred fires on the reactor thread."""
        d: Deferred[T] = Deferred()
        self._queue.put((fn, d.callback, d.errback))
        return d

    def run_with(
        self, fn: Callable[[], T], done: Callable[[T], object], failed: Callable[[Failure], object]
    ) -> None:
        """Call ``fn`` on a worker thread, then ``done(result)`` or ``failed(Failure)`` on the
        reactor thread: :meth:`run` without a Deferred (the batcher's per-batch path)."""
        self._queue.put((fn, done, failed))

    def _work(self) -> None:
        get = self._queue.get
        while True:
            job = get()
            if job is None:
                return
            self._run_one(*job)
            del job  # no reference to the batch while blocked on the queue

    def _run_one(
        self,
        fn: Callable[[], Any],
        done: Callable[[Any], object],
        failed: Callable[[Failure], object],
    ) -> None:
        try:
            result = fn()
        except BaseException:
            self._reactor.callFromThread(failed, Failure())
        else:
            self._reactor.callFromThread(done, result)
