"""``python -m aiServer --config PATH``: run the daemon until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import sys

import commonlib.torch_env  # noqa: F401 - must precede any torch import (OMP_NUM_THREADS)
from util.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load the config, start the service, run the reactor; the exit status."""
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        overrides = {
            ("server", "tcp_port"): args.port,
            ("server", "host"): args.host,
            ("server", "port_file"): args.port_file,
            ("logging", "level"): args.log_level,
            ("http", "port"): args.http_port,
        }
        if any(v is not None for v in overrides.values()):
            data = config.model_dump()
            for (section, key), value in overrides.items():
                if value is not None:
                    data[section][key] = value
            config = parse_config(data, f"{args.config} with command-line overrides")
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2

    from twisted.internet import reactor

    from aiServer.service import make_service
    from util.logging import start_logging

    start_logging(config.logging.level, config.logging.format)
    try:
        service = make_service(config, reactor)
    except (ValueError, ConfigError) as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    exit_code = [0]
    inference = next(iter(service))

    def fail(_: object) -> None:
        exit_code[0] = 1
        reactor.stop()

    inference.ready.addErrback(fail)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
