"""What a refused request costs the server, against a served one, over real sockets.

Load shedding keeps the accepted requests' latency only if refusing is much
cheaper than serving: under an offered load of ``x`` times capacity, refusing all
the excess costs ``(x - 1) * rho`` of the server's capacity, where ``rho`` is a
refusal's CPU over a served request's. This measures ``rho`` directly, on fresh
daemons, alternating in one run:

* served: the default config, closed loop 4 connections x 16 in flight, nothing refused;
* refused: ``max_inflight_per_connection: 1`` and the same client, so 15 of each
  connection's 16 requests in flight are answered BUSY before decoding (the
  cheapest refusal the daemon has) and one is served.

The server's CPU (all its threads, from /proc) over the replies it sent gives the
cost per reply; the refused run's served requests are charged at the served run's
cost, the rest of its CPU is the refusals'.

    .venv/bin/python bench/bench_refusal_cost.py --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_server import MODELS, measure, start_daemon  # noqa: E402

SHAPE = "pipelined 4x16"


def cpu_per_reply(
    tmp: Path, model: str, limit: int | None, args: argparse.Namespace
) -> dict[str, float]:
    """One fresh daemon (``limit``: max_inflight_per_connection), one closed-loop run."""
    server = None if limit is None else {"max_inflight_per_connection": limit}
    proc, port = start_daemon(tmp, None, server)
    try:
        r = measure(port, proc.pid, model, SHAPE, args)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    served_rps = r["rps"]
    # measure() gives errors as a count; the client measures for --duration seconds.
    refused_rps = r["errors"] / args.duration
    return {
        "served_rps": served_rps,
        "refused_rps": refused_rps,
        "server_cpu": r["server_cpu"],
        "us_per_reply": r["server_cpu"] / (served_rps + refused_rps) * 1e6,
    }


def main() -> None:
    """Alternate served and refused runs; print each and the ratio of each pair."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="moving_average", choices=list(MODELS))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.client_processes = 1
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            served = cpu_per_reply(Path(tmp), args.model, None, args)
            refused = cpu_per_reply(Path(tmp), args.model, 1, args)
            served_cost = served["us_per_reply"]
            refusal_cpu = refused["server_cpu"] - refused["served_rps"] * served_cost / 1e6
            refusal_cost = refusal_cpu / max(refused["refused_rps"], 1.0) * 1e6
            for name, r in (("served", served), ("refused", refused)):
                print(
                    f"round {round_}  {name:8} served {r['served_rps']:9,.0f}/s  "
                    f"refused {r['refused_rps']:9,.0f}/s  server cpu {r['server_cpu']:.2f}  "
                    f"{r['us_per_reply']:6.1f} µs/reply",
                    flush=True,
                )
            print(
                f"round {round_}  served {served_cost:.1f} µs, refused {refusal_cost:.1f} µs "
                f"of server CPU: rho = {refusal_cost / served_cost:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
