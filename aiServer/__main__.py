"""``python -m aiServer --config PATH``: run the daemon until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import socket
import sys

import commonlib.torch_env  # noqa: F401 - must precede any torch import (OMP_NUM_THREADS)
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
    )
    try:
        if workers > 1:
            service = make_supervisor_service(config, reactor, workers, worker_command(args))
        else:
            channel = socket.socket(fileno=args.worker_channel) if worker else None
            service = make_service(config, reactor, channel)
    except (ValueError, ConfigError) as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    exit_code = [0]
    inference = next(iter(service))

    def fail(_: object) -> None:
        exit_code[0] = 1
        reactor.stop()

    inference.ready.addErrback(fail)
    if worker:
        # Ctrl-C reaches the whole process group; the supervisor answers it with SIGTERM.
        reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
