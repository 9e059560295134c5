"""Start the real daemon as a subprocess on ephemeral loopback ports, for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DaemonProcess:
    """A running daemon: its process, ports and log file."""

    process: subprocess.Popen[bytes]
    ports: dict[str, Any]
    log_path: Path

    @property
    def tcp_port(self) -> int:
        return int(self.ports["tcp"])

    @property
    def http_port(self) -> int:
        return int(self.ports["http"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_daemon(
    tmp_path: Path,
    config: dict[str, Any] | None = None,
    timeout: float = 60.0,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[DaemonProcess]:
    """Run ``python -m aiServer`` with ``config`` (YAML dict) until the block ends.

    ``preexec_fn`` runs in the child before it starts (e.g. to lower its rlimits).
    """
    config = dict(config or {})
    config.setdefault("http", {"port": 0})  # never the fixed default port in tests
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port_file = tmp_path / "ports.json"
    log_path = tmp_path / "daemon.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiServer",
                "--config",
                str(config_path),
                "--port",
                "0",
                "--port-file",
                str(port_file),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=preexec_fn,
        )
    try:
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if process.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {process.returncode}:\n{log_path.read_text()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon not ready after {timeout}s:\n{log_path.read_text()}")
            time.sleep(0.05)
        ports = json.loads(port_file.read_text())
        yield DaemonProcess(process, ports, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
