"""The open-file limit: raised at start, max_connections fitted to it, log floods collapsed."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent

from aiServer.startup import FD_MARGIN, StartupError, raise_file_limit
from bot.blocking_client import BlockingClient
from commonlib.wire import pb
from tests.daemon_process import run_daemon
from util.errors import ErrorCode
from util.logging import RepeatLimiter

LIMIT = 64
"""The daemon's soft and hard RLIMIT_NOFILE in the subprocess test."""


def _low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status)
    except (urllib.error.URLError, OSError):
        return 0


def _wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_more_connections_than_the_file_limit_leave_the_daemon_serving(tmp_path: Path) -> None:
    fits = LIMIT - FD_MARGIN
    config = {"server": {"max_connections": 1000}, "http": {"port": 0}}
    with run_daemon(tmp_path, config, preexec_fn=_low_file_limit) as daemon:
        assert (
            f"server.max_connections=1000 does not fit the open-file limit (RLIMIT_NOFILE {LIMIT}"
            in daemon.log()
        )
        assert f"serving at most {fits} connections" in daemon.log()

        # TCP: the connections that fit are served; the rest are told BUSY, not dropped.
        # (One at a time: a burst also holds the refused ones' descriptors until they close.)
        clients = [BlockingClient("127.0.0.1", daemon.tcp_port) for _ in range(fits)]
        http_socks: list[socket.socket] = []
        try:
            for i, client in enumerate(clients):
                reply = client.request(pb.Envelope(request_id=i + 1, ping=pb.Ping()))
                assert reply.HasField("pong"), reply
            for _ in range(40):
                with BlockingClient("127.0.0.1", daemon.tcp_port) as extra:
                    reply = extra.receive()
                assert reply.error.code == ErrorCode.BUSY, reply
                assert f"max_connections={fits}" in reply.error.message
            # HTTP has no connection cap: a flood of it exhausts the descriptors (EMFILE).
            for _ in range(150):
                http_socks.append(socket.create_connection(("127.0.0.1", daemon.http_port)))
        finally:
            for client in clients:
                client.close()
            for sock in http_socks:
                sock.close()
        assert _wait_for(lambda: _healthz(daemon.http_port) == 200, timeout=20)
        # Twisted logs each socket it closes on EMFILE: one line, then one summary.
        assert _wait_for(lambda: "more like this" in daemon.log(), timeout=15), daemon.log()
        with BlockingClient("127.0.0.1", daemon.tcp_port) as client:
            assert client.request(pb.Envelope(request_id=7, ping=pb.Ping())).HasField("pong")
        assert daemon.process.poll() is None
        log = daemon.log().splitlines()
        emfile = [line for line in log if "EMFILE recovery: Closed socket" in line]
        assert 1 <= len(emfile) <= 3, "\n".join(emfile)
        assert len(log) < 40, "\n".join(log)
        assert "more like this in the last 5 s, the last: Starting factory" not in daemon.log()


def test_raise_file_limit_raises_the_soft_limit_toward_what_is_needed() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))
        limit = raise_file_limit(200)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit.soft
        if hard == resource.RLIM_INFINITY or hard >= 200 + FD_MARGIN:
            assert limit.soft == 200 + FD_MARGIN
            assert limit.max_connections == 200 and not limit.capped
        assert limit.raised_from == LIMIT
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_file_limit_without_room_for_one_connection_is_a_startup_error() -> None:
    # Lowering the hard limit cannot be undone without privileges: do it in a child.
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_MARGIN}, {FD_MARGIN}))\n"
        "from aiServer.startup import raise_file_limit\n"
        "raise_file_limit(10)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert (
        f"aiServer.startup.{StartupError.__name__}: server.max_connections: the open-file limit "
        f"({FD_MARGIN}, hard {FD_MARGIN}) leaves no descriptor for a client connection"
    ) in result.stderr


# -- the repeat limiter -------------------------------------------------------------------
def _event(fmt: str, namespace: str = "twisted.internet.tcp", **fields: Any) -> LogEvent:
    return {
        "log_format": fmt,
        "log_namespace": namespace,
        "log_level": LogLevel.info,
        **fields,
    }


def _limited(window_s: float = 5.0) -> tuple[RepeatLimiter, list[LogEvent], Clock]:
    clock = Clock()
    written: list[LogEvent] = []
    observer = cast(ILogObserver, written.append)
    return RepeatLimiter(observer, window_s, clock.seconds), written, clock


def test_a_flood_of_one_line_becomes_that_line_and_one_summary_per_window() -> None:
    limiter, written, clock = _limited()
    for i in range(1000):
        limiter(_event("EMFILE recovery: Closed socket from {address}", address=f"10.0.0.{i}"))
        clock.advance(0.001)
    assert [formatEvent(e) for e in written] == ["EMFILE recovery: Closed socket from 10.0.0.0"]
    clock.advance(5)
    limiter.flush()
    assert formatEvent(written[1]) == (
        "999 more like this in the last 5 s, the last: EMFILE recovery: Closed socket from "
        "10.0.0.999"
    )
    limiter.flush()
    assert len(written) == 2  # a summary once per window
    limiter(_event("EMFILE recovery: Closed socket from {address}", address="x"))
    assert formatEvent(written[2]) == "EMFILE recovery: Closed socket from x"


def test_the_summary_is_written_by_the_next_line_after_the_window_too() -> None:
    limiter, written, clock = _limited(window_s=1.0)
    for _ in range(3):
        limiter(_event("busy {n}", n=1))
    clock.advance(1.5)
    limiter(_event("busy {n}", n=2))
    assert [formatEvent(e) for e in written] == [
        "busy 1",
        "2 more like this in the last 1 s, the last: busy 1",
        "busy 2",
    ]


def test_different_lines_and_access_logs_are_not_collapsed() -> None:
    limiter, written, _ = _limited()
    for i in range(5):
        limiter(_event("GET /healthz {i}", namespace="http.access", i=i))
        limiter(_event("request {i}", namespace="aiServer.commands.infer", i=i))
    limiter(_event("one"))
    limiter(_event("two"))
    limiter({**_event("one"), "log_level": LogLevel.warn})  # another level: another kind
    # twisted.python.log events share one format, "{log_text}": their text tells them apart.
    for text in ("Starting factory A", "(TCP Port 1 Closed)", "Starting factory A"):
        limiter({**_event("{log_text}", namespace="log_legacy"), "log_text": text})
    assert [formatEvent(e) for e in written[13:]] == ["Starting factory A", "(TCP Port 1 Closed)"]
    limiter.flush()
    assert len(written) == 15  # the repeat is summarised only once its window closes
