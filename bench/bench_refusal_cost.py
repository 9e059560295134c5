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
cost per reply. The refused run's CPU, less what its served requests cost, is the
refusals'. Those few served requests (one in flight per connection) cost more each
than the pipelined run's, in batches of at most 4 with a read and a write each, so
a third run measures that:

* served 4x1: the default config, 4 connections x 1 in flight.

Two figures bound a refusal's cost from the refused run: ``rho`` charges its served
requests at the pipelined cost, which they do not reach (so it overstates what a
refusal costs); ``rho_4x1`` at the cost of serving at their concurrency (4x1) alone,
where the server sleeps between requests and is woken for each (``perf stat``: about
two context switches a request, and about 150 µs of CPU a request against 20
pipelined), which the refused run's busy reactor is not (so it understates).

A fourth run measures a refusal with nothing served beside it:

* transport only: the daemon's transport (``PacketFactory`` on the epoll reactor,
  ``--serve-refusing``) with sessions whose gate refuses every InferRequest, the
  same client; ``rho_transport`` is its CPU per refusal over the served cost. It
  leaves out the daemon's other work (metrics, sweeps), so it is a lower bound.

    .venv/bin/python bench/bench_refusal_cost.py --rounds 3

The last line gives each ratio's median over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_server import MODELS, measure, start_daemon  # noqa: E402
from factory.packet_protocol import (  # noqa: E402
    ConnectionLimits,
    PacketConnection,
    PacketFactory,
    Refusal,
)

SHAPE = "pipelined 4x16"
ONE_IN_FLIGHT = "4 conns x1"


def cpu_per_reply(
    tmp: Path, model: str, limit: int | None, args: argparse.Namespace, shape: str = SHAPE
) -> dict[str, float]:
    """One fresh daemon (``limit``: max_inflight_per_connection), one closed-loop run."""
    server = None if limit is None else {"max_inflight_per_connection": limit}
    proc, port = start_daemon(tmp, None, server)
    try:
        r = measure(port, proc.pid, model, shape, args)
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


class _RefuseAll:
    """A PacketHandler whose gate refuses every InferRequest (``--serve-refusing``)."""

    pending = 0

    def __init__(self, refusal: Refusal) -> None:
        self._refusal = refusal

    def refusal(self) -> Refusal:
        return self._refusal

    def packet_received(self, envelope: object) -> None:
        pass

    def infer_received(self, request: object, payload: bytes) -> None:
        pass

    def connection_lost(self) -> None:
        pass


def serve_refusing() -> None:
    """Listen on 127.0.0.1 (port printed) with the daemon's transport, refusing everything."""
    from twisted.internet import reactor

    from aiServer.session import AdmissionGate

    refusal = Refusal(AdmissionGate(1).inflight_full_body, {})

    class Application:
        def open_session(self, connection: PacketConnection) -> _RefuseAll:
            return _RefuseAll(refusal)

    factory = PacketFactory(Application(), ConnectionLimits(), reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)  # type: ignore[attr-defined]
    reactor.run()


def transport_cost(model: str, args: argparse.Namespace) -> float:
    """µs of CPU per refusal of the bare transport refusing everything."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-refusing"], stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        r = measure(port, proc.pid, model, SHAPE, args, status=False)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    refused_rps = float(r["errors"]) / float(args.duration)
    return float(r["server_cpu"]) / max(refused_rps, 1.0) * 1e6


def main() -> None:
    """Alternate served, 4x1, refused and transport-only runs; print each round's ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="moving_average", choices=list(MODELS))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-refusing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_refusing:
        serve_refusing()
        return
    args.client_processes = 1
    ratios: dict[str, list[float]] = {"rho": [], "rho_4x1": [], "rho_transport": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            served = cpu_per_reply(Path(tmp), args.model, None, args)
            single = cpu_per_reply(Path(tmp), args.model, None, args, ONE_IN_FLIGHT)
            refused = cpu_per_reply(Path(tmp), args.model, 1, args)
            served_cost = served["us_per_reply"]
            costs = []
            for charge in (served_cost, single["us_per_reply"]):
                refusal_cpu = refused["server_cpu"] - refused["served_rps"] * charge / 1e6
                costs.append(refusal_cpu / max(refused["refused_rps"], 1.0) * 1e6)
            for name, r in (("served", served), ("4x1", single), ("refused", refused)):
                print(
                    f"round {round_}  {name:8} served {r['served_rps']:9,.0f}/s  "
                    f"refused {r['refused_rps']:9,.0f}/s  server cpu {r['server_cpu']:.2f}  "
                    f"{r['us_per_reply']:6.1f} µs/reply",
                    flush=True,
                )
            print(
                f"round {round_}  served {served_cost:.1f} µs, refused {costs[0]:.1f} µs "
                f"of server CPU: rho = {costs[0] / served_cost:.2f}; refused {costs[1]:.1f} µs "
                f"with the served ones at the 4x1 cost: rho_4x1 = {costs[1] / served_cost:.2f}",
                flush=True,
            )
            bare = transport_cost(args.model, args)
            print(
                f"round {round_}  transport only: {bare:.1f} µs per refusal: "
                f"rho_transport = {bare / served_cost:.2f}",
                flush=True,
            )
            ratios["rho"].append(costs[0] / served_cost)
            ratios["rho_4x1"].append(costs[1] / served_cost)
            ratios["rho_transport"].append(bare / served_cost)
    print(
        f"median of {args.rounds} round(s): "
        + ", ".join(f"{name} {statistics.median(values):.2f}" for name, values in ratios.items()),
        flush=True,
    )


if __name__ == "__main__":
    main()
