"""The bot's scenarios do what docs/bot.md says: concurrency bursts, the failover ledger,
stress limits and knee refinement, the soak leak verdict, UDP jitter and per-server scores.

Real daemons on loopback with small numbers (a few seconds each), and the pure parts
without any server.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.cli import build_parser
from bot.histogram import new_histogram, record_us
from bot.ledger import read_ledger
from bot.report import slo_verdict
from bot.retry import RetryPolicy
from bot.scenarios.failover import ledger_counts, merge_failover
from bot.scenarios.soak import leak_verdict, rss_warmup_s
from bot.scenarios.stress import KneeSearch, Ramp, knee_of, step_row
from bot.udp_score import UdpScorer, udp_loss_check
from commonlib.wire import pb
from tests.daemon_process import DaemonProcess, run_daemon
from tests.support import run_bot

ROOT = Path(__file__).resolve().parents[1]


def bot(tmp_path: Path, command: str) -> tuple[int, dict[str, Any], str]:
    """Run `python -m bot COMMAND --report F --quiet`; (exit code, report, output)."""
    return run_bot(tmp_path, command)


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


# -- failover: the ledger, and clients that go back to a restarted server ---------------

PATIENT_MA = {
    "inference": {
        "batching": {"queue_timeout_ms": 0, "max_queue_delay_ms": 0},
        "models": {
            "moving_average": {"batching": {"max_batch_size": 64}},
            "lstm_timeseries": {"enabled": False},
        },
    }
}
# A real daemon with its imports done, started once the file argv[1] exists: the
# restart of a killed daemon in seconds rather than the time it takes to import torch.
STANDBY = """\
import os, sys, time
from pathlib import Path
import aiServer.service
from aiServer.__main__ import main
go = Path(sys.argv[1])
go.with_suffix(".imported").touch()
while not go.exists():
    time.sleep(0.01)
sys.exit(main(sys.argv[2:]))
"""


@contextmanager
def standby_daemon(tmp_path: Path, config: Path, port: int) -> Iterator[Path]:
    """A daemon for ``port`` that starts when the yielded file is created."""
    go = tmp_path / "standby.go"
    log = (tmp_path / "standby.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", STANDBY, str(go), "--config", str(config), "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not go.with_suffix(".imported").exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield go
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_failover_ledger_and_clients_back_on_the_restarted_server(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        run_daemon(tmp_path / "a", PATIENT_MA) as doomed,
        run_daemon(tmp_path / "b", PATIENT_MA) as other,
        standby_daemon(tmp_path, tmp_path / "a" / "config.yaml", doomed.tcp_port) as go,
    ):
        first, second = f"127.0.0.1:{doomed.tcp_port}", f"127.0.0.1:{other.tcp_port}"
        plot = tmp_path / "failover.png"
        code, report, out = bot(
            tmp_path,
            f"failover --servers {first} {second} --duration 6 --connections 4 "
            f"--kill-after 1 --kill-pid {doomed.ports['pid']} --restart-after 1.2 "
            f"--restart-cmd 'touch {go}' --plot {plot} "
            f"--udp-listen {free_udp_port()} --max-udp-loss 0.01",
        )
    assert code == 0, out
    counts_add_up(report)
    # The ledger beside the report: one line per request, lost and duplicated counted from it.
    ledger_file = Path(report["ledger_file"])
    assert ledger_file.parent == tmp_path and ledger_file.name.endswith(".ledger.jsonl")
    rows = read_ledger(ledger_file)
    assert len(rows) == report["sent"] == len({row["id"] for row in rows})
    assert ledger_counts(rows) == report["ledger_counts"]
    assert report["lost"] == ledger_counts(rows)["lost"] == 0
    assert report["duplicates"] == ledger_counts(rows)["duplicated"] == 0
    retried = [row for row in rows if row["outcome"] == "retried-then-answered"]
    assert retried and all(row["servers"][0] == first for row in retried)
    assert all(row["servers"][-1] == row["answered_by"] for row in retried)
    assert {row["outcome"] for row in rows} <= {"answered", "retried-then-answered"}
    # After the restart the clients that started there went back to it.
    markers = report["markers"]
    assert markers["kill_s"] < markers["recovered_s"] and markers["restart_s"] >= 1.2
    assert markers["back_home_s"] is not None and markers["back_home_s"] > markers["restart_s"]
    later = [row for row in rows if row["answered_s"] > markers["back_home_s"]]
    back = sum(1 for row in later if row["answered_by"] == first)
    assert later and back >= len(later) // 4, (back, len(later))
    assert set(report["server_series"]) == {first, second}
    assert plot.stat().st_size > 10_000
    # UDP: each server scored apart; the restarted one is a new sender, subscribed again.
    udp = report["udp"]
    assert udp["sources"] == 3 and len(udp["per_source"]) == 3
    for score in udp["per_source"].values():
        assert score["received"] > 0 and score["jitter_ms"] >= 0.0 and score["series"]
    assert sum(s["received"] for s in udp["per_source"].values()) == udp["received"]
    assert udp["jitter_ms"] == max(s["jitter_ms"] for s in udp["per_source"].values())
    subscription = udp["subscription"]["per_server"]
    assert subscription[first]["drops"] == 1 and subscription[first]["resubscribed"] == 1
    assert subscription[second]["drops"] == 0
    assert "udp from" in out and "drops/attempts/resubscribed" in out


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_failover_ledgers_of_two_processes_merge_and_count_again() -> None:
    def part(rows: list[dict[str, Any]], kill: float | None, back: float | None) -> dict[str, Any]:
        markers = dict.fromkeys(
            ("kill_s", "first_drop_s", "restart_s", "recovered_s", "back_home_s")
        )
        markers.update(kill_s=kill, back_home_s=back)
        return {"ledger": rows, "markers": markers, "server_series": {"a": [[0, len(rows)]]}}

    def row(i: int, outcome: str, answers: int) -> dict[str, Any]:
        return {"id": i, "outcome": outcome, "answers": answers}

    merged: dict[str, Any] = {}
    merge_failover(
        merged,
        [
            part([row(1, "answered", 1), row(3, "lost", 0)], 1.0, 2.5),
            part([row(2, "retried-then-answered", 2), row(4, "BUSY", 1)], None, 3.0),
        ],
    )
    assert [r["id"] for r in merged["ledger"]] == [1, 2, 3, 4]
    assert merged["lost"] == 1 and merged["duplicates"] == 1
    assert merged["ledger_counts"] == {
        "answered": 1,
        "retried-then-answered": 1,
        "lost": 1,
        "BUSY": 1,
        "duplicated": 1,
    }
    assert merged["markers"]["kill_s"] == 1.0 and merged["markers"]["back_home_s"] == 3.0
    assert merged["server_series"] == {"a": [(0, 4)]}


# -- stress: limits named per step, the knee refined by bisection, defaults in --help -----


def test_stress_names_the_broken_limits_and_bisects_the_knee(
    burst_daemon: DaemonProcess, tmp_path: Path
) -> None:
    # 200 req/s holds; 20,200 req/s swamps a queue of 16 with batches of one.
    plot = tmp_path / "stress.png"
    code, report, out = bot(
        tmp_path,
        f"stress --server 127.0.0.1:{burst_daemon.tcp_port} --processes 2 --start-rate 200 "
        "--step-rate 20000 --step-seconds 0.5 --max-steps 2 --slo-p99-ms 200 "
        f"--max-error-rate 0.2 --refine-steps 3 --refine-seconds 0.25 --plot {plot}",
    )
    assert code == 0, out
    counts_add_up(report)
    steps = report["steps"]
    assert [s["phase"] for s in steps] == ["ramp", "ramp", "refine", "refine", "refine"]
    assert [s["index"] for s in steps] == [0, 1, 2, 3, 4]
    assert steps[0]["held"] and steps[0]["broken"] == []
    first_bad = steps[1]
    assert not first_bad["held"] and first_bad["broken"]
    assert any(code in " ".join(first_bad["broken"]) for code in ("BUSY", "DEADLINE_EXCEEDED"))
    for step in steps:
        assert step["held"] == (not step["broken"])
        assert sum(step["errors_by_code"].values()) == step["errors"]
    # Each bisection step halves the interval between the last held and the first broken.
    good, bad = 200.0, 20_200.0
    for step in steps[2:]:
        assert step["target_rate"] == pytest.approx((good + bad) / 2)
        good, bad = (step["target_rate"], bad) if step["held"] else (good, step["target_rate"])
    assert report["knee_rate"] == pytest.approx(good) and report["knee_coarse_rate"] == 200
    assert report["step_slo"] == {"p99_ms": 200.0, "max_error_rate": 0.2}
    assert "limit broken" in out and "error rate" in out
    assert plot.stat().st_size > 10_000


def test_knee_search_ramps_then_bisects() -> None:
    ramp = Ramp(start_rate=1000, step_rate=1000, max_steps=10, refine_steps=3, refine_s=0.5)
    search = KneeSearch(ramp)
    ran = []
    while (step := search.next_step()) is not None:
        ran.append(step)
        search.record(step[0] <= 2300)  # the server holds up to 2,300 req/s
    assert ran == [
        (1000, 3.0, "ramp"),
        (2000, 3.0, "ramp"),
        (3000, 3.0, "ramp"),
        (2500, 0.5, "refine"),
        (2250, 0.5, "refine"),
        (2375, 0.5, "refine"),
    ]
    assert search.good == 2250
    # Nothing held: no knee to refine.
    search = KneeSearch(ramp)
    assert search.next_step() == (1000, 3.0, "ramp")
    search.record(False)
    assert search.next_step() is None
    # Never broken: the ramp runs to max_steps and nothing is refined.
    search = KneeSearch(replace(ramp, max_steps=2))
    for _ in range(2):
        assert search.next_step() is not None
        search.record(True)
    assert search.next_step() is None


def test_step_rows_name_every_broken_limit() -> None:
    ramp = Ramp(slo_p99_ms=5.0, max_error_rate=0.01)
    histogram = new_histogram()
    for _ in range(100):
        record_us(histogram, 8000)
    counts = {"sent": 100, "answered": 90, "errors": 8, "lost": 2}
    row = step_row(3, 900.0, 1.0, counts, histogram, ramp, {"DEADLINE_EXCEEDED": 2, "BUSY": 6})
    assert not row["held"]
    assert row["broken"][0].startswith("p99 8.") and row["broken"][0].endswith("> 5 ms")
    assert row["broken"][1] == "error rate 10.00% > 1.00% (BUSY 6, DEADLINE_EXCEEDED 2, lost 2)"
    fine = new_histogram()
    record_us(fine, 1000)
    counts = {"sent": 1, "answered": 1, "errors": 0, "lost": 0}
    assert step_row(0, 1.0, 1.0, counts, fine, ramp)["broken"] == []
    rows = [
        {"phase": "ramp", "held": True, "target_rate": 100.0},
        {"phase": "ramp", "held": False, "target_rate": 200.0},
        {"phase": "refine", "held": True, "target_rate": 150.0},
        {"phase": "refine", "held": False, "target_rate": 175.0},
    ]
    assert knee_of(rows) == 150.0 and knee_of(rows[:2]) == 100.0
    assert knee_of([{**rows[0], "held": False}, rows[2]]) == 0.0


def test_every_option_shows_its_default_in_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, scenario in sub.choices.items():
        formatter = scenario._get_formatter()
        for action in scenario._actions:
            if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
                continue
            text = formatter._expand_help(action)
            assert "default" in text, (name, action.option_strings[0], text)
    stress = " ".join(sub.choices["stress"].format_help().split())
    assert "length of a step (default: 3.0)" in stress
    assert "fail when p99 is above this (default: 10.0)" in stress  # the stress SLO


# -- soak: the leak verdict from the RSS slope ------------------------------------------

# A real process whose RSS grows about 10 MiB/s, and one whose RSS stays flat.
GROWING = "import time\nx = []\nwhile True:\n    x.append(bytearray(512 * 1024)); time.sleep(0.05)"
FLAT = "import time\nwhile True:\n    time.sleep(1)"


@pytest.mark.parametrize(
    ("program", "leaks"), [(GROWING, True), (FLAT, False)], ids=["growing", "flat"]
)
def test_soak_judges_the_rss_slope_after_the_warm_up(
    burst_daemon: DaemonProcess, tmp_path: Path, program: str, leaks: bool
) -> None:
    sampled = subprocess.Popen([sys.executable, "-c", program])
    try:
        time.sleep(0.3)
        code, report, out = bot(
            tmp_path,
            f"soak --server 127.0.0.1:{burst_daemon.tcp_port} --pid {sampled.pid} "
            "--duration 2 --rate 100 --sample-seconds 0.1 --rss-warmup 0.5 "
            "--max-error-rate 1 --max-rss-slope-mib-per-h 3600",
        )
    finally:
        sampled.kill()
        sampled.wait()
    counts_add_up(report)
    leak = report["leak"]
    assert leak["warmup_s"] == 0.5 and leak["samples"] >= 10
    assert leak["max_rss_slope_mib_per_h"] == 3600
    if leaks:  # ~10 MiB/s is ~36,000 MiB/h
        assert leak["verdict"] == "leak" and leak["rss_slope_mib_per_h"] > 3600
        assert code == 1 and "RSS grows" in out and "MiB/h > 3600 MiB/h" in out
        assert "(max 3600): leak" in out
    else:
        assert leak["verdict"] == "no leak" and abs(leak["rss_slope_mib_per_h"]) < 3600
        assert code == 0, out


def test_leak_verdict_is_least_squares_after_the_warm_up() -> None:
    # 100 MiB of warm-up growth, then +1 MiB per minute (60 MiB/h).
    samples = [
        {"t": float(t), "rss_mib": 100.0 * min(t, 60) / 60 + max(0, t - 60) / 60, "fds": 9}
        for t in range(0, 600, 5)
    ]
    leak = leak_verdict(samples, 60.0, 30.0)
    assert leak["rss_slope_mib_per_h"] == pytest.approx(60.0)
    assert leak["verdict"] == "leak" and "60.00 MiB/h > 30 MiB/h" in leak["broken"][0]
    assert leak_verdict(samples, 60.0, 90.0)["verdict"] == "no leak"
    assert leak_verdict(samples, 60.0, None) == {
        **leak,
        "verdict": "not judged",
        "max_rss_slope_mib_per_h": None,
        "broken": [],
    }
    # The warm-up left in reads as a leak: why it is left out.
    assert leak_verdict(samples, 0.0, 90.0)["verdict"] == "leak"
    few = leak_verdict(samples[:14], 60.0, 90.0)
    assert few["verdict"] == "too few samples" and few["broken"]
    assert rss_warmup_s(600.0, None) == 60.0 and rss_warmup_s(5.0, None) == 1.0
    assert rss_warmup_s(600.0, 0.0) == 0.0
    report = {
        "sent": 10,
        "error_count": 0,
        "lost": 0,
        "latency": {"p99_ms": 1.0},
        "scenario": "soak",
        "broken_checks": leak["broken"],
    }
    assert slo_verdict(report, None, 0.0) == leak["broken"]


# -- UDP: RFC 3550 jitter, per-server scores, the loss SLO -------------------------------


def _datagram(seq: int, ts_us: int) -> bytes:
    payload = pb.BroadcastResult(request_id=seq)
    payload.result.model = "moving_average"
    return pb.Datagram(
        sequence=seq, server_time_us=ts_us, chunk_count=1, payload=payload.SerializeToString()
    ).SerializeToString()


def test_udp_jitter_follows_rfc_3550_per_server() -> None:
    now = [100.0]
    scorer = UdpScorer(wall_clock=lambda: now[0])
    steady, shaky = ("127.0.0.1", 5000), ("127.0.0.1", 5001)
    transits_ms = [1.0, 3.0, 2.0, 6.0, 2.0]
    expected = 0.0
    for i, transit in enumerate(transits_ms):
        sent_us = 99_000_000 + i * 10_000
        now[0] = (sent_us + transit * 1000) / 1e6
        scorer.datagramReceived(_datagram(i + 1, sent_us), shaky)
        now[0] = (sent_us + 1000) / 1e6
        scorer.datagramReceived(_datagram(i + 1, sent_us), steady)  # always 1 ms
        if i:
            expected += (abs(transit - transits_ms[i - 1]) - expected) / 16
    now[0] = 99.101
    scorer.datagramReceived(_datagram(7, 99_100_000), steady)  # 6 lost, 1 ms again
    report = scorer.report()
    shaky_score = report["per_source"]["127.0.0.1:5001"]
    steady_score = report["per_source"]["127.0.0.1:5000"]
    assert shaky_score["jitter_ms"] == pytest.approx(expected, rel=1e-6)
    assert shaky_score["jitter_max_ms"] >= shaky_score["jitter_ms"] > 0
    assert steady_score["jitter_ms"] == pytest.approx(0.0, abs=1e-3)
    assert report["jitter_ms"] == shaky_score["jitter_ms"]
    assert (steady_score["lost"], shaky_score["lost"]) == (1, 0)
    assert steady_score["loss_rate"] == pytest.approx(1 / 7)
    assert sum(row["received"] for row in steady_score["series"]) == 6
    assert sum(row["lost"] for row in steady_score["series"]) == 1
    assert udp_loss_check(report, 0.2) == []
    assert udp_loss_check(report, None) == []
    broken = udp_loss_check(report, 0.05)
    assert broken == ["UDP loss 8.333% > 5.000% (1 of 12 datagrams)"]


def test_max_udp_loss_needs_a_udp_listener(tmp_path: Path) -> None:
    code, _, out = bot(
        tmp_path, "load --server 127.0.0.1:9 --duration 1 --warmup 0 --max-udp-loss 0.01"
    )
    assert code == 2 and "--max-udp-loss needs --udp-listen" in out
    assert "Traceback" not in out
