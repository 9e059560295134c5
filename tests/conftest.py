"""Session-wide guard: a test fails on any logged error or 'Unhandled error in Deferred'.

A test that provokes a logged error on purpose says so with
``@pytest.mark.allow_logged_errors`` and checks the log itself through the
``logged_errors`` fixture.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer


@implementer(ILogObserver)
class ErrorRecorder:
    """A twisted.logger observer keeping error-level events and failures."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if (
            level in (LogLevel.error, LogLevel.critical)
            or event.get("log_failure")
            or event.get("isError")
        ):
            self.events.append(event)

    def text(self) -> str:
        parts = []
        for event in self.events:
            failure = event.get("log_failure")
            detail = f"\n{failure.getTraceback()}" if failure is not None else ""
            parts.append(f"{formatEvent(event)}{detail}")
        return "\n".join(parts)


@pytest.fixture(autouse=True)
def logged_errors(request: pytest.FixtureRequest) -> Iterator[ErrorRecorder]:
    recorder = ErrorRecorder()
    globalLogPublisher.addObserver(recorder)
    try:
        yield recorder
        gc.collect()  # unhandled Deferred failures are logged when the Deferred is collected
    finally:
        globalLogPublisher.removeObserver(recorder)
    if recorder.events and request.node.get_closest_marker("allow_logged_errors") is None:
        pytest.fail(f"errors were logged during the test:\n{recorder.text()}")
