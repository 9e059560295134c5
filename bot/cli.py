"""The bot's command line: one sub-command per scenario, ``--help`` on each."""

from __future__ import annotations

import argparse
from pathlib import Path

SCENARIOS = ("load", "stress", "soak", "failover", "concurrency")

DESCRIPTION = """\
Load, stress, soak, failover and concurrency tests against InferenceServer daemons.

Every scenario speaks the real wire protocol over real sockets, checks every reply
(request id, model, and moving_average values computed by the bot), shows a live
progress line, prints a table at the end, optionally writes a JSON report
(--report) and a figure (--plot), and exits non-zero when the SLO is broken.
"""

EPILOG = """\
exit codes: 0 the SLO held; 1 the SLO broke (p99 above --slo-p99-ms, errors+lost
above --max-error-rate, any wrong answer, any reply to an unknown request id; for
failover any lost or duplicated request; for stress no step held; for soak an RSS
slope above --max-rss-slope-mib-per-h; UDP loss above --max-udp-loss); 2 the run
could not be made (server unreachable, a worker process failed).

examples:
  python -m bot load --server 127.0.0.1:7600 --rate 5000 --duration 30 --connections 8
  python -m bot stress --server 127.0.0.1:7600 --slo-p99-ms 10 --processes 2
  python -m bot soak --server 127.0.0.1:7600 --pid-file run/infer-0.json --duration 600
  python -m bot failover --servers 127.0.0.1:7600 127.0.0.1:7601 \\
      --kill-cmd "./node_modules/.bin/pm2 sendSignal SIGKILL infer-0"
  python -m bot concurrency --server 127.0.0.1:7600 --connections 5000
"""


def address(text: str) -> tuple[str, int]:
    """HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_mix(text: str) -> tuple[list[str], list[int]]:
    """``moving_average:3,lstm_timeseries:1`` -> (models, weights); a weight defaults to 1."""
    models: list[str] = []
    weights: list[int] = []
    for item in text.split(","):
        name, _, weight = item.strip().partition(":")
        if not name:
            continue
        if weight and (not weight.isdigit() or int(weight) < 1):
            raise argparse.ArgumentTypeError(f"bad weight in {item!r}: use MODEL:N with N >= 1")
        models.append(name)
        weights.append(int(weight) if weight else 1)
    if not models:
        raise argparse.ArgumentTypeError("--models needs at least one model")
    return models, weights


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _common(
    p: argparse.ArgumentParser, *, server: bool = True, rate: bool = True, connections: int = 4
) -> None:
    if server:
        p.add_argument(
            "--server",
            type=address,
            default=("127.0.0.1", 7600),
            help="HOST:PORT of the daemon (default 127.0.0.1:7600)",
        )
    p.add_argument(
        "--models",
        type=parse_mix,
        default=(["moving_average"], [1]),
        metavar="MODEL[:WEIGHT],...",
        help="model mix, e.g. moving_average:3,lstm_timeseries:1 (default moving_average)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    p.add_argument(
        "--connections",
        type=positive_int,
        default=connections,
        help=f"TCP connections in total (default {connections})",
    )
    if rate:
        p.add_argument(
            "--rate",
            type=float,
            default=0.0,
            help="open loop: requests/s in total, latency from the scheduled send time "
            "(default 0: closed loop)",
        )
        p.add_argument(
            "--inflight",
            type=positive_int,
            default=16,
            help="closed loop: requests in flight per connection (default 16)",
        )
    p.add_argument("--slo-p99-ms", type=float, default=None, help="fail when p99 is above this")
    p.add_argument(
        "--max-error-rate",
        type=float,
        default=0.0,
        help="fail when (errors + lost) / sent is above this (default: %(default)s)",
    )
    p.add_argument("--report", type=Path, help="write the JSON report (with time series) here")
    p.add_argument("--plot", type=Path, help="write a PNG of rate and latency over time here")
    p.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="spread the clients over N bot processes; histograms merge exactly (default 1)",
    )
    p.add_argument(
        "--udp-listen",
        type=int,
        default=None,
        metavar="PORT",
        help="subscribe a UDP listener on PORT to the broadcasts and score their delivery",
    )
    p.add_argument(
        "--udp-host",
        default="127.0.0.1",
        help="IPv4 address the servers send the broadcasts to (default 127.0.0.1)",
    )
    p.add_argument("--udp-json", action="store_true", help="subscribe with the JSON encoding")
    p.add_argument(
        "--max-udp-loss",
        type=float,
        default=None,
        metavar="FRACTION",
        help="with --udp-listen: fail when lost / sent datagrams is above this, e.g. 0.001",
    )
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default in its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The command line, with one sub-command per scenario."""
    formatter = HelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=formatter,
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    def scenario(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=formatter,
            allow_abbrev=False,
        )

    _common(scenario("load", "a target rate (open loop) or a fixed number in flight (closed loop)"))

    stress = scenario("stress", "ramp the open-loop rate until the SLO breaks; report the knee")
    _common(stress, rate=False)
    stress.add_argument("--start-rate", type=float, default=1000.0, help="first step, requests/s")
    stress.add_argument("--step-rate", type=float, default=1000.0, help="added at every step")
    stress.add_argument("--step-seconds", type=float, default=3.0, help="length of a step")
    stress.add_argument("--max-steps", type=positive_int, default=30, help="steps at most")
    stress.add_argument(
        "--refine-steps",
        type=int,
        default=3,
        help="after the first broken step, bisect between it and the last that held "
        "this many times",
    )
    stress.add_argument(
        "--refine-seconds",
        type=float,
        default=None,
        help="length of a bisection step (default: half of --step-seconds)",
    )
    # A step breaks when p99 or the error rate passes these.
    stress.set_defaults(rate=0.0, inflight=16, slo_p99_ms=10.0, max_error_rate=0.01)

    soak = scenario("soak", "steady load for a long time; server RSS and open files over time")
    _common(soak)
    which = soak.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=int, help="server process to sample in /proc")
    which.add_argument(
        "--pid-file", type=Path, help='file with the pid: a daemon port file ({"pid": N}) or N'
    )
    soak.add_argument("--sample-seconds", type=float, default=1.0, help="/proc sampling period")
    soak.add_argument(
        "--max-rss-slope-mib-per-h",
        type=float,
        default=None,
        help="fail when the server's RSS grows faster than this (least-squares slope "
        "after the RSS warm-up; default: report the slope, judge nothing)",
    )
    soak.add_argument(
        "--rss-warmup",
        type=float,
        default=None,
        help="seconds of RSS samples left out of the slope (default: 10%% of --duration, "
        "at least 1)",
    )

    failover = scenario("failover", "kill one server mid-run; clients reconnect and retry")
    _common(failover, server=False, rate=False)
    failover.add_argument(
        "--servers",
        type=address,
        nargs="+",
        required=True,
        metavar="HOST:PORT",
        help="every server (two or more); clients start spread over them",
    )
    failover.add_argument("--inflight", type=positive_int, default=8, help="per client")
    kill = failover.add_mutually_exclusive_group()
    kill.add_argument("--kill-pid", type=int, help="SIGKILL this pid mid-run")
    kill.add_argument(
        "--kill-cmd",
        help="or run this command, e.g. './node_modules/.bin/pm2 sendSignal SIGKILL infer-0'",
    )
    failover.add_argument("--kill-after", type=float, default=3.0, help="seconds into the run")
    failover.add_argument("--restart-cmd", help="run this later, e.g. 'pm2 restart infer-0'")
    failover.add_argument("--restart-after", type=float, default=6.0, help="seconds into the run")
    failover.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="after the run, seconds to wait for unanswered requests before they count as lost",
    )

    conc = scenario("concurrency", "N connections at once, each a Ping handshake and a request")
    _common(conc, rate=False, connections=1000)
    conc.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds per connection attempt"
    )
    conc.add_argument(
        "--retry-budget",
        type=float,
        default=30.0,
        help="seconds from a request's first send during which BUSY and DEADLINE_EXCEEDED "
        "are retried with exponential backoff and jitter (default 30)",
    )
    return parser


def servers_of(args: argparse.Namespace) -> list[tuple[str, int]]:
    """Every server address the scenario talks to."""
    return list(args.servers) if args.scenario == "failover" else [args.server]


_PARENT_ONLY_VALUES = ("--processes", "--report", "--plot", "--udp-listen", "--udp-host")
_PARENT_ONLY_FLAGS = ("--udp-json", "--quiet")


def worker_argv(argv: list[str]) -> list[str]:
    """``argv`` for a worker process: without what only the parent does (files, UDP)."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in _PARENT_ONLY_VALUES:
            skip = "=" not in item
            continue
        if name in _PARENT_ONLY_FLAGS:
            continue
        out.append(item)
    return out
