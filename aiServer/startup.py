"""Start-up failures that name the setting to fix, and the process's open-file limit.

A daemon that cannot serve exits within seconds (docs/operations.md, "Start-up
failures"): each failure it can explain is a :class:`StartupError` naming the
config key, printed without a traceback.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from twisted.internet.defer import FirstError
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from util.config import ConfigError

T = TypeVar("T")

FD_MARGIN = 32
"""Descriptors kept for the process itself (listeners, the reactor's pipes, log and
model files, HTTP scrapes); an idle daemon holds about 14."""


class StartupError(Exception):
    """The daemon cannot serve; ``key`` names the config setting to look at."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def cannot_bind(key: str, host: str, port: int, error: OSError) -> StartupError:
    """The StartupError for a port ``key`` that could not be bound."""
    reason = error.strerror or str(error)
    hint = " (another process holds it?)" if "in use" in reason else ""
    return StartupError(key, f"cannot listen on {host or '*'}:{port}: {reason}{hint}")


def listening(key: str, listen: Callable[[], T]) -> T:
    """``listen()``, with a CannotListenError turned into a StartupError naming ``key``."""
    try:
        return listen()
    except CannotListenError as exc:
        error = exc.socketError if isinstance(exc.socketError, OSError) else OSError(str(exc))
        raise cannot_bind(key, exc.interface, exc.port, error) from None


def startup_cause(failure: Failure) -> BaseException | None:
    """The exception behind a start-up failure (unwrapping gatherResults' FirstError)."""
    value = failure.value
    while isinstance(value, FirstError):
        value = value.subFailure.value
    return value


def describe_failure(failure: Failure) -> str:
    """The message of a StartupError or ConfigError; the traceback for anything unexpected."""
    cause = startup_cause(failure)
    if isinstance(cause, StartupError | ConfigError):
        return str(cause)
    return failure.getTraceback()


@dataclass(frozen=True)
class FileLimit:
    """The open-file limit after :func:`raise_file_limit` and what it means for connections."""

    soft: int
    hard: int
    raised_from: int
    max_connections: int
    """server.max_connections, lowered to fit the limit when it does not."""
    configured: int
    """server.max_connections as configured."""

    @property
    def capped(self) -> bool:
        """Whether the limit lowered max_connections."""
        return self.max_connections < self.configured


def raise_file_limit(max_connections: int) -> FileLimit:
    """Raise the soft RLIMIT_NOFILE toward the hard limit, enough for ``max_connections``.

    Returns the resulting limits and the connections that fit in them (at most
    ``max_connections``, leaving ``FD_MARGIN`` descriptors for the process itself).
    StartupError (server.max_connections) when not even one connection fits.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    wanted = max_connections + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    fits = max_connections if soft == resource.RLIM_INFINITY else soft - FD_MARGIN
    if fits < 1:
        raise StartupError(
            "server.max_connections",
            f"the open-file limit ({soft}, hard {hard}) leaves no descriptor for a client "
            f"connection after {FD_MARGIN} for the process itself; raise it (ulimit -n)",
        )
    return FileLimit(soft, hard, before, min(max_connections, fits), max_connections)
