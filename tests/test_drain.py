"""SIGTERM under pipelined load: a ledger of every request id gets exactly one reply each.

4 connections x 16 requests in flight, closed loop, against a real daemon process
(one process, and a supervisor with two workers). A polite client stops sending on
a connection once a reply says UNAVAILABLE (the server is draining) and reads until
the server's EOF: every request it wrote, including those still in the server's
socket buffer when SIGTERM arrived, must be answered exactly once. A persistent
client keeps sending until the EOF: what the server read before it half-closed is
answered, so the unanswered requests are only the last ones it sent (at most its
in-flight window), and it learns that from an orderly EOF, never a reset.
"""

from __future__ import annotations

import selectors
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from factory.client_codec import EnvelopeDecoder, frame_envelope, infer_envelope
from tests.daemon_process import run_daemon
from util.errors import ErrorCode

# Admission by delay pinned off (the default): with it on, 64 in flight against batches
# of 8 is a standing queue answered BUSY, and drain is what this tests.
ONLY_MA: dict[str, Any] = {
    "inference": {"batching": {"max_queue_delay_ms": 0}, "models": {"moving_average": {}}}
}
SERIES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


@dataclass
class LedgerConnection:
    """One pipelining client connection and what happened to each of its request ids."""

    sock: socket.socket
    first_id: int
    next_id: int = 0
    sent: list[int] = field(default_factory=list)
    replies: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    decoder: EnvelopeDecoder = field(default_factory=EnvelopeDecoder)
    polite: bool = True  # stop sending once a reply says UNAVAILABLE
    stopped: bool = False  # got UNAVAILABLE
    eof: bool = False
    reset: bool = False

    def send_next(self) -> None:
        request_id = self.first_id + self.next_id
        self.next_id += 1
        self.sent.append(request_id)
        self.sock.sendall(frame_envelope(infer_envelope(request_id, "moving_average", SERIES, {})))

    def read(self) -> int:
        """Read what is there; the number of replies parsed."""
        try:
            data = self.sock.recv(65536)
            if self.eof:
                return 0
        except ConnectionResetError:
            self.reset = self.eof = True
            return 0
        if not data:
            self.eof = True
            return 0
        count = 0
        for reply in self.decoder.feed(data):
            count += 1
            self.replies[reply.request_id] += 1
            if reply.HasField("error"):
                code = ErrorCode(reply.error.code)
                self.codes[code.name] += 1
                if code == ErrorCode.UNAVAILABLE:
                    self.stopped = True
            else:
                self.codes["ok"] += 1
            if not (self.stopped and self.polite):
                self.send_next()
        return count


def _run_until_eof(
    connections: list[LedgerConnection], terminate: float, daemon_pid: int, bound_s: float
) -> None:
    selector = selectors.DefaultSelector()
    for conn in connections:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    started = time.monotonic()
    signalled = False
    while any(not c.eof for c in connections):
        now = time.monotonic()
        assert now - started < bound_s, "the server never closed the connections"
        if not signalled and now - started >= terminate:
            import os

            os.kill(daemon_pid, signal.SIGTERM)
            signalled = True
        for key, _ in selector.select(timeout=0.05):
            conn = key.data
            try:
                conn.read()
            except (BrokenPipeError, ConnectionResetError):
                conn.reset = conn.eof = True  # a send after the server's close
            if conn.eof:
                selector.unregister(conn.sock)
                conn.sock.close()  # what a client does on EOF
    selector.close()


def _connect(port: int, count: int, polite: bool) -> list[LedgerConnection]:
    connections = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connections.append(LedgerConnection(sock, first_id=1 + i * 10_000_000, polite=polite))
    for conn in connections:
        for _ in range(16):
            conn.send_next()
    return connections


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_every_request_exactly_once(tmp_path: Path, workers: int) -> None:
    config = {**ONLY_MA, "server": {"workers": workers}}
    with run_daemon(tmp_path, config) as daemon:
        connections = _connect(daemon.tcp_port, 4, polite=True)
        _run_until_eof(connections, terminate=1.0, daemon_pid=daemon.process.pid, bound_s=30)
        assert daemon.process.wait(timeout=30) == 0
        log = daemon.log()
    for conn in connections:
        assert not conn.reset, "the connection ended with a reset, not an EOF"
        assert conn.stopped, "the drain never answered UNAVAILABLE"
        assert conn.codes["ok"] > 0, (conn.codes, len(conn.sent))
        unanswered = [i for i in conn.sent if conn.replies[i] == 0]
        assert unanswered == [], f"{len(unanswered)} of {len(conn.sent)} requests got no reply"
        assert max(conn.replies.values()) == 1, "a request was answered twice"
        assert set(conn.replies) == set(conn.sent)
        assert set(conn.codes) <= {"ok", "UNAVAILABLE"}
    assert "drained in" in log, log[-4000:]


def test_a_client_sending_through_the_drain_gets_an_eof_after_every_reply(
    tmp_path: Path,
) -> None:
    with run_daemon(tmp_path, ONLY_MA) as daemon:
        connections = _connect(daemon.tcp_port, 4, polite=False)
        _run_until_eof(connections, terminate=1.0, daemon_pid=daemon.process.pid, bound_s=30)
        assert daemon.process.wait(timeout=30) == 0
    for conn in connections:
        assert not conn.reset, "the connection ended with a reset, not an EOF"
        assert conn.codes["UNAVAILABLE"] > 0 and conn.codes["ok"] > 0
        assert max(conn.replies.values()) == 1, "a request was answered twice"
        answered = [i for i in conn.sent if conn.replies[i]]
        unanswered = conn.sent[len(answered) :]
        # Only the last requests, sent while the server was half-closing, go unanswered.
        assert answered == conn.sent[: len(answered)]
        assert all(conn.replies[i] == 0 for i in unanswered) and len(unanswered) <= 16
