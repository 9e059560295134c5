"""``python -m aiServer --config PATH``: run the daemon until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.python.failure import Failure

import commonlib.torch_env  # noqa: F401 - must precede any torch import (OMP_NUM_THREADS)
from aiServer.startup import (
    FD_MARGIN,
    FileLimit,
    StartupError,
    describe_failure,
    raise_file_limit,
    startup_cause,
)
from util.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, parse_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m aiServer",
        description="InferenceServer: batched AI inference over TCP with UDP broadcast.",
    )
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG_PATH),
        help="YAML config file (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, help="override server.tcp_port (0 = any free port)")
    parser.add_argument("--host", help="override server.host")
    parser.add_argument("--port-file", help="override server.port_file")
    parser.add_argument(
        "--http-port", type=int, help="override http.port (0 = any free port; one per process)"
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warn", "error", "critical"],
        help="override logging.level",
    )
    # Internal: set by the supervisor (server.workers > 1) on the workers it starts.
    parser.add_argument("--worker-channel", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker_overrides() -> dict[tuple[str, str], object]:
    """What a worker changes in the shared config: only the supervisor owns the ports."""
    return {
        ("server", "tcp_port"): 0,
        ("server", "host"): "127.0.0.1",
        ("server", "port_file"): None,
        ("server", "workers"): 1,
        ("http", "port"): 0,
    }


def worker_command(args: argparse.Namespace) -> list[str]:
    """The workers' command line (the supervisor adds --worker-channel and --worker-index)."""
    command = [sys.executable, "-m", "aiServer", "--config", args.config]
    if args.log_level:
        command += ["--log-level", args.log_level]
    return command


def apply_process_settings(config: Config) -> None:
    """Process-wide settings from the config, applied before the reactor starts."""
    sys.setswitchinterval(config.inference.gil_switch_interval_ms / 1000)


def fit_file_limit(config: Config, source: str) -> tuple[Config, FileLimit]:
    """Raise the open-file limit for server.max_connections; lower that when it cannot fit.

    StartupError when not even one connection fits.
    """
    limit = raise_file_limit(config.server.max_connections)
    if limit.capped:
        data = config.model_dump()
        data["server"]["max_connections"] = limit.max_connections
        config = parse_config(data, source)
    return config, limit


def warn_about_file_limit(limit: FileLimit) -> None:
    """Log what the open-file limit did to server.max_connections (once logging runs)."""
    from twisted.logger import Logger

    if limit.capped:
        Logger(namespace="aiServer.startup").warn(
            "server.max_connections={wanted} does not fit the open-file limit (RLIMIT_NOFILE "
            "{soft}, hard {hard}, less {margin} descriptors for the process): serving at most "
            "{fits} connections; more are answered BUSY. Raise the hard limit (ulimit -Hn, "
            "LimitNOFILE=) to serve {wanted}",
            wanted=limit.configured,
            soft=limit.soft,
            hard=limit.hard,
            margin=FD_MARGIN,
            fits=limit.max_connections,
        )


def main(argv: list[str] | None = None) -> int:
    """Load the config, start the service, run the reactor; the exit status."""
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        overrides: dict[tuple[str, str], object] = {
            ("server", "tcp_port"): args.port,
            ("server", "host"): args.host,
            ("server", "port_file"): args.port_file,
            ("logging", "level"): args.log_level,
            ("http", "port"): args.http_port,
        }
        applied = {k: v for k, v in overrides.items() if v is not None}
        if args.worker_channel is not None:
            applied.update(worker_overrides())
        if applied:
            data = config.model_dump()
            for (section, key), value in applied.items():
                data[section][key] = value
            config = parse_config(data, f"{args.config} with command-line overrides")
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    try:
        config, file_limit = fit_file_limit(config, args.config)
    except StartupError as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1

    apply_process_settings(config)
    from twisted.internet import reactor

    from aiServer.service import make_service
    from aiServer.supervisor import make_supervisor_service, worker_count
    from util.logging import start_logging

    workers = worker_count(config.server.workers) if args.worker_channel is None else 1
    worker = args.worker_channel is not None
    start_logging(
        config.logging.level,
        config.logging.format,
        system=f"worker-{args.worker_index}" if worker else ("supervisor" if workers > 1 else None),
        clock=reactor,
    )
    warn_about_file_limit(file_limit)
    service: MultiService
    try:
        if workers > 1:
            service = make_supervisor_service(config, reactor, workers, worker_command(args))
            supervisor = next(iter(service))
            ready, reload = supervisor.ready, supervisor.reload_workers
        else:
            channel = socket.socket(fileno=args.worker_channel) if worker else None
            daemon = make_service(config, reactor, channel)
            service, ready, reload = daemon, daemon.ready, daemon.reload_repository
    except (ValueError, ConfigError) as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    exit_code = [0]

    def fail(failure: Failure) -> None:
        # Exit status 2 for a configuration error (found by a model or a worker), else 1.
        cause = startup_cause(failure)
        exit_code[0] = 2 if isinstance(cause, ConfigError) else 1
        heading = "configuration error" if exit_code[0] == 2 else "start-up failed"
        print(f"{heading}:\n{describe_failure(failure)}", file=sys.stderr)
        reactor.stop()

    ready.addErrback(fail)
    if worker:
        # Ctrl-C reaches the whole process group; the supervisor answers it with SIGTERM.
        reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)

    def on_sighup(signum: int, frame: object) -> None:
        # A signal handler must not touch the reactor directly.
        threads: Any = reactor
        threads.callFromThread(reload)

    reactor.callWhenRunning(signal.signal, signal.SIGHUP, on_sighup)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
