"""Character streams against the per-request path, motion_lstm, one daemon, one run.

The same daemon (default config, ``workers: 1`` unless ``--workers``) serves, one
after the other:

1. the per-request path: ``bench/load_client.py`` closed loop (``--connections`` x
   ``--inflight``) sending stateless ``motion_lstm`` requests that carry a window of
   ``--frames`` poses each (what an engine sends when the server keeps no state);
2. character streams: ``bot streams`` with ``--characters`` characters at ``--hz``
   (8 connections, one Tick per connection per frame, results over TCP).

For each it reads the daemon's CPU time (all threads, from /proc) over the
measured window, and gives inferences (requests answered, or characters stepped)
per second and the daemon's CPU microseconds per inference: their ratio is the
cost of one stream step against one request, side by side on the same machine in
the same minute. The streams row also gives the share of observations on time.

    .venv/bin/python bench/bench_streams_vs_requests.py
    .venv/bin/python bench/bench_streams_vs_requests.py --frames 1 --characters 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_server import cpu_seconds, daemon_processes, start_daemon
from bot.histogram import decode, summary_ms
from commonlib.motion import FRAME_WIDTH

ROOT = Path(__file__).resolve().parents[1]


def server_cpu(pids: list[int]) -> float:
    """CPU seconds of every daemon process (supervisor and workers)."""
    return sum(cpu_seconds(pid) for pid in pids)


def per_request(port: int, pids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Closed-loop stateless motion_lstm requests; rate, p99 and daemon CPU per request."""
    command = [
        sys.executable,
        str(ROOT / "bench" / "load_client.py"),
        "--port",
        str(port),
        "--model",
        "motion_lstm",
        "--values",
        str(args.frames * FRAME_WIDTH),
        "--raw-values",
        "--connections",
        str(args.connections),
        "--inflight",
        str(args.inflight),
        "--warmup",
        "1",
        "--duration",
        str(args.duration),
    ]
    # The client measures after its warm-up: sample the daemon's CPU over the same span.
    client = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    cpu0, t0 = server_cpu(pids), time.monotonic()
    out, _ = client.communicate(timeout=args.duration + 60)
    cpu1, t1 = server_cpu(pids), time.monotonic()
    result = json.loads(out.strip().splitlines()[-1])
    answered = result["ok"]
    rate = answered / result["seconds"]
    latency = summary_ms(decode(result["histogram"]))
    # The CPU window is a little longer than the client's (start-up, close): scale by rate.
    cpu_per_second = (cpu1 - cpu0) / max(t1 - t0, 1e-9)
    return {
        "path": f"per request ({args.frames}-frame windows, {args.connections}x{args.inflight})",
        "inferences_per_s": rate,
        "errors": result["errors"],
        "p99_ms": latency["p99_ms"],
        "daemon_cpu_us_per_inference": cpu_per_second / rate * 1e6 if rate else float("nan"),
        "daemon_cores": cpu_per_second,
    }


def streams(
    tcp: int, http: int, pids: list[int], args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """bot streams at --characters; characters stepped per second and daemon CPU per step."""
    report_path = tmp / "streams.json"
    command = [
        sys.executable,
        "-m",
        "bot",
        "streams",
        "--server",
        f"127.0.0.1:{tcp}",
        "--model",
        "motion_lstm",
        "--hz",
        str(args.hz),
        "--connections",
        "8",
        "--characters",
        str(args.characters),
        "--duration",
        str(args.duration),
        "--min-on-time",
        "0.001",
        "--quiet",
        "--metrics-url",
        f"http://127.0.0.1:{http}/metrics",
        "--report",
        str(report_path),
    ]
    bot = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Streams open and the 1 s warm-up runs before the scored frames: skip ~2 s of it.
    time.sleep(2.0)
    cpu0, t0 = server_cpu(pids), time.monotonic()
    time.sleep(max(0.5, args.duration - 1.0))
    cpu1, t1 = server_cpu(pids), time.monotonic()
    out, _ = bot.communicate(timeout=args.duration + 120)
    if not report_path.exists():
        raise RuntimeError(f"bot streams wrote no report: {out.decode()[-2000:]}")
    report = json.loads(report_path.read_text())
    counters = report.get("server_counters") or {}
    # Observations of the scored --duration that a step consumed (not replaced by a newer one).
    stepped_per_s = (report["observations_served"] - report["coalesced"]) / args.duration
    cpu_per_second = (cpu1 - cpu0) / max(t1 - t0, 1e-9)
    return {
        "path": f"streams ({args.characters} characters at {args.hz:g} Hz, 8 connections)",
        "inferences_per_s": stepped_per_s,
        "errors": sum(report["stream_errors"].values()),
        "p99_ms": report["latency"]["p99_ms"],
        "daemon_cpu_us_per_inference": cpu_per_second / stepped_per_s * 1e6
        if stepped_per_s
        else float("nan"),
        "daemon_cores": cpu_per_second,
        "on_time_ratio": report["on_time_ratio"],
        "ticks_missed": counters.get("ticks_missed"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with the ratio of the stream step to the request."""
    lines = [
        "| path | inferences/s | daemon CPU µs per inference | daemon cores | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        extra = ""
        if "on_time_ratio" in row:
            extra = f" ({row['on_time_ratio']:.3%} on time, {row['ticks_missed']} ticks missed)"
        lines.append(
            f"| {row['path']}{extra} | {row['inferences_per_s']:,.0f} | "
            f"{row['daemon_cpu_us_per_inference']:.2f} | {row['daemon_cores']:.2f} | "
            f"{row['p99_ms']:.2f} |"
        )
    request, stream = rows
    lines.append("")
    lines.append(
        f"A stream step costs the daemon "
        f"{request['daemon_cpu_us_per_inference'] / stream['daemon_cpu_us_per_inference']:.1f}x "
        f"less CPU than a request; streams stepped "
        f"{stream['inferences_per_s'] / request['inferences_per_s']:.2f}x the characters per "
        "second that the per-request path answered at saturation, on "
        f"{stream['daemon_cores'] / request['daemon_cores']:.2f}x its daemon CPU."
    )
    return "\n".join(lines)


def main() -> None:
    """Run both paths against one daemon and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=16, help="poses per stateless request")
    parser.add_argument("--connections", type=int, default=4, help="per-request connections")
    parser.add_argument("--inflight", type=int, default=16, help="per-request depth each")
    parser.add_argument("--characters", type=int, default=2000, help="stream characters")
    parser.add_argument("--hz", type=float, default=60.0, help="stream frame rate")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per path")
    parser.add_argument("--workers", type=int, default=1, help="server.workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        proc, tcp = start_daemon(tmp, None, server={"workers": args.workers})
        try:
            info = json.loads((tmp / "ports.json").read_text())
            pids, _ = daemon_processes(tmp)
            time.sleep(1.0)
            rows = [per_request(tcp, pids, args), streams(tcp, info["http"], pids, args, tmp)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end\n")
    print(table(rows))


if __name__ == "__main__":
    main()
