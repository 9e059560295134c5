"""``python -m bot SCENARIO [options]``: load, stress, soak, failover, concurrency.

Every scenario speaks the real wire protocol over real sockets, checks every reply
(request id, model, and moving_average values computed locally), prints a table,
optionally writes a JSON report (``--report``) and a figure (``--plot``), and exits
non-zero when the SLO (``--slo-p99-ms``, ``--max-error-rate``) is broken.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bot.commands import request_mix
from bot.report import print_report, slo_verdict, write_json, write_plot
from bot.runner import LoadPlan
from bot.stats import merge_reports

SCENARIOS = ("load", "stress", "soak", "failover", "concurrency")


def address(text: str) -> tuple[str, int]:
    """HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    """The command line, with one sub-command per scenario."""
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    def common(p: argparse.ArgumentParser, rate: bool = True) -> None:
        p.add_argument(
            "--server",
            type=address,
            default=("127.0.0.1", 7600),
            help="HOST:PORT of the daemon (default 127.0.0.1:7600)",
        )
        p.add_argument(
            "--models",
            default="moving_average",
            help="comma-separated model mix (default moving_average)",
        )
        p.add_argument("--duration", type=float, default=10.0, help="seconds of load")
        p.add_argument("--connections", type=int, default=4, help="TCP connections")
        if rate:
            p.add_argument(
                "--rate",
                type=float,
                default=0.0,
                help="open loop: requests/s in total (0: closed loop)",
            )
            p.add_argument(
                "--inflight",
                type=int,
                default=16,
                help="closed loop: requests in flight per connection",
            )
        p.add_argument("--slo-p99-ms", type=float, default=None, help="fail above this p99")
        p.add_argument(
            "--max-error-rate",
            type=float,
            default=0.0,
            help="fail above this share of errors+lost (default 0)",
        )
        p.add_argument("--report", type=Path, help="write the JSON report here")
        p.add_argument("--plot", type=Path, help="write a PNG of rate and latency here")
        p.add_argument(
            "--processes",
            type=int,
            default=1,
            help="spread the clients over N bot processes (histograms merged exactly)",
        )
        p.add_argument(
            "--udp-listen",
            type=int,
            default=None,
            metavar="PORT",
            help="also subscribe to UDP broadcasts on this port and score delivery",
        )
        p.add_argument("--quiet", action="store_true", help="no live progress line")
        p.add_argument("--worker", default=None, help=argparse.SUPPRESS)

    common(sub.add_parser("load", help="a target rate or a fixed number in flight"))
    stress = sub.add_parser("stress", help="ramp the rate until the SLO breaks; report the knee")
    common(stress, rate=False)
    stress.add_argument("--start-rate", type=float, default=1000.0)
    stress.add_argument("--step-rate", type=float, default=1000.0)
    stress.add_argument("--step-seconds", type=float, default=3.0)
    stress.add_argument("--max-steps", type=int, default=30)
    soak = sub.add_parser("soak", help="steady load; server RSS / open files over time")
    common(soak)
    soak.add_argument("--pid", type=int, required=True, help="server process to sample in /proc")
    soak.add_argument("--sample-seconds", type=float, default=1.0)
    failover = sub.add_parser("failover", help="kill a server mid-run; reconnect and retry")
    common(failover, rate=False)
    failover.add_argument(
        "--servers",
        type=address,
        nargs="+",
        required=True,
        help="HOST:PORT of every server (two or more)",
    )
    failover.add_argument("--inflight", type=int, default=8)
    failover.add_argument("--kill-pid", type=int, help="SIGKILL this pid mid-run")
    failover.add_argument("--kill-cmd", help="or run this command (e.g. 'pm2 stop infer-0')")
    failover.add_argument("--kill-after", type=float, default=3.0)
    failover.add_argument("--restart-cmd", help="run this later (e.g. 'pm2 restart infer-0')")
    failover.add_argument("--restart-after", type=float, default=6.0)
    conc = sub.add_parser("concurrency", help="N connections at once: handshake + a request each")
    common(conc, rate=False)
    return parser


def share(total: float, index: int, count: int) -> float:
    """This worker's part of ``total``."""
    return total / count


def int_share(total: int, index: int, count: int) -> int:
    """This worker's part of an integer ``total`` (the first ones take the remainder)."""
    return total // count + (1 if index < total % count else 0)


def run_scenario(args: argparse.Namespace, reactor: Any) -> Any:
    """Start the scenario on ``reactor``; a Deferred firing with the report."""
    from bot.scenarios.concurrency import run_concurrency
    from bot.scenarios.failover import FailoverPlan, run_failover
    from bot.scenarios.load import run_load
    from bot.scenarios.soak import run_soak
    from bot.scenarios.stress import Ramp, run_stress

    index, count = (int(x) for x in args.worker.split("/")) if args.worker else (0, 1)
    specs = request_mix([m.strip() for m in args.models.split(",") if m.strip()])
    host, port = args.server
    connections = max(1, int_share(args.connections, index, count))
    if args.scenario == "concurrency":
        return run_concurrency(reactor, host, port, connections, specs)
    if args.scenario == "failover":
        failover = FailoverPlan(
            addresses=args.servers,
            specs=specs,
            clients=connections,
            inflight=args.inflight,
            duration_s=args.duration,
            kill_after_s=args.kill_after,
            kill_pid=args.kill_pid if index == 0 else None,
            kill_cmd=args.kill_cmd if index == 0 else None,
            restart_after_s=args.restart_after,
            restart_cmd=args.restart_cmd if index == 0 else None,
        )
        return run_failover(reactor, failover)
    rate = share(getattr(args, "rate", 0.0), index, count)
    plan = LoadPlan(
        host,
        port,
        specs,
        connections=connections,
        duration_s=args.duration,
        rate=rate,
        inflight=getattr(args, "inflight", 16),
    )
    if args.scenario == "stress":
        ramp = Ramp(
            start_rate=share(args.start_rate, index, count),
            step_rate=share(args.step_rate, index, count),
            step_s=args.step_seconds,
            max_steps=args.max_steps,
            slo_p99_ms=args.slo_p99_ms if args.slo_p99_ms is not None else 10.0,
            max_error_rate=args.max_error_rate or 0.01,
        )
        return run_stress(reactor, plan, ramp)
    if args.scenario == "soak":
        return run_soak(reactor, plan, args.pid, args.sample_seconds)
    return run_load(reactor, plan)


def run_in_process(args: argparse.Namespace) -> dict[str, Any]:
    """Run one scenario on this process's reactor; the report."""
    from twisted.internet import reactor

    from bot.udp_score import UdpScorer

    outcome: list[Any] = []
    scorer = UdpScorer() if args.udp_listen is not None else None

    def start() -> None:
        if not args.quiet and not args.worker:
            _start_progress(reactor)
        if scorer is not None:
            reactor.listenUDP(args.udp_listen, scorer, interface="127.0.0.1")  # type: ignore[attr-defined]
        d = _subscribe(args, reactor) if scorer is not None else None
        scenario = (
            d.addCallback(lambda _: run_scenario(args, reactor))
            if d is not None
            else run_scenario(args, reactor)
        )
        scenario.addBoth(outcome.append).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    result = outcome[0] if outcome else RuntimeError("scenario did not finish")
    if isinstance(result, Exception) or hasattr(result, "raiseException"):
        if hasattr(result, "raiseException"):
            result.raiseException()
        raise result
    if scorer is not None:
        result["udp"] = scorer.report()
    return dict(result)


def _start_progress(reactor: Any) -> None:
    """A live line on stderr: elapsed, answer rate, p50/p99 and errors of the current run."""
    from twisted.internet.task import LoopingCall

    from bot.stats import LIVE_RUNS, summary_ms

    console = Console(stderr=True)
    last = {"answered": 0, "t": reactor.seconds()}

    def tick() -> None:
        if not LIVE_RUNS:
            return
        stats = LIVE_RUNS[-1]
        now = reactor.seconds()
        rate = (stats.answered - last["answered"]) / max(now - last["t"], 1e-9)
        last.update(answered=stats.answered, t=now)
        lat = summary_ms(stats.histogram) if stats.histogram.get_total_count() else None
        p = f"p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms" if lat else "no replies yet"
        console.print(
            f"[dim]{now - stats.started:6.1f}s[/] {rate:9,.0f} req/s  {p}  "
            f"errors {stats.error_count}  lost {stats.lost}",
            highlight=False,
        )

    loop = LoopingCall(tick)
    loop.clock = reactor
    loop.start(1.0, now=False)


def _subscribe(args: argparse.Namespace, reactor: Any) -> Any:
    """A separate connection, kept open, that subscribes the UDP listener."""
    from bot.client import connect
    from commonlib.wire import pb

    host, port = args.server

    def subscribe(protocol: Any) -> Any:
        envelope = pb.Envelope(request_id=1)
        envelope.subscribe.host = "127.0.0.1"
        envelope.subscribe.port = args.udp_listen
        return protocol.request(envelope)

    return connect(reactor, host, port).addCallback(subscribe)


def run_workers(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run ``--processes`` copies of this command and merge their reports exactly."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bot", *argv, "--worker", f"{i}/{args.processes}", "--quiet"],
            stdout=subprocess.PIPE,
        )
        for i in range(args.processes)
    ]
    parts = [json.loads(p.communicate()[0]) for p in procs]
    merged = merge_reports(parts)
    merged["scenario"] = args.scenario
    merged["processes"] = args.processes
    for key in ("knee_rate",):
        if key in parts[0]:
            merged[key] = sum(p[key] for p in parts)
    for key in ("served", "connections"):
        if key in parts[0]:
            merged[key] = sum(p[key] for p in parts)
    for key in (
        "time_to_recover_s",
        "rss_slope_mib_per_min",
        "fd_slope_per_min",
        "steps",
        "actions",
        "addresses",
        "udp",
    ):
        if key in parts[0]:
            merged[key] = parts[0][key]
    return merged


def main(argv: list[str] | None = None) -> int:
    """Parse, run, report; 0 when the SLO held, 1 when it broke."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    if args.processes > 1 and not args.worker:
        report = run_workers(args, _strip_processes(argv))
    else:
        report = run_in_process(args)
    elapsed = time.monotonic() - started
    if args.worker:
        print(json.dumps(report))
        return 0
    duration = args.duration if args.scenario not in ("stress", "concurrency") else elapsed
    report["duration_s"] = duration
    broken = slo_verdict(report, args.slo_p99_ms, args.max_error_rate)
    report["slo_broken"] = broken
    console = Console()
    print_report(report, console, duration)
    if args.report:
        write_json(report, args.report)
    if args.plot:
        write_plot(report, args.plot)
    if broken:
        console.print(f"[bold red]SLO broken:[/] {'; '.join(broken)}")
        return 1
    console.print("[bold green]SLO held[/]")
    return 0


def _strip_processes(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--processes":
            skip = True
            continue
        if item.startswith("--processes="):
            continue
        out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(main())
