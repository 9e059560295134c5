"""The result cache on a 50 % repeat workload: hit rate and req/s, cache off and on, one run.

For each model it starts daemons with the cache off, on (in-process LRU) and, with
``--redis``, on with a shared Redis (a redis-server started on a loopback port), then
drives each in turn (interleaved, ``--rounds`` times) with the same closed-loop
workload: client processes, each with one connection and ``--window`` requests in
flight (sent in one write, then all answered), where every request is with
probability ``--repeat`` one of ``--hot`` fixed inputs and otherwise an input never
sent before. Requests carry their series as ``raw_values``; frames are patched from
templates, so the client stays cheap.

    .venv/bin/python bench/bench_cache.py                       # both models, ~1 min
    .venv/bin/python bench/bench_cache.py --models lstm_timeseries --redis --rounds 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_server import MODELS, cpu_seconds, start_daemon  # noqa: E402
from factory.client_codec import (  # noqa: E402
    EnvelopeDecoder,
    float32_bytes,
    frame_envelope,
    infer_envelope,
    read_envelope,
    request_id_field,
)
from util.config import Config  # noqa: E402

RID_BASE = 1 << 21  # request ids RID_BASE + i (i < 2**21) are 4-byte varints
_UNIQUE = struct.Struct("<2f")


class Frames:
    """Request frames: ``hot`` fixed inputs, and fresh ones made by patching a template."""

    def __init__(self, model: str, values: int, hot: int, salt: int) -> None:
        _, config = MODELS[model]
        base = [float((i * 7919) % 101) / 10.0 for i in range(values)]
        self.hot = [
            frame_envelope(infer_envelope(RID_BASE, model, [float(h), *base[1:]], config, raw=True))
            for h in range(hot)
        ]
        template = frame_envelope(infer_envelope(RID_BASE, model, base, config, raw=True))
        self.template = bytearray(template)
        # The first two floats of raw_values get a counter: every fresh input is new.
        self.unique_at = template.index(float32_bytes(base))
        self.salt = float(salt)
        self.made = 0

    def fresh(self) -> bytearray:
        """A frame whose input was never sent (this salt and counter)."""
        self.made += 1
        frame = bytearray(self.template)
        end = self.unique_at + _UNIQUE.size
        frame[self.unique_at : end] = _UNIQUE.pack(-1.0 - self.salt, float(self.made))
        return frame


def drive(
    port: int, model: str, args: argparse.Namespace, salt: int, start: float, out: Any
) -> None:
    """One client process: closed loop until ``start + warmup + duration``; counts to ``out``."""
    frames = Frames(model, args.values, args.hot, salt)
    rng = random.Random(salt)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Each frame's request_id field (its tag and a 4-byte varint) is patched in place.
    ids = [request_id_field(RID_BASE + i) for i in range(args.window)]
    measure_from = start + args.warmup
    end = measure_from + args.duration
    counts = {"ok": 0, "hits": 0, "errors": 0}
    decoder = EnvelopeDecoder()
    cpu_at_start = 0.0
    measuring = False
    while True:
        now = time.time()
        if now >= end:
            break
        if not measuring and now >= measure_from:
            measuring = True
            counts = dict.fromkeys(counts, 0)
            cpu_at_start = time.process_time()
        window = bytearray()
        for i in range(args.window):
            frame = (
                bytearray(rng.choice(frames.hot)) if rng.random() < args.repeat else frames.fresh()
            )
            frame[4:9] = ids[i]  # after the length prefix
            window += frame
        sock.sendall(window)
        for _ in range(args.window):
            reply = read_envelope(sock, decoder)
            if reply.HasField("infer_response"):
                counts["ok"] += 1
                counts["hits"] += reply.infer_response.timings.cache_hit
            else:
                counts["errors"] += 1
    sock.close()
    out.put({**counts, "cpu": time.process_time() - cpu_at_start})


def measure(port: int, pid: int, model: str, args: argparse.Namespace) -> dict[str, float]:
    """Run the client processes against one daemon; rates over the measured window."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    start = time.time() + 0.2
    salt_base = int(time.time() * 1000) % 100_000 * 16  # fresh inputs differ across phases
    workers = [
        context.Process(target=drive, args=(port, model, args, salt_base + i, start, out))
        for i in range(args.clients)
    ]
    for worker in workers:
        worker.start()
    time.sleep(max(0.0, start + args.warmup - time.time()))
    server_cpu = cpu_seconds(pid)
    time.sleep(max(0.0, start + args.warmup + args.duration - time.time()))
    server_cpu = cpu_seconds(pid) - server_cpu
    results = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    ok = sum(r["ok"] for r in results)
    return {
        "rps": ok / args.duration,
        "hit_rate": sum(r["hits"] for r in results) / ok if ok else 0.0,
        "errors": sum(r["errors"] for r in results),
        "server_cpu": server_cpu / args.duration,
        "server_us_per_request": server_cpu / ok * 1e6 if ok else 0.0,
        "client_cpu": sum(r["cpu"] for r in results) / args.duration,
    }


def cached_models(ttl_s: float) -> dict[str, Any]:
    """inference.models: the default config's, each with cache_ttl_s = ``ttl_s``."""
    models = Config().inference.models
    return {"models": {name: m.model_dump() | {"cache_ttl_s": ttl_s} for name, m in models.items()}}


@contextmanager
def redis_url(tmp: Path) -> Iterator[str]:
    """A redis-server on a free loopback port (tests/redis_server.py) for the run."""
    from tests.redis_server import run_redis

    with run_redis(tmp / "redis") as server:
        yield server.url


def settings(args: argparse.Namespace, url: str | None) -> dict[str, dict[str, Any]]:
    """Label → daemon config sections of each compared setting (every model cached for
    ``--ttl-s``, moving_average too, which the default config does not cache)."""
    cache: dict[str, Any] = {"enabled": True}
    if args.max_entries is not None:
        cache["max_entries"] = args.max_entries
    out: dict[str, dict[str, Any]] = {"cache off": {}, "cache on": {"cache": cache}}
    if url is not None:
        out["cache on + redis"] = {"cache": {**cache, "redis_url": url}}
    return out


def main() -> None:
    """Start the daemons, run the phases interleaved, print a table and JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeat", type=float, default=0.5, help="share of repeated inputs")
    parser.add_argument("--hot", type=int, default=256, help="distinct repeated inputs")
    parser.add_argument("--values", type=int, default=64, help="floats per input series")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--window", type=int, default=32, help="requests in flight per client")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every setting, interleaved")
    parser.add_argument("--redis", action="store_true", help="also the cache with a shared Redis")
    parser.add_argument("--max-entries", type=int, help="cache.max_entries (default: the config's)")
    parser.add_argument("--ttl-s", type=float, default=300.0, help="every model's cache_ttl_s")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        url = stack.enter_context(redis_url(Path(tmp))) if args.redis else None
        for model in args.models:
            daemons: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
            for label, sections in settings(args, url).items():
                directory = Path(tmp) / f"{model}-{len(daemons)}"
                directory.mkdir()
                proc, port = start_daemon(
                    directory, None, inference=cached_models(args.ttl_s), sections=sections
                )
                stack.callback(proc.wait)
                stack.callback(proc.terminate)
                daemons[label] = (proc, port)
            for round_ in range(args.rounds):
                for label, (proc, port) in daemons.items():
                    row = {"model": model, "setting": label, "round": round_ + 1}
                    row |= measure(port, proc.pid, model, args)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            for proc, _ in daemons.values():
                proc.terminate()
                proc.wait()
    print()
    print(
        f"{args.repeat:.0%} repeats of {args.hot} inputs, {args.clients} clients x "
        f"{args.window} in flight, {args.duration:g} s per phase, {os.cpu_count()} CPUs"
    )
    print(
        f"{'model':16} {'setting':18} {'round':>5} {'req/s':>9} {'hit rate':>9} "
        f"{'errors':>6} {'server CPU':>10} {'µs/req':>7} {'client CPU':>10}"
    )
    for r in rows:
        print(
            f"{r['model']:16} {r['setting']:18} {r['round']:>5} {r['rps']:>9,.0f} "
            f"{r['hit_rate']:>9.1%} {r['errors']:>6} {r['server_cpu']:>10.2f} "
            f"{r['server_us_per_request']:>7.1f} {r['client_cpu']:>10.2f}"
        )


if __name__ == "__main__":
    main()
