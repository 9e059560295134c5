"""Logging set-up on twisted.logger: level filter and text or JSON-lines output."""

from __future__ import annotations

import sys
from typing import Literal, TextIO, cast

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


def start_logging(
    level: Literal["debug", "info", "warn", "error", "critical"] = "info",
    fmt: Literal["text", "json"] = "text",
    stream: TextIO | None = None,
    system: str | None = None,
) -> None:
    """Begin global logging to ``stream`` (stdout by default).

    ``system`` tags every line with the process's role when several processes
    share one output (a supervisor and its workers).
    """
    observer = make_observer(level, fmt, stream or sys.stdout)
    if system is not None:
        observer = tagged(observer, system)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
