"""Run model work on the daemon's own bounded thread pool, never the reactor thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class ThreadPoolRunner:
    """A BatchRunner backed by a dedicated ThreadPool (not the reactor's shared one)."""

    def __init__(self, reactor: IReactorFromThreads, threads: int, name: str = "inference") -> None:
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=threads, maxthreads=threads, name=name)

    def start(self) -> None:
        """Start the worker threads."""
        self.pool.start()

    def stop(self) -> None:
        """Finish queued work and join the worker threads."""
        self.pool.stop()

    def run(self, fn: Callable[[], T]) -> Deferred[T]:
        """Call ``fn`` on a worker thread; the Deferred fires on the reactor thread."""
        return deferToThreadPool(self._reactor, self.pool, fn)
