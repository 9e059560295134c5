"""Logging set-up on twisted.logger: level filter, repeat limiter, text or JSON-lines output."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, TextIO, cast

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)
from zope.interface import implementer

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


def make_observer(
    level: Literal["debug", "info", "warn", "error", "critical"],
    fmt: Literal["text", "json"],
    stream: TextIO,
) -> ILogObserver:
    """An observer writing events at ``level`` or above to ``stream``."""
    inner = jsonFileLogObserver(stream) if fmt == "json" else textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    return FilteringLogObserver(inner, [predicate])


def tagged(observer: ILogObserver, system: str) -> ILogObserver:
    """``observer`` with ``system`` (e.g. "worker-1") leading each event's log_system."""

    def emit(event: LogEvent) -> None:
        where = event.get("log_system") or f"{event.get('log_namespace', '-')}#" + (
            event["log_level"].name if "log_level" in event else "-"
        )
        observer({**event, "log_system": f"{system} {where}"})

    return cast(ILogObserver, implementer(ILogObserver)(emit))


REPEAT_WINDOW_S = 5.0
"""Repeats of one kind of log line within this many seconds are counted, not written."""

UNLIMITED_NAMESPACES = frozenset({"http.access", "aiServer.commands.infer"})
"""Access logs: one line per request by design, never collapsed."""


@dataclass
class _Window:
    closes_at: float
    suppressed: int = 0
    last: LogEvent | None = None


@implementer(ILogObserver)
class RepeatLimiter:
    """Writes one event per kind (namespace, format, level) per ``window_s``; counts the rest.

    A flood of one line (Twisted's accept loop logs every connection it closes on
    EMFILE) becomes its first line, then one summary per window: "N more like this
    in the last W s", with the last one's text. Summaries are written when the next
    event of that kind arrives after the window or at ``flush`` (which
    ``start_logging`` runs every window on the reactor), whichever is first.
    Events may come from any thread.
    """

    def __init__(
        self,
        observer: ILogObserver,
        window_s: float = REPEAT_WINDOW_S,
        seconds: Callable[[], float] = time.monotonic,
        unlimited: Collection[str] = UNLIMITED_NAMESPACES,
    ) -> None:
        self._observer = observer
        self.window_s = window_s
        self._seconds = seconds
        self._unlimited = frozenset(unlimited)
        self._windows: dict[tuple[Any, ...], _Window] = {}
        self._lock = threading.Lock()

    def __call__(self, event: LogEvent) -> None:
        namespace = event.get("log_namespace")
        if namespace in self._unlimited:
            self._observer(event)
            return
        fmt = event.get("log_format")
        if fmt in (None, "{log_text}"):  # a legacy (twisted.python.log) event: its own text
            fmt = event.get("format") or event.get("log_text")
        key = (namespace, fmt, event.get("log_level"))
        now = self._seconds()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now < window.closes_at:
                window.suppressed += 1
                window.last = event
                return
            self._windows[key] = _Window(now + self.window_s)
        if window is not None:
            self._summarise(window)
        self._observer(event)

    def flush(self) -> None:
        """Write the summary of every window that has closed, and forget those windows."""
        now = self._seconds()
        with self._lock:
            closed = [k for k, w in self._windows.items() if now >= w.closes_at]
            windows = [self._windows.pop(k) for k in closed]
        for window in windows:
            self._summarise(window)

    def _summarise(self, window: _Window) -> None:
        last = window.last
        if last is None:
            return
        self._observer(
            {
                **last,
                "log_format": "{log_repeats} more like this in the last {log_repeat_window:g} s, "
                "the last: " + str(last.get("log_format") or ""),
                "log_repeats": window.suppressed,
                "log_repeat_window": self.window_s,
            }
        )


def start_logging(
    level: Literal["debug", "info", "warn", "error", "critical"] = "info",
    fmt: Literal["text", "json"] = "text",
    stream: TextIO | None = None,
    system: str | None = None,
    clock: IReactorTime | None = None,
) -> None:
    """Begin global logging to ``stream`` (stdout by default).

    ``system`` tags every line with the process's role when several processes
    share one output (a supervisor and its workers). Repeated lines are collapsed
    (:class:`RepeatLimiter`); with ``clock`` (the reactor) the summaries of quiet
    kinds are written every ``REPEAT_WINDOW_S`` too.
    """
    observer = make_observer(level, fmt, stream or sys.stdout)
    if system is not None:
        observer = tagged(observer, system)
    limiter = RepeatLimiter(observer)
    if clock is not None:
        flusher = LoopingCall(limiter.flush)
        flusher.clock = clock
        flusher.start(REPEAT_WINDOW_S, now=False)
    globalLogBeginner.beginLoggingTo([limiter], redirectStandardIO=False)
