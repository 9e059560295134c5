"""Clients that send and never read: server memory stays bounded, others unaffected.

Starts the daemon and times one well-behaved client's inference requests (one in
flight, moving_average) twice in the same run: first alone (quiet), then while
``--slow`` connections pipeline inference requests as fast as the server accepts
them and never read a reply, reconnecting whenever the server aborts them. Prints
both p50/p99 and their ratio, the aborts, and the server's RSS.

    .venv/bin/python bench/bench_slow_reader.py --slow 20 --seconds 15
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    parser.add_argument("--slow", type=int, default=20, help="connections that never read")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run the daemon without the defences (no SO_SNDBUF cap, no reader timeout)",
    )
    args = parser.parse_args()
    variants: list[tuple[str, dict[str, Any]]] = [("default config", {})]
    if args.compare:
        undefended = {"socket_send_buffer_bytes": 0, "slow_reader_timeout_s": 3600}
        variants.append(("without the defences", undefended))
    for name, server in variants:
        print(f"== {name} ==", flush=True)
        run(args.slow, args.seconds, server)


def run(slow_count: int, seconds: float, server: dict[str, Any]) -> None:
    """One daemon: the good client alone, then beside ``slow_count`` never-readers."""
    burst = b"".join(
        frame_bytes(infer_envelope(i, "moving_average", [float(v) for v in range(64)]))
        for i in range(64)
    ) + b"".join(
        frame_bytes(pb.Envelope(request_id=10_000 + i, ping=pb.Ping())) for i in range(2000)
    )
    series = [float(v % 7) for v in range(32)]
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_daemon(Path(tmp), None, server=server)
        try:
            good = BlockingClient("127.0.0.1", port)
            quiet = HdrHistogram(1, 60_000_000, 3)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.perf_counter_ns()
                good.infer("moving_average", series)
                quiet.record_value(max(1, (time.perf_counter_ns() - started) // 1000))
                time.sleep(0.002)
            baseline = rss_mib(proc.pid)

            def connect_slow() -> socket.socket:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                return sock

            slow = [connect_slow() for _ in range(slow_count)]
            loaded = HdrHistogram(1, 60_000_000, 3)
            sent = 0
            peak = baseline
            aborted = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for index, sock in enumerate(slow):
                    try:
                        sent += sock.send(burst)
                    except BlockingIOError:
                        pass  # the server stopped reading us: backpressure works
                    except OSError:
                        sock.close()
                        aborted += 1
                        slow[index] = connect_slow()  # a hostile client comes back
                started = time.perf_counter_ns()
                good.infer("moving_average", series)
                loaded.record_value(max(1, (time.perf_counter_ns() - started) // 1000))
                peak = max(peak, rss_mib(proc.pid))
                time.sleep(0.002)

            def p(h: HdrHistogram, q: float) -> float:
                return float(h.get_value_at_percentile(q)) / 1000

            print(
                f"well-behaved client alone: p50 {p(quiet, 50):.2f} ms, p99 {p(quiet, 99):.2f} ms "
                f"({quiet.get_total_count()} requests)\n"
                f"with {slow_count} never-reading clients: p50 {p(loaded, 50):.2f} ms, "
                f"p99 {p(loaded, 99):.2f} ms ({loaded.get_total_count()} requests); "
                f"p99 ratio {p(loaded, 99) / p(quiet, 99):.2f}x\n"
                f"never-readers sent {sent / 2**20:,.1f} MiB in {seconds:.0f}s; "
                f"{aborted} of their connections aborted by the server; "
                f"server RSS {baseline:.0f} MiB -> peak {peak:.0f} MiB (+{peak - baseline:.0f})",
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
