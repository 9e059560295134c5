"""``python -m bot``: run a scenario, show it live, report it, exit by the SLO.

The process the operator starts is the coordinator: it owns the UDP listener and
its subscriptions, the live line, the final table and files. It runs the scenario
on its own reactor, or with ``--processes N`` spawns N workers (the same command
with ``--worker i/N``) and merges their reports exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import traceback
from dataclasses import asdict
from typing import Any

from rich.console import Console
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from bot.breakdown import print_thresholds
from bot.cli import parse_args, servers_of, worker_argv
from bot.commands import request_mix
from bot.compare import comparison_report, load_baseline, print_comparison
from bot.errors import BotRunError
from bot.html_report import write_html
from bot.launch import Share, payload_of, ramp_of, start_scenario
from bot.ledger import write_ledger
from bot.merge import merge_worker_reports
from bot.meta import report_meta, utc_now
from bot.plot import write_plot
from bot.preflight import check_models, local_problem, probe_payload
from bot.progress import LiveLine, LocalTicks, Tick
from bot.report import Check, print_report, slo_checks, unchecked, write_json
from bot.server_status import snapshot, status_report, status_urls
from bot.thresholds import judge_thresholds, thresholds_of
from bot.udp_score import UdpScorer, udp_loss_clause
from bot.udp_subscription import UdpSubscriptions
from bot.worker_channel import WorkerChannel, WorkerGate
from bot.workers import WorkerPool

UDP_TAIL_S = 0.5  # after the load, datagrams still on their way
EXIT_HELD, EXIT_BROKEN, EXIT_FAILED, EXIT_REGRESSED = 0, 1, 2, 3
TIMED_SCENARIOS = ("load", "soak", "failover")


def main(argv: list[str] | None = None) -> int:
    """Parse, run, report; the exit code (0 held, 1 SLO broken, 2 could not run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    problem = local_problem(args)
    if problem is not None:
        print(f"python -m bot: error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    return run_coordinator(args, argv)


def _stop(reactor: Any) -> None:
    """Stop the reactor unless it is already stopping."""
    with contextlib.suppress(ReactorNotRunning):
        reactor.stop()


# -- the coordinator ---------------------------------------------------------------


def _global_reactor() -> Any:
    """The process's reactor, imported only here (the CLI entry point) and passed down."""
    from twisted.internet import reactor

    return reactor


def run_coordinator(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the scenario (in this process or its workers) and report it."""
    reactor = _global_reactor()

    console = Console()
    outcome: list[Any] = []

    def start() -> None:
        d = coordinate(reactor, args, argv)
        d.addBoth(outcome.append).addBoth(lambda _: _stop(reactor))

    reactor.callWhenRunning(start)
    reactor.run()
    result = outcome[0] if outcome else Failure(BotRunError("the scenario did not finish"))
    if isinstance(result, Failure):
        if result.check(BotRunError):
            message = f"[bold red]bot: {result.getErrorMessage()}[/]"
            console.print(message, highlight=False, soft_wrap=True)
        else:
            console.print(
                "".join(traceback.format_exception(result.value)), markup=False, highlight=False
            )
        return EXIT_FAILED
    return finish(result, args, console)


def finish(report: dict[str, Any], args: argparse.Namespace, console: Console) -> int:
    """Judge the SLO and thresholds, compare, print, write the files; the exit code."""
    judged = judge_thresholds(report, thresholds_of(args))
    report["thresholds"] = judged
    checks = slo_checks(report, args.slo_p99_ms, args.max_error_rate)
    checks.extend(
        Check("threshold", row["clause"], row["passed"])
        for row in judged
        if not row["source"].startswith("--")
    )
    broken = [check.detail for check in checks if not check.held]
    report["slo_broken"] = broken
    report["checks"] = [asdict(check) for check in checks]
    report["not_checked"] = unchecked(report, args.slo_p99_ms, [row["figure"] for row in judged])
    if args.compare is not None:
        baseline, _ = load_baseline(args.compare, args.scenario)  # checked before the run
        assert baseline is not None
        only = args.compare_figures or []
        report["compare"] = comparison_report(args.compare, baseline, report, args.tolerance, only)
    print_report(report, console)
    print_thresholds(judged, console)
    if "compare" in report:
        print_comparison(report["compare"], console)
    held = "; ".join(check.detail for check in checks)
    skipped = "".join(f"; not checked: {what}" for what in report["not_checked"])
    regressions = report.get("compare", {}).get("regressions")
    if broken:
        code, verdict = EXIT_BROKEN, f"SLO broken: {'; '.join(broken)}"
    elif regressions:
        code = EXIT_REGRESSED
        verdict = (
            f"regression against {args.compare} (tolerance {args.tolerance:.0%}): "
            f"{', '.join(regressions)}; SLO held: {held}{skipped}"
        )
    else:
        code, verdict = EXIT_HELD, f"SLO held: {held}{skipped}"
    report["exit_code"], report["verdict"] = code, verdict
    write_ledger(report, args.report)
    if args.report:
        write_json(report, args.report)
    if args.plot:
        write_plot(report, args.plot)
    if args.html:
        write_html(report, args.html, verdict, held=code == EXIT_HELD)
    if broken:
        console.print(
            f"[bold red]SLO broken:[/] {'; '.join(broken)}", highlight=False, soft_wrap=True
        )
        return code
    console.print(f"[bold green]SLO held[/]: {held}{skipped}", highlight=False, soft_wrap=True)
    if regressions:
        console.print(
            f"[bold red]regression against {args.compare}[/] (tolerance "
            f"{args.tolerance:.0%}): {', '.join(regressions)}",
            highlight=False,
            soft_wrap=True,
        )
    return code


@inlineCallbacks
def coordinate(reactor: Any, args: argparse.Namespace, argv: list[str]) -> Any:
    """UDP listener and subscriptions, the live line, the scenario; fires with the report."""
    scorer: UdpScorer | None = None
    subscriptions: UdpSubscriptions | None = None
    udp_port: Any = None
    live = None if args.quiet else LiveLine(Console(stderr=True), f"bot {args.scenario}")
    # Before any load: the metadata runs git, which must not stall the reactor
    # while replies and UDP datagrams arrive.
    meta = report_meta(args, argv, started_at=utc_now())
    try:
        yield check_models(
            reactor,
            servers_of(args),
            sorted(set(args.models[0])),
            skip_unreachable=args.scenario == "failover",
        )
        payload = payload_of(args) if args.scenario != "streams" else None
        if payload is not None and (payload.length or payload.config or payload.raw):
            models, weights = args.models
            specs = request_mix(models, weights=weights, payload=payload)
            yield probe_payload(reactor, servers_of(args)[0], specs)
        if args.udp_listen is not None and args.scenario != "streams":
            scorer = UdpScorer()
            local = args.udp_host in ("127.0.0.1", "localhost")
            interface = "127.0.0.1" if local else "0.0.0.0"
            try:
                udp_port = reactor.listenUDP(args.udp_listen, scorer, interface=interface)
            except CannotListenError as exc:
                raise BotRunError(f"cannot listen on UDP port {args.udp_listen}: {exc}") from None
            subscriptions = UdpSubscriptions(
                reactor, servers_of(args), args.udp_host, args.udp_listen, args.udp_json
            )
            yield subscriptions.start()
        urls = status_urls(args)
        before = yield snapshot(reactor, urls)
        meta["started_at"] = utc_now()
        started = reactor.seconds()
        report = yield _run(reactor, args, argv, live, started)
        elapsed = reactor.seconds() - started
        report["duration_s"] = args.duration if args.scenario in TIMED_SCENARIOS else elapsed
        report["command"] = " ".join(["python -m bot", *argv])
        report["meta"] = {**meta, "finished_at": utc_now()}
        after = yield snapshot(reactor, urls)
        report["server_status"] = status_report(urls, before, after)
        if urls and any("error" in snap for snap in (*before.values(), *after.values())):
            report.setdefault("notes", []).append(f"/status: {report['server_status']['note']}")
        if scorer is not None and subscriptions is not None:
            yield deferLater(reactor, UDP_TAIL_S, lambda: None)
            report["udp"] = scorer.report(answered=report["answered"])
            report["udp"]["subscription"] = subscriptions.report()
            report["udp"]["max_loss"] = args.max_udp_loss
            if args.max_udp_loss is not None:
                held, clause = udp_loss_clause(report["udp"], args.max_udp_loss)
                key = "held_checks" if held else "broken_checks"
                report[key] = [*report.get(key, []), clause]
        return report
    finally:
        if live is not None:
            live.close()
        if subscriptions is not None:
            yield subscriptions.stop()
        if udp_port is not None:
            yield udp_port.stopListening()


@inlineCallbacks
def _run(
    reactor: Any, args: argparse.Namespace, argv: list[str], live: LiveLine | None, started: float
) -> Any:
    """The scenario itself, with the live line fed once a second."""
    pending = [Tick()]  # from the workers, since the last second
    local = LocalTicks()
    last = [started]

    def show() -> None:
        now = reactor.seconds()
        if args.processes == 1:
            tick = local.take()
        else:
            tick, pending[0] = pending[0], Tick()
        if live is not None:
            live.show(now - started, tick, now - last[0])
        last[0] = now

    ticker = LoopingCall(show)
    ticker.clock = reactor
    ticker.start(1.0, now=False)
    try:
        if args.processes == 1:
            report = yield start_scenario(args, reactor, Share())
            return report
        pool = WorkerPool(
            reactor,
            worker_argv(argv, keep_udp=args.scenario == "streams"),
            args.processes,
            on_tick=lambda tick: pending[0].add(tick),
            ramp=ramp_of(args) if args.scenario == "stress" else None,
        )
        parts = yield pool.start()
        barrier = pool.barrier
        return merge_worker_reports(
            args.scenario,
            parts,
            steps=barrier.rows if barrier is not None else None,
            knee_rate=barrier.knee_rate if barrier is not None else None,
        )
    finally:
        ticker.stop()


# -- a worker ----------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    """Run this worker's share, talking to the parent over stdin/stdout."""
    from twisted.internet.stdio import StandardIO

    reactor = _global_reactor()

    channel = WorkerChannel()
    StandardIO(channel, reactor=reactor)
    failed: list[str] = []
    channel.closed.addCallback(lambda _: _stop(reactor))

    def start() -> None:
        # The parent stops the other workers (SIGTERM) when one fails; a worker may
        # be stopping on its own already, which Twisted's own handler would log.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: reactor.callFromThread(_stop, reactor))
        work(reactor, args, channel).addErrback(lambda f: failed.append(str(f.value)))

    reactor.callWhenRunning(start)
    reactor.run()
    # A failure was sent to the parent, which reports it.
    return EXIT_FAILED if failed else EXIT_HELD


@inlineCallbacks
def work(reactor: Any, args: argparse.Namespace, channel: WorkerChannel) -> Any:
    """ready, wait for go, run, stream progress, send the report (or the failure)."""
    channel.send("ready")
    yield channel.expect("go")
    ticks = LocalTicks()
    progress = LoopingCall(lambda: channel.send("progress", tick=ticks.take().to_json()))
    progress.clock = reactor
    progress.start(1.0, now=False)
    gate = WorkerGate(channel) if args.scenario == "stress" else None
    try:
        report = yield start_scenario(args, reactor, Share.parse(args.worker), gate)
    except Exception as exc:
        channel.send("failed", error=str(exc) or type(exc).__name__)
        yield channel.finish()
        raise
    finally:
        if progress.running:
            progress.stop()
    channel.send("report", report=report)
    yield channel.finish()
