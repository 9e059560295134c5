"""The bot's command line: one sub-command per scenario, ``--help`` on each."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import NoReturn

from bot.compare import DEFAULT_TOLERANCE, tolerance
from bot.figures import split_name
from bot.stages import parse_stages
from bot.thresholds import parse_threshold, scenario_problem

SCENARIOS = ("load", "stress", "soak", "failover", "concurrency", "streams")
WARMUP_S = 1.0
DURATION_S = 10.0

DESCRIPTION = """\
Load, stress, soak, failover and concurrency tests against InferenceServer daemons.

Every scenario speaks the real wire protocol over real sockets, checks every reply
(request id, model, and moving_average values computed by the bot), shows a live
progress line, prints a table at the end, optionally writes a JSON report
(--report) and a figure (--plot), and exits non-zero when the SLO is broken.
"""

EPILOG = """\
exit codes: 0 the SLO held; 1 the SLO broke (p99 above --slo-p99-ms, errors+lost
above --max-error-rate, a --threshold missed, any wrong answer, any reply to an
unknown request id; for failover any lost or duplicated request; for stress no step
held; for soak an RSS slope above --max-rss-slope-mib-per-h; UDP loss above
--max-udp-loss); 2 the run could not be made (a bad flag, a model the server does not
serve, a report path that cannot be written, a --compare baseline that cannot be
read, server unreachable, a worker process failed), one line, no traceback; 3 the SLO
held but a figure regressed against --compare beyond --tolerance.

examples:
  python -m bot load --server 127.0.0.1:7600 --rate 5000 --duration 30 --connections 8
  python -m bot load --server 127.0.0.1:7600 --rate 5000 --threshold 'p99_ms<10' \
      --status-url http://127.0.0.1:9100/status --compare baseline.json --tolerance 10%
  python -m bot stress --server 127.0.0.1:7600 --slo-p99-ms 10 --processes 2
  python -m bot soak --server 127.0.0.1:7600 --pid-file run/infer-0.json --duration 600
  python -m bot failover --servers 127.0.0.1:7600 127.0.0.1:7601 \\
      --kill-cmd "./node_modules/.bin/pm2 sendSignal SIGKILL infer-0"
  python -m bot concurrency --server 127.0.0.1:7600 --connections 5000
  python -m bot streams --server 127.0.0.1:7600 --model motion_lstm --characters 2000 \\
      --connections 8 --hz 60 --duration 10 --udp-listen 47000
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


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def datagram_bytes(text: str) -> int:
    """0 (the server's default) or a UDP datagram size of 128..65507 bytes."""
    value = int(_number(text, int))
    if value != 0 and not 128 <= value <= 65_507:
        raise argparse.ArgumentTypeError(f"expected 0 or 128..65507 bytes, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A fraction in [0, 1] (0.01 is 1 %)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a fraction between 0 and 1 (0.01 = 1 %), got {text}"
        )
    return value


def percent(text: str) -> float:
    """A percentage in (0, 100]."""
    value = _number(text, float)
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a percentage in (0, 100], got {text}")
    return value


def udp_port(text: str) -> int:
    """A UDP port 1..65535 (the servers must be told the real port, so not 0)."""
    value = int(_number(text, int))
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {text}")
    return value


class BotArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (exit code 2), with no usage block."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see --help)`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _common(
    p: argparse.ArgumentParser,
    *,
    server: bool = True,
    rate: bool = True,
    connections: int = 4,
    warmup: bool = True,
    slo_p99_ms: float | None = None,
    max_error_rate: float = 0.0,
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
    p.add_argument(
        "--duration", type=positive_float, default=None, help="seconds of load (default 10)"
    )
    p.add_argument(
        "--series-length",
        type=positive_int,
        default=None,
        metavar="N",
        help="values per request (default 64, 32 for lstm_timeseries)",
    )
    p.add_argument(
        "--config",
        type=config_setting,
        action="append",
        metavar="[MODEL.]KEY=VALUE",
        help="a request setting laid over the bot's, e.g. window_size=20 or "
        "lstm_timeseries.forecast_steps=8 (VALUE: true/false, an integer, a number or text; "
        "repeatable)",
    )
    p.add_argument(
        "--raw-values",
        action="store_true",
        help="send each series as Tensor.raw_values (float32 bytes) instead of values",
    )
    if warmup:
        p.add_argument(
            "--warmup",
            type=non_negative_float,
            default=WARMUP_S,
            metavar="S",
            help="the first S seconds of load are left out of the latency figures and the "
            f"drift; they are reported apart (default {WARMUP_S:g})",
        )
    p.add_argument(
        "--connections",
        type=positive_int,
        default=connections,
        help=f"TCP connections in total (default {connections})",
    )
    if rate:
        p.add_argument(
            "--rate",
            type=non_negative_float,
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
        p.add_argument(
            "--stages",
            type=parse_stages,
            default=None,
            metavar="DURATION:RATE,...",
            help="open loop with a ramping rate, k6-style: from 0 linearly to each stage's "
            "target over its duration, e.g. 10s:1000,30s:5000,10s:0 (sets --duration)",
        )
    p.add_argument(
        "--slo-p99-ms",
        type=positive_float,
        default=slo_p99_ms,
        help="fail when p99 is above this"
        + (" (default: no latency check)" if slo_p99_ms is None else ""),
    )
    p.add_argument(
        "--max-error-rate",
        type=fraction,
        default=max_error_rate,
        help="fail when (errors + lost) / sent is above this fraction (default: %(default)s)",
    )
    _reporting(p)
    p.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="spread the clients over N bot processes; histograms merge exactly (default 1)",
    )
    p.add_argument(
        "--udp-listen",
        type=udp_port,
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
        type=fraction,
        default=None,
        metavar="FRACTION",
        help="with --udp-listen: fail when lost / sent datagrams is above this, e.g. 0.001",
    )
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def config_setting(text: str) -> tuple[str, str, bool | int | float | str]:
    """``[MODEL.]KEY=VALUE`` -> (MODEL or ``*``, KEY, the typed VALUE)."""
    name, sep, raw = text.partition("=")
    model, _, key = name.strip().rpartition(".")
    if not sep or not key or not raw.strip():
        raise argparse.ArgumentTypeError(f"expected [MODEL.]KEY=VALUE, got {text!r}")
    value: bool | int | float | str
    raw = raw.strip()
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
    return model or "*", key, value


def size_list(text: str) -> list[int]:
    """``100,500,1000`` -> the sizes, each >= 1, in increasing order."""
    sizes = [positive_int(item.strip()) for item in text.split(",") if item.strip()]
    if not sizes or sizes != sorted(set(sizes)):
        raise argparse.ArgumentTypeError(
            f"expected increasing counts like 100,500,1000, got {text!r}"
        )
    return sizes


def http_url(text: str) -> str:
    """An http:// or https:// URL."""
    if not text.startswith(("http://", "https://")) or len(text.split("/", 3)[2]) == 0:
        raise argparse.ArgumentTypeError(f"expected an http:// URL, got {text!r}")
    return text


def figure_list(text: str) -> list[str]:
    """``p99_ms,req_s`` -> the figure names, each one known."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        for name in names:
            split_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not names:
        raise argparse.ArgumentTypeError("expected figure names, e.g. p99_ms,req_s")
    return names


def _reporting(p: argparse.ArgumentParser) -> None:
    """The output files, the thresholds, the baseline comparison, the /status snapshots."""
    p.add_argument("--report", type=Path, help="write the JSON report (with time series) here")
    p.add_argument("--plot", type=Path, help="write a PNG of rate and latency over time here")
    p.add_argument(
        "--html",
        type=Path,
        metavar="PATH",
        help="write one self-contained HTML report here (summary, checks, thresholds, "
        "per-model table, plots embedded; no network needed to read it)",
    )
    p.add_argument(
        "--threshold",
        type=parse_threshold,
        action="append",
        metavar="EXPR",
        help="fail when a figure misses this, k6-style, e.g. 'p99_ms<10', 'error_rate<1%%', "
        "'req_s>5000', 'p99_ms{model=lstm_timeseries}<20' (repeatable; docs/bot.md lists "
        "the figures)",
    )
    p.add_argument(
        "--compare",
        type=Path,
        metavar="BASELINE.json",
        help="compare every figure with this earlier --report of the same scenario; exit 3 "
        "on a regression beyond --tolerance",
    )
    p.add_argument(
        "--tolerance",
        type=tolerance,
        default=None,
        metavar="PERCENT",
        help="with --compare: how much worse than the baseline a figure may get (default 10%%)",
    )
    p.add_argument(
        "--compare-figures",
        type=figure_list,
        default=None,
        metavar="FIGURE,...",
        help="with --compare: only these figures (default: every figure both reports have, "
        "but max_ms)",
    )
    p.add_argument(
        "--status-url",
        type=http_url,
        action="append",
        metavar="URL",
        help="a server's /status (e.g. http://127.0.0.1:9100/status), read into the report "
        "before and after the run (repeatable)",
    )


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
    parser = BotArgumentParser(
        prog="python -m bot",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=formatter,
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(
        dest="scenario", required=True, metavar="SCENARIO", parser_class=BotArgumentParser
    )

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
    # A step breaks when p99 or the error rate passes these.
    _common(stress, rate=False, warmup=False, slo_p99_ms=10.0, max_error_rate=0.01)
    stress.add_argument(
        "--start-rate", type=positive_float, default=1000.0, help="first step, requests/s"
    )
    stress.add_argument(
        "--step-rate", type=positive_float, default=1000.0, help="added at every step"
    )
    stress.add_argument("--step-seconds", type=positive_float, default=3.0, help="length of a step")
    stress.add_argument("--max-steps", type=positive_int, default=30, help="steps at most")
    stress.add_argument(
        "--refine-steps",
        type=non_negative_int,
        default=3,
        help="after the first broken step, bisect between it and the last that held "
        "this many times",
    )
    stress.add_argument(
        "--refine-seconds",
        type=positive_float,
        default=None,
        help="length of a bisection step (default: half of --step-seconds)",
    )
    stress.set_defaults(rate=0.0, inflight=16)

    soak = scenario("soak", "steady load for a long time; server RSS and open files over time")
    _common(soak)
    which = soak.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=positive_int, help="server process to sample in /proc")
    which.add_argument(
        "--pid-file", type=Path, help='file with the pid: a daemon port file ({"pid": N}) or N'
    )
    soak.add_argument(
        "--sample-seconds",
        type=positive_float,
        default=1.0,
        help="/proc sampling period (default 1)",
    )
    soak.add_argument(
        "--max-rss-slope-mib-per-h",
        type=non_negative_float,
        default=None,
        help="fail when the server's RSS grows faster than this (least-squares slope "
        "after the RSS warm-up; default: report the slope, judge nothing)",
    )
    soak.add_argument(
        "--rss-warmup",
        type=non_negative_float,
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
    failover.add_argument("--inflight", type=positive_int, default=8, help="per client (default 8)")
    kill = failover.add_mutually_exclusive_group()
    kill.add_argument("--kill-pid", type=positive_int, help="SIGKILL this pid mid-run")
    kill.add_argument(
        "--kill-cmd",
        help="or run this command, e.g. './node_modules/.bin/pm2 sendSignal SIGKILL infer-0'",
    )
    failover.add_argument(
        "--kill-after",
        type=non_negative_float,
        default=3.0,
        help="seconds into the run (default 3)",
    )
    failover.add_argument("--restart-cmd", help="run this later, e.g. 'pm2 restart infer-0'")
    failover.add_argument(
        "--restart-after",
        type=non_negative_float,
        default=6.0,
        help="seconds into the run (default 6)",
    )
    failover.add_argument(
        "--grace",
        type=non_negative_float,
        default=10.0,
        help="after the run, seconds to wait for unanswered requests before they count as lost "
        "(default 10)",
    )

    conc = scenario("concurrency", "N connections at once, each a Ping handshake and a request")
    _common(conc, rate=False, connections=1000, warmup=False)
    conc.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=30.0,
        help="seconds per connection attempt (default 30)",
    )
    conc.add_argument(
        "--retry-budget",
        type=non_negative_float,
        default=30.0,
        help="seconds from a request's first send during which BUSY and DEADLINE_EXCEEDED "
        "are retried with exponential backoff and jitter (default 30; 0: no retries)",
    )
    conc.add_argument(
        "--sweep",
        type=size_list,
        default=None,
        metavar="N,N,...",
        help="run the scenario at each of these numbers of connections in turn (instead of "
        "--connections) and report connect and first-reply latency per number; one process",
    )
    _streams_parser(scenario("streams", STREAMS_HELP))
    return parser


STREAMS_HELP = (
    "drive N characters' streams as game engines do: one Tick per connection per frame; "
    "ticks on time, observation-to-output latency"
)


def _streams_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        type=address,
        default=("127.0.0.1", 7600),
        help="HOST:PORT of the daemon (default 127.0.0.1:7600)",
    )
    p.add_argument(
        "--model",
        choices=("motion_lstm", "lstm_timeseries"),
        default="motion_lstm",
        help="stream model: observations are generated motion (motion_lstm, 51 floats) or a "
        "generated series (lstm_timeseries, 1 float) (default motion_lstm)",
    )
    p.add_argument(
        "--characters", type=positive_int, default=100, help="characters in total (default 100)"
    )
    p.add_argument(
        "--connections",
        type=positive_int,
        default=4,
        help="engine connections; the characters are spread over them (default 4)",
    )
    p.add_argument(
        "--hz", type=positive_float, default=60.0, help="frames per second sent (default 60)"
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=10.0,
        help="seconds of scored frames, after the warm-up (default 10)",
    )
    p.add_argument(
        "--warmup",
        type=non_negative_float,
        default=WARMUP_S,
        metavar="S",
        help="seconds of frames before --duration, sent and served but not scored: the "
        f"streams start ticking and the send lead settles, as an engine's clock sync does "
        f"(default {WARMUP_S:g})",
    )
    p.add_argument(
        "--lead-ms",
        type=non_negative_float,
        default=2.0,
        help="send each frame this long before the server's tick; raised 1 ms every 0.25 s "
        "while over 2 %% of Ticks miss their tick, unless --fixed-lead (default 2)",
    )
    p.add_argument(
        "--no-align",
        action="store_true",
        help="send on the bot's own clock instead of just ahead of the server's tick",
    )
    p.add_argument(
        "--fixed-lead",
        action="store_true",
        help="keep --lead-ms: never send earlier when Ticks miss their server tick",
    )
    p.add_argument(
        "--min-on-time",
        type=percent,
        default=99.9,
        metavar="PERCENT",
        help="fail when fewer observations than this are served on time (default 99.9)",
    )
    p.add_argument(
        "--slo-p99-ms",
        type=positive_float,
        default=None,
        help="fail when the observation-to-output p99 is above this (default: no check)",
    )
    p.add_argument(
        "--find-max",
        action="store_true",
        help="search the most characters that hold the SLO: from --characters, doubling "
        "until a step breaks, then bisecting; each step lasts --duration",
    )
    p.add_argument(
        "--max-steps", type=positive_int, default=12, help="find-max steps at most (default 12)"
    )
    p.add_argument(
        "--metrics-url",
        default=None,
        metavar="URL",
        help="the server's /metrics (e.g. http://127.0.0.1:9100/metrics): report its missed "
        "ticks and coalesced observations over the run",
    )
    _reporting(p)
    p.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="spread the connections over N bot processes (default 1)",
    )
    p.add_argument(
        "--udp-listen",
        type=udp_port,
        default=None,
        metavar="PORT",
        help="score UDP snapshots received on PORT (process i of --processes listens on "
        "PORT + i) instead of the TickResults",
    )
    p.add_argument(
        "--udp-host",
        default="127.0.0.1",
        help="IPv4 address the server sends the snapshots to (default 127.0.0.1)",
    )
    p.add_argument(
        "--udp-datagram-bytes",
        type=datagram_bytes,
        default=0,
        metavar="N",
        help="ask the server for snapshot datagrams of at most N bytes (128-65507; an "
        "engine on the same host or a jumbo-frame LAN takes fewer, larger ones) "
        "(default 0: the server's udp.max_datagram_bytes)",
    )
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.set_defaults(max_error_rate=0.0, udp_json=False)


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of flags (each flag alone is checked on parsing)."""
    stages = getattr(args, "stages", None)
    if stages is not None:
        if args.rate > 0:
            return "--stages replaces --rate: give one of them"
        if args.duration is not None:
            return f"--stages sets the duration ({stages.duration_s:g} s): leave --duration out"
        args.duration = stages.duration_s
    if args.duration is None:
        args.duration = DURATION_S
    warmup = getattr(args, "warmup", 0.0)
    # streams sends its warm-up before --duration; the others take it out of it.
    if warmup >= args.duration and args.scenario != "streams":
        return (
            f"--warmup {warmup:g} must be shorter than --duration {args.duration:g} "
            "(--warmup 0 for a run this short)"
        )
    if args.scenario == "streams":
        if args.characters < args.connections:
            return (
                f"--characters {args.characters} must be at least --connections "
                f"{args.connections}: each connection drives one character or more"
            )
        if args.find_max and args.processes > 1:
            return "--find-max runs in one process (--processes 1)"
        args.models = ([args.model], [1])
    if getattr(args, "sweep", None):
        if args.processes > 1:
            return "--sweep runs in one process (--processes 1)"
        args.connections = args.sweep[-1]
    for model, key, _ in getattr(args, "config", None) or []:
        if model != "*" and model not in args.models[0]:
            return f"--config {model}.{key}: {model!r} is not in --models"
    problem = _reporting_problem(args)
    if problem is not None:
        return problem
    if getattr(args, "max_udp_loss", None) is not None and args.udp_listen is None:
        return "--max-udp-loss needs --udp-listen PORT"
    if args.processes > args.connections:
        return (
            f"--processes {args.processes} needs at least as many --connections "
            f"(got {args.connections}): every process opens its own"
        )
    rss_warmup = args.rss_warmup if args.scenario == "soak" else None
    if rss_warmup is not None and rss_warmup >= args.duration:
        return (
            f"--rss-warmup {rss_warmup:g} must be shorter than --duration "
            f"{args.duration:g}: no RSS sample would be left to judge"
        )
    if args.scenario == "failover":
        killing = args.kill_pid is not None or args.kill_cmd
        if killing and args.kill_after >= args.duration:
            return f"--kill-after {args.kill_after:g} must come before --duration {args.duration:g}"
        if args.restart_cmd and not args.kill_after < args.restart_after < args.duration:
            return (
                f"--restart-after {args.restart_after:g} must fall between --kill-after "
                f"{args.kill_after:g} and --duration {args.duration:g}"
            )
    return None


def _reporting_problem(args: argparse.Namespace) -> str | None:
    """Thresholds this scenario cannot judge; comparison flags without --compare."""
    for threshold in args.threshold or []:
        problem = scenario_problem(threshold, args)
        if problem is not None:
            return problem
    for flag in ("tolerance", "compare_figures"):
        if getattr(args, flag) is not None and args.compare is None:
            return f"--{flag.replace('_', '-')} needs --compare BASELINE.json"
    if args.tolerance is None:
        args.tolerance = DEFAULT_TOLERANCE
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check ``argv``; a bad flag exits 2 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem is not None:
        parser.error(problem)
    return args


def servers_of(args: argparse.Namespace) -> list[tuple[str, int]]:
    """Every server address the scenario talks to."""
    return list(args.servers) if args.scenario == "failover" else [args.server]


_PARENT_ONLY_VALUES = (
    "--processes",
    "--report",
    "--plot",
    "--html",
    "--udp-listen",
    "--udp-host",
    "--threshold",
    "--compare",
    "--tolerance",
    "--compare-figures",
    "--status-url",
)
_PARENT_ONLY_FLAGS = ("--udp-json", "--quiet")


def worker_argv(argv: list[str], keep_udp: bool = False) -> list[str]:
    """``argv`` for a worker process: without what only the parent does (files, UDP).

    ``keep_udp``: the workers listen for UDP themselves (streams: each scores the
    snapshots of its own characters).
    """
    out: list[str] = []
    skip = False
    parent_only = [
        name for name in _PARENT_ONLY_VALUES if not (keep_udp and name.startswith("--udp"))
    ]
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in parent_only:
            skip = "=" not in item
            continue
        if name in _PARENT_ONLY_FLAGS:
            continue
        out.append(item)
    return out
