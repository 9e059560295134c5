"""Report metadata: what produced a report, when, with which parameters.

Every report the coordinator writes carries ``meta`` (bot/report.schema.json): the
schema version, the start and end of the run in UTC (ISO 8601), the bot's version
and git commit, the host, the exact command and every flag's resolved value.
"""

from __future__ import annotations

import argparse
import platform
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot import __version__

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
_HIDDEN = ("worker",)


def utc_now() -> str:
    """The current time, UTC, ISO 8601 with milliseconds (``2026-12-03T12:05:03.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_value(value: Any) -> Any:
    """A flag's value as JSON: paths as text, tuples as lists, (host, port) as HOST:PORT."""
    if isinstance(value, Path):
        return str(value)
    is_address = isinstance(value, tuple) and len(value) == 2
    if is_address and isinstance(value[0], str) and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if hasattr(value, "to_json"):
        return value.to_json()
    return value


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Every flag's resolved value (defaults included), by its dest name."""
    out: dict[str, Any] = {}
    for name, value in sorted(vars(args).items()):
        if name in _HIDDEN:
            continue
        if name == "models":
            models, weights = value
            out[name] = [{"model": m, "weight": w} for m, w in zip(models, weights, strict=True)]
            continue
        out[name] = json_value(value)
    return out


def git_commit() -> str | None:
    """The checkout's commit (``-dirty`` when it has changes), None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


def report_meta(args: argparse.Namespace, argv: list[str], started_at: str) -> dict[str, Any]:
    """The ``meta`` object of a report (``finished_at`` is now)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "started_at": started_at,
        "finished_at": utc_now(),
        "bot_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "command": " ".join(["python -m bot", *argv]),
        "parameters": parameters(args),
    }
