"""The bot's scenarios do what docs/bot.md says: concurrency bursts, the failover ledger,
stress limits and knee refinement, the soak leak verdict, UDP jitter and per-server scores.

Real daemons on loopback with small numbers (a few seconds each), and the pure parts
without any server.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.retry import RetryPolicy
from tests.daemon_process import DaemonProcess, run_daemon

ROOT = Path(__file__).resolve().parents[1]


def bot(tmp_path: Path, command: str) -> tuple[int, dict[str, Any], str]:
    """Run `python -m bot COMMAND --report F --quiet`; (exit code, report, output)."""
    report = tmp_path / f"report-{len(list(tmp_path.iterdir()))}.json"
    result = subprocess.run(
        [sys.executable, "-m", "bot", *shlex.split(command), "--report", str(report), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return result.returncode, data, result.stdout + result.stderr


def counts_add_up(report: dict[str, Any]) -> None:
    assert report["sent"] == report["answered"] + report["error_count"] + report["lost"]


# -- concurrency: a burst of first requests larger than the queue can start in time ------

# The failure mode of 5,000 connections against the default config, scaled down: a
# burst of first requests overflows max_queue (BUSY) and the queued tail waits past
# queue_timeout_ms (DEADLINE_EXCEEDED), because a batch completes at most once per
# reactor turn and every turn also serves the connection storm.
BURST = {
    "inference": {
        "batching": {"max_queue": 16, "queue_timeout_ms": 5, "max_queue_delay_ms": 0},
        "models": {"moving_average": {"batching": {"max_batch_size": 1}}},
    }
}


@pytest.fixture(scope="module")
def burst_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with run_daemon(tmp_path_factory.mktemp("burst"), BURST) as d:
        yield d


def test_concurrency_serves_a_burst_the_queue_cannot_hold(
    burst_daemon: DaemonProcess, tmp_path: Path
) -> None:
    code, report, out = bot(
        tmp_path, f"concurrency --server 127.0.0.1:{burst_daemon.tcp_port} --connections 300"
    )
    assert code == 0, out
    counts_add_up(report)
    assert report["served"] == 300 and report["error_count"] == 0
    # Both refusals happened and were retried: the burst did overflow the queue.
    assert report["retried_by_code"].get("BUSY", 0) > 0
    assert report["retried_by_code"].get("DEADLINE_EXCEEDED", 0) > 0
    assert report["retried"] == sum(report["retried_by_code"].values())
    assert report["first_reply_latency"]["count"] == 300


def test_retry_policy_backs_off_exponentially_with_jitter_within_a_budget() -> None:
    policy = RetryPolicy(base_s=0.05, cap_s=0.4, budget_s=10.0, seed=7)
    pauses = [[policy.pause("BUSY", attempt, 0.0) for _ in range(200)] for attempt in range(6)]
    for attempt, drawn in enumerate(pauses):
        bound = min(0.4, 0.05 * 2**attempt)
        assert all(p is not None and 0.0 <= p <= bound for p in drawn)
        assert max(p for p in drawn if p is not None) > bound * 0.9  # full jitter: the range
    assert policy.retried["BUSY"] == 1200
    assert policy.pause("DEADLINE_EXCEEDED", 0, 0.0) is not None
    # Not retryable: the request ran (or was refused for good).
    assert policy.pause("INVALID_INPUT", 0, 0.0) is None
    assert policy.pause("WRONG_ANSWER", 0, 0.0) is None
    # The budget is spent: give up, and count it.
    assert policy.pause("BUSY", 0, 10.0) is None
    assert policy.gave_up["BUSY"] >= 1
    report = policy.to_json()
    assert report["retried"]["DEADLINE_EXCEEDED"] == 1
