"""Clients that send and never read: server memory stays bounded, others unaffected.

Starts the daemon, opens ``--slow`` connections that pipeline inference requests as
fast as the server accepts them and never read a reply, and meanwhile times Pings
from one well-behaved client. Samples the server's RSS throughout.

    .venv/bin/python bench/bench_slow_reader.py
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hdrh.histogram import HdrHistogram  # noqa: E402

from bench.bench_server import start_daemon  # noqa: E402
from bot.blocking_client import BlockingClient, frame_bytes, infer_envelope  # noqa: E402
from commonlib.wire import pb  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    """Run the scenario and print RSS and the good client's latency."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slow", type=int, default=8, help="connections that never read")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    burst = b"".join(
        frame_bytes(infer_envelope(i, "moving_average", [float(v) for v in range(64)]))
        for i in range(64)
    ) + b"".join(
        frame_bytes(pb.Envelope(request_id=10_000 + i, ping=pb.Ping())) for i in range(2000)
    )
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_daemon(Path(tmp), None)
        try:
            baseline = rss_mib(proc.pid)
            slow = []
            for _ in range(args.slow):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                slow.append(sock)
            good = BlockingClient("127.0.0.1", port)
            latency = HdrHistogram(1, 60_000_000, 3)
            sent = 0
            peak = baseline
            closed = 0
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                for sock in list(slow):
                    try:
                        sent += sock.send(burst)
                    except BlockingIOError:
                        pass  # the server stopped reading us: backpressure works
                    except OSError:
                        slow.remove(sock)
                        closed += 1
                started = time.perf_counter_ns()
                good.request(pb.Envelope(request_id=1, ping=pb.Ping()))
                latency.record_value(max(1, (time.perf_counter_ns() - started) // 1000))
                peak = max(peak, rss_mib(proc.pid))
                time.sleep(0.005)
            print(
                f"{args.slow} never-reading clients for {args.seconds:.0f}s "
                f"sent {sent / 2**20:,.1f} MiB; "
                f"server RSS {baseline:.0f} MiB -> peak {peak:.0f} MiB (+{peak - baseline:.0f}); "
                f"{closed} slow connections aborted by the server; well-behaved client ping "
                f"p50 {latency.get_value_at_percentile(50) / 1000:.2f} ms, "
                f"p99 {latency.get_value_at_percentile(99) / 1000:.2f} ms",
                flush=True,
            )
            good.close()
            for sock in slow:
                sock.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
