"""Logging set-up on twisted.logger: level filter and text or JSON-lines output."""

from __future__ import annotations

import sys
from typing import Literal, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

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


def start_logging(
    level: Literal["debug", "info", "warn", "error", "critical"] = "info",
    fmt: Literal["text", "json"] = "text",
    stream: TextIO | None = None,
) -> None:
    """Begin global logging to ``stream`` (stdout by default)."""
    observer = make_observer(level, fmt, stream or sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
