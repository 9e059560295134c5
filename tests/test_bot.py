"""The bot against real daemons on loopback: every scenario, small numbers, real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.commands import RequestSpec, judge, request_mix
from bot.expected import moving_average_forecast
from bot.stats import merge_encoded, merge_reports, new_histogram
from commonlib.models.moving_average import MovingAverageModel
from commonlib.wire import pb
from tests.daemon_process import run_daemon
from tests.support import validate_report

ROOT = Path(__file__).resolve().parents[1]
# queue_timeout_ms 0: a shared CI host once paused both processes for ~10 s, and the
# daemon then answered the requests queued across the pause DEADLINE_EXCEEDED; these
# tests check the bot's counting and exit codes, where a stall may only cost latency
# (max_queue_delay_ms 0 likewise: a pause reads as reactor lag to delay admission).
PATIENT = {"queue_timeout_ms": 0, "max_queue_delay_ms": 0}
MA_ONLY = {
    "inference": {
        "batching": PATIENT,
        "models": {"moving_average": {"batching": {"max_batch_size": 64}}},
    }
}


def bot(*args: str, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    """Run `python -m bot ARGS --report F`; (exit code, report, output)."""
    report = Path(subprocess.check_output(["mktemp", "--suffix=.json"], text=True).strip())
    result = subprocess.run(
        [sys.executable, "-m", "bot", *args, "--report", str(report), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    data = json.loads(report.read_text()) if report.stat().st_size else {}
    report.unlink()
    if data:
        validate_report(data)
    return result.returncode, data, result.stdout + result.stderr


def counts_add_up(report: dict[str, Any]) -> None:
    assert report["sent"] == report["answered"] + report["error_count"] + report["lost"]


def test_histograms_merge_exactly_across_processes() -> None:
    values = [1, 7, 150, 999, 12_345, 250_000, 3_000_000] * 50
    parts = [new_histogram() for _ in range(3)]
    whole = new_histogram()
    for i, v in enumerate(values):
        parts[i % 3].record_value(v)
        whole.record_value(v)
    merged = merge_encoded([p.encode().decode() for p in parts])
    assert merged.get_total_count() == whole.get_total_count()
    for q in (50, 90, 99, 99.9, 100):
        assert merged.get_value_at_percentile(q) == whole.get_value_at_percentile(q)
    report = {
        "sent": 1,
        "answered": 1,
        "lost": 0,
        "wrong": 0,
        "retried": 0,
        "duplicates": 0,
        "errors": {"BUSY": 1},
        "series": [],
        "histogram": parts[0].encode().decode(),
    }
    merged_report = merge_reports([report, dict(report)])
    assert merged_report["sent"] == 2 and merged_report["errors"] == {"BUSY": 2}


def test_the_bot_computes_moving_average_itself_and_catches_wrong_answers() -> None:
    values = [1.2, 2.3, 3.1, 2.8, 3.5, 4.2]
    model = MovingAverageModel()
    config = {"forecast_steps": 5, "window_size": 5, "include_trend": True}
    server_side = model.forward([model.prepare(values, config)])[0].predictions
    ours = moving_average_forecast(values, 5, 5, True)
    assert list(server_side) == pytest.approx(ours, rel=1e-5)
    spec = RequestSpec("moving_average", tuple(values), config, tuple(ours))
    good = pb.Envelope(request_id=3)
    good.infer_response.model = "moving_average"
    good.infer_response.predictions.extend(ours)
    assert judge(spec, 3, good) == "ok"
    assert judge(spec, 4, good) == "WRONG_ANSWER"  # wrong id
    bad = pb.Envelope()
    bad.CopyFrom(good)
    bad.infer_response.predictions[2] += 0.5
    assert judge(spec, 3, bad) == "WRONG_ANSWER"
    error = pb.Envelope(request_id=3, error=pb.Error(code=pb.ERROR_CODE_BUSY))
    assert judge(spec, 3, error) == "BUSY"
    assert {s.model for s in request_mix(["moving_average", "lstm_timeseries"])} == {
        "moving_average",
        "lstm_timeseries",
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with run_daemon(tmp_path_factory.mktemp("bot"), {"inference": {"batching": PATIENT}}) as d:
        yield d


def test_load_closed_loop_counts_add_up_and_the_slo_sets_the_exit_code(daemon: Any) -> None:
    server = f"127.0.0.1:{daemon.tcp_port}"
    code, report, out = bot(
        "load",
        "--server",
        server,
        "--duration",
        "1.5",
        "--models",
        "moving_average,lstm_timeseries",
    )
    assert code == 0, out
    counts_add_up(report)
    assert report["answered"] > 100 and report["wrong"] == 0 and report["lost"] == 0
    assert report["series"] and "p99_ms" in report["latency"]
    assert "throughput" in out and "SLO held: error rate 0.00% <= 0.00%" in out
    assert "not checked: latency (no --slo-p99-ms)" in out
    assert report["warmup_s"] == 1.0 and report["warmup_latency"]["count"] > 0
    assert report["latency"]["count"] + report["warmup_latency"]["count"] == report["answered"]
    code, report, out = bot(
        "load", "--server", server, "--duration", "1", "--warmup", "0", "--slo-p99-ms", "0.001"
    )
    assert code == 1 and "SLO broken" in out


def test_load_open_loop_with_udp_scoring_and_a_plot(daemon: Any, tmp_path: Path) -> None:
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    plot = tmp_path / "load.png"
    code, report, out = bot(
        "load",
        "--server",
        f"127.0.0.1:{daemon.tcp_port}",
        "--rate",
        "400",
        "--duration",
        "1.5",
        "--udp-listen",
        str(port),
        "--plot",
        str(plot),
    )
    assert code == 0, out
    counts_add_up(report)
    assert 400 <= report["sent"] <= 700
    udp = report["udp"]
    assert udp["received"] >= report["answered"] * 0.95
    assert udp["lost"] == 0 and udp["duplicates"] == 0
    assert udp["delay"]["p99_ms"] < 1000
    assert plot.stat().st_size > 10_000


def test_stress_finds_a_knee(daemon: Any) -> None:
    code, report, out = bot(
        "stress",
        "--server",
        f"127.0.0.1:{daemon.tcp_port}",
        "--start-rate",
        "200",
        "--step-rate",
        "200",
        "--step-seconds",
        "0.7",
        "--max-steps",
        "3",
        "--slo-p99-ms",
        "500",
    )
    assert code == 0, out
    assert report["knee_rate"] >= 200
    assert [s["target_rate"] for s in report["steps"]][:1] == [200]
    counts_add_up(report)


def test_soak_reports_resource_slopes(daemon: Any) -> None:
    code, report, out = bot(
        "soak",
        "--server",
        f"127.0.0.1:{daemon.tcp_port}",
        "--pid",
        str(daemon.ports["pid"]),
        "--duration",
        "2.5",
        "--rate",
        "300",
        "--sample-seconds",
        "0.25",
    )
    assert code == 0, out
    assert len(report["resources"]) >= 5
    assert report["resources"][0]["rss_mib"] > 50
    assert "rss_slope_mib_per_min" in report and "p99_drift_ms" in report
    counts_add_up(report)


def test_concurrency_serves_every_connection(daemon: Any) -> None:
    code, report, out = bot(
        "concurrency", "--server", f"127.0.0.1:{daemon.tcp_port}", "--connections", "300"
    )
    assert code == 0, out
    assert report["served"] == 300
    assert report["connect_latency"]["count"] == 300
    counts_add_up(report)


def test_processes_split_the_load_and_merge(daemon: Any) -> None:
    code, report, out = bot(
        "load",
        "--server",
        f"127.0.0.1:{daemon.tcp_port}",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--processes",
        "2",
        "--connections",
        "4",
    )
    assert code == 0, out
    assert report["processes"] == 2
    counts_add_up(report)
    assert report["latency"]["count"] == report["answered"]


def test_failover_loses_nothing_when_a_server_is_killed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        run_daemon(tmp_path / "a", MA_ONLY) as first,
        run_daemon(tmp_path / "b", MA_ONLY) as second,
    ):
        code, report, out = bot(
            "failover",
            "--servers",
            f"127.0.0.1:{first.tcp_port}",
            f"127.0.0.1:{second.tcp_port}",
            "--duration",
            "2.5",
            "--kill-after",
            "1",
            "--kill-pid",
            str(first.ports["pid"]),
            "--connections",
            "4",
        )
        assert first.process.wait(timeout=10) == -9
    assert code == 0, out
    assert report["lost"] == 0 and report["duplicates"] == 0
    assert report["retried"] >= 1 and report["time_to_recover_s"] is not None
    counts_add_up(report)
