"""Throughput and latency of the real daemon over loopback TCP, side by side in one run.

For each model and batching setting it starts the daemon, drives it with
pre-encoded pipelined requests from separate client processes, and prints
requests/s, p50/p99/p99.9 latency (hdrhistogram, merged exactly across client
processes), the batch-size histogram (from the server's Status), and the CPU
used by the server and by the clients.

    .venv/bin/python bench/bench_server.py            # the full matrix (~3 min)
    .venv/bin/python bench/bench_server.py --quick    # moving_average pipelined only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402

from bot.blocking_client import BlockingClient  # noqa: E402
from commonlib.wire import pb  # noqa: E402

MODELS = {
    "moving_average": (64, {"forecast_steps": 5, "window_size": 5, "include_trend": True}),
    "lstm_timeseries": (32, {"forecast_steps": 5, "sequence_length": 10, "hidden_size": 64}),
}
SHAPES = {"pipelined 4x16": (4, 16), "64 conns x1": (64, 1)}


@dataclass
class Result:
    """One measured cell of the matrix."""

    model: str
    batching: str
    shape: str
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    server_cpu: float
    client_cpu: float
    batch_sizes: dict[int, int]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_counts(port: int, model: str) -> dict[int, int]:
    """The server's batch-size histogram for ``model``."""
    with BlockingClient("127.0.0.1", port) as client:
        status = client.request(pb.Envelope(request_id=1, get_status=pb.GetStatus())).status
    for queue in status.queues:
        if queue.model == model:
            return dict(queue.batch_size_counts)
    return {}


def start_daemon(
    tmp: Path, max_batch: int | None, server: dict[str, Any] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the daemon with default config (or every model at max_batch_size)."""
    config: dict[str, Any] = {"udp": {"enabled": False}, "http": {"port": 0}}
    if server:
        config["server"] = server
    if max_batch is not None:
        config["inference"] = {
            "models": {
                name: {"batching": {"max_batch_size": max_batch}}
                | ({"settings": {"hidden_size": 64}} if name == "lstm_timeseries" else {})
                for name in MODELS
            }
        }
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    ports = tmp / "ports.json"
    ports.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiServer",
            "--config",
            str(path),
            "--port",
            "0",
            "--port-file",
            str(ports),
            "--log-level",
            "warn",
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while not ports.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("daemon did not start")
        time.sleep(0.05)
    return proc, int(json.loads(ports.read_text())["tcp"])


def load_client_command(port: int, model: str, args: argparse.Namespace, *extra: str) -> list[str]:
    """The command line of one bench/load_client.py process for ``model``."""
    values, config = MODELS[model]
    return [
        sys.executable,
        str(ROOT / "bench" / "load_client.py"),
        "--port",
        str(port),
        "--model",
        model,
        "--values",
        str(values),
        "--config",
        json.dumps(config),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        *extra,
    ]


def measure(
    port: int, pid: int, model: str, shape: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Run the client processes against a running daemon; merged figures."""
    connections, inflight = SHAPES[shape]
    procs = max(1, min(args.client_processes, connections))
    per = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    before_batches = batch_counts(port, model)
    clients = [
        subprocess.Popen(
            load_client_command(
                port, model, args, "--connections", str(n), "--inflight", str(inflight)
            ),
            stdout=subprocess.PIPE,
        )
        for n in per
    ]
    time.sleep(args.warmup)
    cpu0 = cpu_seconds(pid)
    time.sleep(args.duration)
    cpu1 = cpu_seconds(pid)
    outputs = [json.loads(c.communicate(timeout=120)[0]) for c in clients]
    merged = HdrHistogram(1, 60_000_000, 3)
    for out in outputs:
        merged.add(HdrHistogram.decode(out["histogram"]))
    after_batches = batch_counts(port, model)
    seconds = max(o["seconds"] for o in outputs)
    return {
        "rps": sum(o["ok"] for o in outputs) / seconds,
        "p50_ms": merged.get_value_at_percentile(50) / 1000,
        "p99_ms": merged.get_value_at_percentile(99) / 1000,
        "p999_ms": merged.get_value_at_percentile(99.9) / 1000,
        "errors": sum(o["errors"] for o in outputs),
        "server_cpu": (cpu1 - cpu0) / args.duration,
        "client_cpu": sum(o["cpu_seconds"] for o in outputs) / seconds,
        "batch_sizes": {
            size: count - before_batches.get(size, 0)
            for size, count in sorted(after_batches.items())
            if count - before_batches.get(size, 0)
        },
    }


def histogram_text(counts: dict[int, int]) -> str:
    """Batch sizes as 'size:share%' for the largest shares."""
    total = sum(counts.values()) or 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
    return " ".join(f"{size}:{100 * n / total:.0f}%" for size, n in sorted(top))


def main() -> None:
    """Run the matrix and print a table (and optionally JSON)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument(
        "--quick", action="store_true", help="moving_average, pipelined, default batching"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.models, args.shapes = ["moving_average"], ["pipelined 4x16"]
    settings: list[tuple[str, int | None]] = [("default", None)]
    if not args.quick:
        settings.append(("max_batch_size=1", 1))
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, max_batch in settings:
            proc, port = start_daemon(Path(tmp), max_batch)
            try:
                for model in args.models:
                    for shape in args.shapes:
                        r = measure(port, proc.pid, model, shape, args)
                        results.append(Result(model, label, shape, **r))
                        print(
                            f"{model:16} {label:17} {shape:15} {r['rps']:9,.0f} req/s  "
                            f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                            f"p99.9 {r['p999_ms']:6.2f} ms  err {r['errors']}  "
                            f"cpu server {r['server_cpu']:.2f} client {r['client_cpu']:.2f}  "
                            f"batches {histogram_text(r['batch_sizes'])}",
                            flush=True,
                        )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))


if __name__ == "__main__":
    main()
