"""A real ``redis-server`` (the Debian package) on a loopback ephemeral port, for tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (scripts/install_system_deps.sh)"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RedisServer:
    """A running redis-server: its process, port and a client for the test's own checks."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL it (no shutdown, no save), as a crash would."""
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start it again on the same port (empty: it never persists anything)."""
        self.process = _start(self.port, self.directory)


def _start(port: int, directory: Path) -> subprocess.Popen[bytes]:
    assert REDIS_SERVER is not None
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--loglevel",
            "warning",
        ],
        stdout=(directory / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    while True:
        try:
            probe.ping()
            return process
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    f"redis-server did not start on port {port}:\n"
                    + (directory / "redis.log").read_text(errors="replace")
                ) from None
            time.sleep(0.02)
        finally:
            probe.close()


@contextmanager
def run_redis(directory: Path) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port until the block ends (a port taken meanwhile
    by someone else is retried on another)."""
    directory.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = free_port()
        try:
            server = RedisServer(_start(port, directory), port, directory)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
