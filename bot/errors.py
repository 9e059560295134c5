"""Errors that end a bot run before it could measure anything (exit code 2)."""

from __future__ import annotations


class BotRunError(Exception):
    """The scenario could not run: a server unreachable, a worker process failed, ..."""
