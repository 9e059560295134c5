"""A lean load client for the benchmarks (one process, raw sockets, epoll).

Closed loop by default (``--inflight`` requests per connection, each reply sends the
next); with ``--rate`` it is open loop: requests leave on a fixed schedule whatever
comes back, and latency is measured from each request's scheduled time.

Frames are encoded before the clock starts; each reply is matched to its request
by reading only the Envelope's leading request_id varint, so the client spends
its CPU on sockets, not on protobuf. Prints one JSON line with its counts, its
own CPU time and an encoded HDR histogram of latencies (µs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdrh.histogram import HdrHistogram

from bot.blocking_client import frame_bytes, infer_envelope

RING = 4096
OPEN_LOOP_RING = 65536
_ERROR_TAG = b"\xaa\x01"  # Envelope field 21 (error), wire type 2


def request_frames(
    model: str, values: int, config: dict[str, int | bool], base: int, ring: int = RING
) -> list[bytes]:
    """``ring`` pre-encoded frames with request ids base..base+ring-1."""
    series = [float((i * 7919) % 101) / 10.0 for i in range(values)]
    return [frame_bytes(infer_envelope(base + i, model, series, config)) for i in range(ring)]


def read_request_id(frame: bytes, start: int) -> tuple[int, int]:
    """Decode the leading `request_id` varint (field 1) of an Envelope at ``start``."""
    if frame[start] != 0x08:
        return 0, start
    result, shift, i = 0, 0, start + 1
    while True:
        byte = frame[i]
        result |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return result, i
        shift += 7


@dataclass(slots=True)
class Conn:
    """One connection's socket, its pre-encoded frames and requests in flight."""

    sock: socket.socket
    frames: list[bytes]
    base: int
    next: int = 0
    buf: bytes = b""
    sent_at: dict[int, int] = field(default_factory=dict)


def run(args: argparse.Namespace) -> dict[str, object]:
    """Drive the server for warmup + duration seconds; the measured figures."""
    config: dict[str, int | bool] = json.loads(args.config)
    conns: list[Conn] = []
    poller = select.epoll()
    for c in range(args.connections):
        sock = socket.create_connection((args.host, args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        base = (c + 1) * 1_000_000
        ring = OPEN_LOOP_RING if args.rate else RING
        frames = request_frames(args.model, args.values, config, base, ring)
        conns.append(Conn(sock, frames, base))
        poller.register(sock.fileno(), select.EPOLLIN)
    by_fd = {c.sock.fileno(): c for c in conns}
    histogram = HdrHistogram(1, 60_000_000, 3)
    counts = {"ok": 0, "errors": 0}
    prefix = struct.Struct(">I")
    clock = time.perf_counter_ns

    def send_some(conn: Conn, n: int) -> None:
        out = []
        now = clock()
        frames = conn.frames
        for _ in range(n):
            index = conn.next
            conn.next = (index + 1) % len(frames)
            out.append(frames[index])
            conn.sent_at[index] = now
        conn.sock.sendall(b"".join(out))

    rate = float(args.rate)
    if not rate:
        for conn in conns:
            send_some(conn, args.inflight)
    started = time.perf_counter()
    started_ns = clock()
    scheduled = 0
    measure_from = started + args.warmup
    stop_at = measure_from + args.duration
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    measuring = False
    while True:
        now_s = time.perf_counter()
        if not measuring and now_s >= measure_from:
            measuring = True
            counts = {"ok": 0, "errors": 0}
            histogram.reset()
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = now_s
        if now_s >= stop_at:
            break
        if rate:
            due = int((now_s - started) * rate) - scheduled
            outgoing: dict[int, list[bytes]] = {}
            for _ in range(due):
                c = scheduled % len(conns)
                conn = conns[c]
                index = conn.next
                conn.next = (index + 1) % len(conn.frames)
                # Latency counts from the schedule, not from when we got round to it.
                conn.sent_at[index] = started_ns + int(scheduled * 1e9 / rate)
                scheduled += 1
                outgoing.setdefault(c, []).append(conn.frames[index])
            for c, frames_due in outgoing.items():
                conns[c].sock.sendall(b"".join(frames_due))
        for fd, _ in poller.poll(0.001 if rate else 0.1):
            conn = by_fd[fd]
            data = conn.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            buf = conn.buf + data
            pos = 0
            done = 0
            now = clock()
            sent_at = conn.sent_at
            base = conn.base
            while len(buf) - pos >= 4:
                (length,) = prefix.unpack_from(buf, pos)
                end = pos + 4 + length
                if end > len(buf):
                    break
                rid, body = read_request_id(buf, pos + 4)
                index = rid - base
                sent_ns = sent_at.pop(index, -1)
                if sent_ns < 0 or buf[body : body + 2] == _ERROR_TAG:
                    counts["errors"] += 1
                else:
                    counts["ok"] += 1
                    histogram.record_value(max(1, (now - sent_ns) // 1000))
                done += 1
                pos = end
            conn.buf = buf[pos:]
            if done and not rate:
                send_some(conn, done)
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for conn in conns:
        conn.sock.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "ok": counts["ok"],
        "errors": counts["errors"],
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "histogram": histogram.encode().decode(),
    }


def main() -> None:
    """Parse the command line, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--inflight", type=int, default=16, help="requests in flight per connection"
    )
    parser.add_argument("--model", default="moving_average")
    parser.add_argument("--values", type=int, default=64)
    parser.add_argument("--config", default="{}", help="model config as JSON")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open loop: requests/s from this process"
    )
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    print(json.dumps(run(args)), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
