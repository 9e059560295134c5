"""Warm start: time from launch to ready, and the first request vs steady state.

.venv/bin/python bench/bench_warm_start.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_server import MODELS, start_daemon  # noqa: E402
from bot.blocking_client import BlockingClient  # noqa: E402


def round_trip_ms(client: BlockingClient, model: str, request_id: int) -> float:
    """One request's round trip in milliseconds."""
    length, config = MODELS[model]
    values = [float(i % 7) for i in range(length)]
    started = time.perf_counter()
    reply = client.infer(model, values, config, request_id=request_id)
    assert reply.HasField("infer_response"), reply
    return (time.perf_counter() - started) * 1000.0


def main() -> None:
    """Launch, time readiness, then first vs steady-state requests per model."""
    with tempfile.TemporaryDirectory() as tmp:
        launched = time.perf_counter()
        proc, port = start_daemon(Path(tmp), None)
        ready_s = time.perf_counter() - launched
        try:
            print(f"launch to ready (models loaded and warmed, port open): {ready_s:.2f} s")
            with BlockingClient("127.0.0.1", port) as client:
                for model in MODELS:
                    first = round_trip_ms(client, model, 1)
                    steady = [round_trip_ms(client, model, 2 + i) for i in range(300)]
                    print(
                        f"{model:16} first request {first:6.2f} ms; steady state over 300 "
                        f"sequential: p50 {statistics.median(steady):.2f} ms "
                        f"(first/p50 = {first / statistics.median(steady):.2f}x)"
                    )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
