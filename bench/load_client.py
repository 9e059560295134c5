"""A lean load client for the benchmarks (one process, raw sockets, epoll).

Closed loop by default (``--inflight`` requests per connection; the replies read in
one poll round send as many new requests, in one write per connection); with
``--rate`` it is open loop: requests leave on a fixed schedule whatever comes back,
and latency is measured from each request's scheduled time.

The client must not be the bottleneck it measures, so its work per request is kept
to a few bytecodes:

* frames are encoded once, before the clock starts, and shared by all connections
  (request ids only need to be unique per connection);
* every request id is a 4-byte varint, so one ``struct.unpack_from`` per reply reads
  its length, its request id (as a key into a table of ring slots) and the tag of
  the Envelope's body (an ``Error`` counts as an error);
* each socket reads with ``recv_into`` a preallocated buffer;
* one clock reading per poll round stamps both the replies read and the requests
  sent in that round; latencies are collected as plain ints and folded into the
  HDR histogram in bulk (``Counter``, then one ``record_value`` per distinct value).

Prints one JSON line with its counts, its own CPU time, the wall-clock window it
measured (``window``, ``time.time()`` at its start and end) and an encoded HDR
histogram of latencies (µs). Open loop adds ``lag_ms`` (how late the client sent its
requests behind their schedule: p50, p99, max), and ``--timings-every N`` adds
``timings``: the server's Timings of every Nth reply set against its latency here
(:func:`timings_summary`). ``--cpus`` pins the client to those CPUs.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdrh.histogram import HdrHistogram

from commonlib.wire import pb
from factory.client_codec import frame_envelope, infer_envelope, request_id_field
from factory.codec import read_varint

RING = 4096
OPEN_LOOP_RING = 65536
# Request ids RID_BASE .. RID_BASE + ring - 1 all encode as 4-byte varints (2**21 <= id < 2**28).
RID_BASE = 1 << 21
_ERROR_TAG = b"\xaa\x01"  # Envelope field 21 (error), wire type 2
_ERROR_TAG_INT = 0xAA01
# A reply's first 11 bytes: length prefix, 0x08 (field 1 varint), the 4 id bytes, body tag.
_HEAD = struct.Struct(">IBIH")
_HEAD_BYTES = _HEAD.size - 4  # bytes of the Envelope the fast path reads
_LENGTH = struct.Struct(">I")
_BUFFER = 1 << 20
_FOLD_EVERY = 1 << 20  # latencies held before folding into the Counter


def request_frames(
    model: str,
    values: int,
    config: dict[str, int | bool],
    base: int,
    ring: int = RING,
    raw: bool = False,
) -> list[bytes]:
    """``ring`` pre-encoded frames with request ids base..base+ring-1.

    ``raw`` sends the series as ``Tensor.raw_values`` (float32 bytes) instead of
    the repeated ``values`` field.
    """
    series = [float((i * 7919) % 101) / 10.0 for i in range(values)]
    return [
        frame_envelope(infer_envelope(base + i, model, series, config, raw=raw))
        for i in range(ring)
    ]


def read_request_id(frame: bytes | bytearray, start: int) -> tuple[int, int]:
    """Decode the leading `request_id` varint (field 1) of an Envelope at ``start``.

    Returns ``(request_id, offset of the next field)``; ``(0, start)`` if the Envelope
    does not start with field 1, ``(-1, ...)`` if the varint runs off the data.
    """
    if frame[start] != 0x08:
        return 0, start
    return read_varint(frame, start + 1)


def varint_key(request_id: int) -> int:
    """The 4 varint bytes of ``request_id`` read as one big-endian int (the fast path's key)."""
    if not RID_BASE <= request_id < 1 << 28:
        raise ValueError(f"request id {request_id} is not a 4-byte varint")
    return int.from_bytes(request_id_field(request_id)[1:], "big")


def slot_table(ring: int, base: int = RID_BASE) -> dict[int, int]:
    """Map each request id's varint key to its ring slot (0..ring-1)."""
    return {varint_key(base + i): i for i in range(ring)}


def parse_replies(
    buf: bytes | bytearray,
    n: int,
    slots: dict[int, int],
    sent: list[int],
    now: int,
    latencies: list[int],
    base: int = RID_BASE,
) -> tuple[int, int, int]:
    """Consume the complete reply frames in ``buf[:n]``.

    For each reply to a request in flight (``sent[slot] >= 0``) that is not an
    ``Error``, appends ``now - sent[slot]`` to ``latencies``; every reply to one of
    its ids frees that slot (``sent[slot] = -1``). Returns ``(bytes consumed,
    replies, errors)``; errors are Error replies, unknown or repeated request ids
    and unparsable frames.
    """
    pos = 0
    done = 0
    errors = 0
    head = _HEAD.unpack_from
    get = slots.get
    append = latencies.append
    while n - pos >= 11:
        length, tag, key, body = head(buf, pos)
        end = pos + 4 + length
        if end > n:
            break
        done += 1
        if length < _HEAD_BYTES:
            ok, pos = _slow_reply(buf, pos, end, sent, now, latencies, base)
            errors += not ok
            continue
        # Every id this client sends is a 4-byte varint in ``slots``: anything else is
        # not a reply to one of its requests. An Error reply frees its slot too.
        if tag == 0x08:
            slot = get(key)
            if slot is not None:
                sent_at = sent[slot]
                sent[slot] = -1
                if sent_at >= 0 and body != _ERROR_TAG_INT:
                    append(now - sent_at)
                    pos = end
                    continue
        errors += 1
        pos = end
    # Complete frames too short for the fast path (e.g. an empty Envelope).
    while n - pos >= 4:
        (length,) = _LENGTH.unpack_from(buf, pos)
        end = pos + 4 + length
        if end > n:
            break
        done += 1
        ok, pos = _slow_reply(buf, pos, end, sent, now, latencies, base)
        errors += not ok
    return pos, done, errors


def _slow_reply(
    buf: bytes | bytearray,
    pos: int,
    end: int,
    sent: list[int],
    now: int,
    latencies: list[int],
    base: int,
) -> tuple[bool, int]:
    """The general case of one reply frame at ``pos``: (counted ok, end of frame)."""
    if end - pos <= 4:
        return False, end
    rid, body = read_request_id(buf, pos + 4)
    if rid < 0:  # a varint running off the end of the data
        return False, end
    slot = rid - base
    if not 0 <= slot < len(sent) or body > end:
        return False, end
    sent_at = sent[slot]
    sent[slot] = -1
    if sent_at < 0 or buf[body : min(body + 2, end)] == _ERROR_TAG:
        return False, end
    latencies.append(now - sent_at)
    return True, end


def sample_timings(
    buf: bytes | bytearray,
    n: int,
    sent: list[int],
    now: int,
    every: int,
    samples: list[tuple[int, float, float, float]],
) -> None:
    """Append the Timings of the replies in ``buf[:n]`` whose ring slot is a multiple of ``every``.

    Each sample is ``(latency here µs, server total_ms, queue_wait_ms, inference_ms)``,
    taken only for an InferResponse to a request in flight. Call it before
    :func:`parse_replies`, which frees the slots.
    """
    pos = 0
    while n - pos > 4:
        end = pos + 4 + _LENGTH.unpack_from(buf, pos)[0]
        if end > n:
            return
        slot = read_request_id(buf, pos + 4)[0] - RID_BASE
        if 0 <= slot < len(sent) and slot % every == 0 and sent[slot] >= 0:
            envelope = pb.Envelope.FromString(bytes(buf[pos + 4 : end]))
            if envelope.WhichOneof("body") == "infer_response":
                t = envelope.infer_response.timings
                samples.append((now - sent[slot], t.total_ms, t.queue_wait_ms, t.inference_ms))
        pos = end


def percentiles(values: list[float] | list[int], *qs: float) -> list[float]:
    """The ``qs`` percentiles of ``values`` (nearest rank; 0 for no values)."""
    ordered = sorted(values)
    if not ordered:
        return [0.0 for _ in qs]
    return [float(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]) for q in qs]


def timings_summary(samples: list[tuple[int, float, float, float]]) -> dict[str, object]:
    """Where sampled replies spent their time, by stage (ms): p50, p99, and the slowest 1 %'s mean.

    Stages: ``queue`` (arrival in the server to its batch's start), ``model`` (the
    forward pass), ``handoff`` (forward pass done to the reply encoded: the thread hop
    back to the reactor), ``outside`` (latency here minus the server's total: the
    client's lag behind its schedule, the sockets, and the reactor before it reads the
    request and after it encodes the reply). ``slowest_1pct`` averages each stage
    over the samples at or above the p99 latency, which says where those waited.
    """
    rows = [
        {
            "latency": latency / 1000,
            "queue": queue,
            "model": model,
            "handoff": max(0.0, total - queue - model),
            "outside": max(0.0, latency / 1000 - total),
        }
        for latency, total, queue, model in samples
    ]
    stages = ("latency", "queue", "model", "handoff", "outside")
    summary: dict[str, object] = {"n": len(rows)}
    for stage in stages:
        summary[stage] = [round(v, 3) for v in percentiles([r[stage] for r in rows], 50, 99)]
    (cut,) = percentiles([r["latency"] for r in rows], 99)
    slow = [r for r in rows if r["latency"] >= cut]
    summary["slowest_1pct"] = {
        stage: round(sum(r[stage] for r in slow) / len(slow), 3) if slow else 0.0
        for stage in stages
    }
    return summary


@dataclass(slots=True)
class Conn:
    """One connection's socket, its read buffer and the send times of its ring slots."""

    sock: socket.socket
    ring: int
    next: int = 0
    have: int = 0
    buf: bytearray = field(default_factory=lambda: bytearray(_BUFFER))
    view: memoryview = field(init=False)
    sent: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.view = memoryview(self.buf)
        self.sent = [-1] * self.ring

    def claim(self, n: int, now: int, frames: list[bytes]) -> bytes:
        """The next ``n`` frames of the ring as one write, their slots stamped ``now``."""
        i = self.next
        j = i + n
        sent = self.sent
        if j <= self.ring:
            sent[i:j] = [now] * n
            self.next = j if j < self.ring else 0
            return b"".join(frames[i:j])
        j -= self.ring
        sent[i:] = [now] * (self.ring - i)
        sent[:j] = [now] * j
        self.next = j
        return b"".join(frames[i:]) + b"".join(frames[:j])

    def keep_tail(self, pos: int, n: int) -> None:
        """Move the partial frame ``buf[pos:n]`` to the front (growing a full buffer)."""
        rest = n - pos
        if pos:
            self.buf[:rest] = self.buf[pos:n]
        self.have = rest
        if rest == len(self.buf):
            self.view.release()
            self.buf.extend(bytes(len(self.buf)))
            self.view = memoryview(self.buf)


def fold(histogram: HdrHistogram, counts: Counter[int]) -> int:
    """Record ``counts`` (latency µs -> replies) into ``histogram``; the replies recorded."""
    total = 0
    for value, count in counts.items():
        histogram.record_value(max(1, value), count)
        total += count
    return total


def run(args: argparse.Namespace) -> dict[str, object]:
    """Drive the server for warmup + duration seconds; the measured figures."""
    config: dict[str, int | bool] = json.loads(args.config)
    rate = float(args.rate)
    ring = OPEN_LOOP_RING if rate else RING
    frames = request_frames(args.model, args.values, config, RID_BASE, ring, raw=args.raw_values)
    slots = slot_table(ring)
    conns: list[Conn] = []
    poller = select.epoll()
    for _ in range(args.connections):
        sock = socket.create_connection((args.host, args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(Conn(sock, ring))
        poller.register(sock.fileno(), select.EPOLLIN)
    # Indexed by file descriptor (only the registered ones are ever polled).
    by_fd: list[Conn] = [conns[0]] * (max(c.sock.fileno() for c in conns) + 1)
    for conn in conns:
        by_fd[conn.sock.fileno()] = conn
    histogram = HdrHistogram(1, 60_000_000, 3)
    latencies: list[int] = []
    counts: Counter[int] = Counter()
    errors = 0
    lags: list[int] = []  # open loop: µs each request left behind its schedule
    every = args.timings_every
    samples: list[tuple[int, float, float, float]] = []

    def clock() -> int:
        return time.perf_counter_ns() // 1000

    started = clock()
    if not rate:
        for conn in conns:
            conn.sock.sendall(conn.claim(args.inflight, started, frames))
    scheduled = 0
    measure_from = started + int(args.warmup * 1e6)
    stop_at = measure_from + int(args.duration * 1e6)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.time()
    t0 = measure_from
    measuring = False
    poll = poller.poll
    timeout = 0.001 if rate else 0.1
    inflight_closed = not rate
    n_conns = len(conns)
    now = started
    while True:
        if not measuring and now >= measure_from:
            measuring = True
            errors = 0
            latencies.clear()
            counts.clear()
            lags.clear()
            samples.clear()
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            wall0 = time.time()
            t0 = now
        if now >= stop_at:
            break
        if rate:
            due = int((now - started) * rate / 1e6) - scheduled
            outgoing: dict[int, list[bytes]] = {}
            sending = clock() if due else now
            for _ in range(due):
                c = scheduled % n_conns
                conn = conns[c]
                index = conn.next
                conn.next = index + 1 if index + 1 < ring else 0
                # Latency counts from the schedule, not from when we got round to it.
                due_at = started + int(scheduled * 1e6 / rate)
                conn.sent[index] = due_at
                lags.append(sending - due_at)
                scheduled += 1
                outgoing.setdefault(c, []).append(frames[index])
            for c, frames_due in outgoing.items():
                conns[c].sock.sendall(b"".join(frames_due))
        events = poll(timeout)
        now = clock()
        for fd, _ in events:
            conn = by_fd[fd]
            have = conn.have
            got = conn.sock.recv_into(conn.view[have:])
            if not got:
                raise ConnectionError("server closed the connection")
            n = have + got
            if every and measuring:
                sample_timings(conn.buf, n, conn.sent, now, every, samples)
            pos, done, bad = parse_replies(conn.buf, n, slots, conn.sent, now, latencies)
            errors += bad
            if pos == n:
                conn.have = 0  # the common case: only whole frames arrived
            elif pos or n == len(conn.buf):
                conn.keep_tail(pos, n)
            else:
                conn.have = n
            if done and inflight_closed:
                conn.sock.sendall(conn.claim(done, now, frames))
        if len(latencies) > _FOLD_EVERY:
            counts.update(latencies)
            latencies.clear()
    elapsed = (now - t0) / 1e6
    wall1 = time.time()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for conn in conns:
        conn.sock.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    counts.update(latencies)
    ok = fold(histogram, counts)
    result: dict[str, object] = {
        "ok": ok,
        "errors": errors,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "window": [wall0, wall1],
        "histogram": histogram.encode().decode(),
    }
    if rate:
        result["lag_ms"] = [round(v / 1000, 3) for v in percentiles(lags, 50, 99, 100)]
    if every:
        result["timings"] = timings_summary(samples)
    return result


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
        "--raw-values", action="store_true", help="send the series as Tensor.raw_values bytes"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open loop: requests/s from this process"
    )
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument(
        "--timings-every",
        type=int,
        default=0,
        help="decode the server's Timings of every Nth reply (0 = none; costs client CPU)",
    )
    parser.add_argument(
        "--cpus", type=int, nargs="+", default=None, help="pin this process to these CPUs"
    )
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, args.cpus)
    print(json.dumps(run(args)), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
