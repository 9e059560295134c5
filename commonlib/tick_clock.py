"""A fixed-rate tick on a wall-clock grid: every process ticks in the same phase.

:class:`GridTicker` calls ``on_tick(count)`` at the multiples of ``interval``
seconds of the clock (the Unix epoch for the real reactor): tick ``n`` of a ticker
started at time ``s`` is due at ``origin + n * interval``, where ``origin`` is the
last multiple of ``interval`` at or before ``s``. Two worker processes (or two
daemons on hosts with synchronised clocks) therefore step their streams at the same
instants, and an engine that sends just ahead of one server's tick is just ahead of
every other's too. ``LoopingCall`` would tick in the phase of whenever it started.

``count`` is how many grid points passed since the previous call (1 when on time;
more when the process was late, the skipped ticks included), as
``LoopingCall.withCount`` gives it. Late ticks are never run back to back: the next
call is at the next grid point after the current time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


class GridTicker:
    """Calls ``on_tick(count)`` at every multiple of ``interval`` on ``clock``."""

    def __init__(
        self, clock: IReactorTime, interval: float, on_tick: Callable[[int], None], name: str
    ) -> None:
        if interval <= 0:
            raise ValueError("a tick interval must be positive")
        self.clock = clock
        self.interval = interval
        self.on_tick = on_tick
        self.name = name
        self.origin: float | None = None  # the grid point tick 0 stands for
        self.last = 0  # the number of the last tick called
        self._call: IDelayedCall | None = None

    @property
    def running(self) -> bool:
        """Whether the ticker is started and not stopped."""
        return self.origin is not None

    def start(self) -> None:
        """Start ticking at the next grid point (tick 1)."""
        if self.running:
            return
        now = self.clock.seconds()
        self.origin = math.floor(now / self.interval) * self.interval
        self.last = 0
        self._schedule(now)

    def stop(self) -> None:
        """Stop; no call after this."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.origin = None

    def tick_time(self, tick: int) -> float:
        """The clock time tick ``tick`` is due at (the ticker must be running)."""
        assert self.origin is not None
        return self.origin + tick * self.interval

    def next_tick(self, now: float) -> int:
        """The first tick due after ``now`` that has not been called yet."""
        assert self.origin is not None
        return max(self.last + 1, math.floor((now - self.origin) / self.interval) + 1)

    def _schedule(self, now: float) -> None:
        tick = self.next_tick(now)
        delay = max(0.0, self.tick_time(tick) - now)
        self._call = self.clock.callLater(delay, self._fire, tick)

    def _fire(self, due: int) -> None:
        self._call = None
        now = self.clock.seconds()
        assert self.origin is not None
        # A late call counts the grid points it slept through (floats: never below due).
        tick = max(due, math.floor((now - self.origin) / self.interval + 1e-9))
        count, self.last = tick - self.last, tick
        try:
            self.on_tick(count)
        except Exception:
            log.failure("tick {tick} of {name} failed", tick=tick, name=self.name)
        if self.running:
            self._schedule(self.clock.seconds())
