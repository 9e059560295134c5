"""Hostile slow clients against a real daemon: never reading, and trickling complete frames.

One daemon, with short deadlines so the test stays quick: a client that pipelines
requests and never reads its replies is aborted after ``slow_reader_timeout_s``; a
client trickling a complete Ping one byte at a time is closed by the minimum receive
rate; a well-behaved client is served throughout; /metrics counts each close once.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

from bot.blocking_client import BlockingClient
from factory.client_codec import frame_envelope, infer_envelope, ping_envelope
from tests.daemon_process import run_daemon

CONFIG = {
    "inference": {"models": {"moving_average": {}}},
    "server": {"slow_reader_timeout_s": 1.0, "frame_grace_s": 1.0},
}


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed or aborted the connection."""
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b""


def test_a_never_reading_client_is_aborted_and_a_good_one_is_served(tmp_path: Path) -> None:
    burst = b"".join(
        frame_envelope(infer_envelope(i, "moving_average", [float(v) for v in range(64)]))
        for i in range(32)
    ) + b"".join(frame_envelope(ping_envelope(1000 + i)) for i in range(500))
    with run_daemon(tmp_path, CONFIG) as daemon:
        hog = socket.create_connection(("127.0.0.1", daemon.tcp_port))
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.setblocking(False)
        started = time.monotonic()
        aborted_after = None
        with BlockingClient("127.0.0.1", daemon.tcp_port) as good:
            while time.monotonic() - started < 20:
                try:
                    hog.send(burst)
                except BlockingIOError:
                    pass  # the server stopped reading it
                except OSError:
                    aborted_after = time.monotonic() - started
                    break
                assert good.infer("moving_average", [1.0, 2.0, 3.0, 4.0, 5.0]).HasField(
                    "infer_response"
                )
                time.sleep(0.01)
        hog.close()
        assert aborted_after is not None, "the never-reading client was never aborted"
        assert aborted_after < 10
        closed = 'inference_connections_closed_total{reason="slow_reader"}'
        assert _metric(daemon.http_port, closed) == 1


def test_a_ping_trickled_byte_by_byte_is_closed_in_seconds(tmp_path: Path) -> None:
    ping = frame_envelope(ping_envelope(0))  # 6 bytes
    with run_daemon(tmp_path, CONFIG) as daemon:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", daemon.tcp_port)) as sock:
            sock.setblocking(False)
            closed_after = None
            for byte in (ping * 10)[:60]:
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    closed_after = time.monotonic() - started
                    break
                time.sleep(0.5)
                if _closed_by_server(sock):
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None and closed_after < 5
        closed = 'inference_connections_closed_total{reason="frame_timeout"}'
        time.sleep(2.5)  # more sweeps: still counted once
        assert _metric(daemon.http_port, closed) == 1
