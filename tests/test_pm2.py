"""Two daemons under real pm2; the bot's failover run kills one and loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PM2 = ROOT / "node_modules" / ".bin" / "pm2"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None, reason="node is not installed on this machine"
)


def free_port_pair() -> int:
    """A base port with base and base+1 free (TCP), and base+1000, +1001 for HTTP."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base > 60000:
            continue
        ok = True
        for port in (base, base + 1, base + 1000, base + 1001):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free ports")


def test_failover_between_two_pm2_daemons_loses_nothing(tmp_path: Path) -> None:
    assert PM2.exists(), "pm2 is installed by `make test` (npm install, package.json)"
    base = free_port_pair()
    env = dict(
        os.environ,
        PM2_HOME=str(tmp_path / "pm2"),
        INFER_INSTANCES="2",
        INFER_BASE_PORT=str(base),
        INFER_HTTP_BASE_PORT=str(base + 1000),
        INFER_RUN_DIR=str(tmp_path / "run"),
    )
    (tmp_path / "run").mkdir()
    ecosystem = str(ROOT / "config" / "pm2" / "ecosystem.config.js")
    try:
        subprocess.run(
            [str(PM2), "start", ecosystem], env=env, check=True, timeout=60, capture_output=True
        )
        port_files = [tmp_path / "run" / f"infer-{i}.json" for i in range(2)]
        deadline = time.monotonic() + 90
        while not all(p.exists() for p in port_files):
            assert time.monotonic() < deadline, subprocess.run(
                [str(PM2), "logs", "--nostream", "--lines", "30"],
                env=env,
                capture_output=True,
                text=True,
            ).stdout
            time.sleep(0.2)
        first = json.loads(port_files[0].read_text())
        report_path = tmp_path / "failover.json"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bot",
                "failover",
                "--servers",
                f"127.0.0.1:{base}",
                f"127.0.0.1:{base + 1}",
                "--duration",
                "3",
                "--kill-after",
                "1",
                "--kill-pid",
                str(first["pid"]),
                "--connections",
                "4",
                "--quiet",
                "--report",
                str(report_path),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(report_path.read_text())
        assert report["lost"] == 0 and report["duplicates"] == 0
        assert report["retried"] >= 1
        assert report["sent"] == report["answered"] + report["error_count"] + report["lost"]
        # pm2 restarts the killed daemon on the same port.
        deadline = time.monotonic() + 60
        while True:
            restarted = json.loads(port_files[0].read_text())
            if restarted["pid"] != first["pid"]:
                break
            assert time.monotonic() < deadline, "pm2 did not restart the killed daemon"
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", base), timeout=30):
            pass
    finally:
        subprocess.run([str(PM2), "kill"], env=env, timeout=60, capture_output=True)
