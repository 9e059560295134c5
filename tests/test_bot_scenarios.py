"""`python -m bot` end to end against real daemons on loopback: --processes, UDP, exit codes.

Small numbers (seconds). Every run checks that the counts add up
(sent = answered + errors + lost) and that the JSON report is valid.
"""

from __future__ import annotations

import shlex
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.expected import moving_average_forecast
from commonlib.wire import pb
from factory.client_codec import EnvelopeDecoder, frame_envelope
from tests.daemon_process import DaemonProcess, run_daemon
from tests.support import run_bot

ROOT = Path(__file__).resolve().parents[1]
# A short UDP lease (the bot must renew it) and small datagrams (results arrive in chunks);
# no queue timeout or delay admission, so a pause of the shared CI host costs latency,
# never an error. The lease is short enough to lapse in a run the bot does not renew,
# long enough for a renewal delayed by a loaded host (0.6 s lapsed there: 5,361 of 8,848
# results in a failover run were never sent, no datagram lost).
CONFIG = {
    "inference": {
        "batching": {"queue_timeout_ms": 0, "max_queue_delay_ms": 0},
        "models": {"moving_average": {"batching": {"max_batch_size": 64}}},
    },
    "udp": {"lease_s": 1.5, "max_datagram_bytes": 200},
}


def bot(tmp_path: Path, command: str, quiet: bool = True) -> tuple[int, dict[str, Any], str]:
    """Run `python -m bot COMMAND --report F`; (exit code, report, stdout + stderr)."""
    return run_bot(tmp_path, command, quiet, timeout=60)


def counts_add_up(report: dict[str, Any]) -> None:
    assert report["sent"] == report["answered"] + report["error_count"] + report["lost"]
    assert report["error_count"] == sum(report["errors"].values())
    assert sum(row["answered"] for row in report["series"]) == report["answered"]
    assert all("histogram" not in row for row in report["series"])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with run_daemon(tmp_path_factory.mktemp("bot-scenarios"), CONFIG) as d:
        yield d


def test_load_over_two_processes_with_udp_json_scoring(daemon: DaemonProcess, tmp_path: Path):
    plot = tmp_path / "load.png"
    code, report, out = bot(
        tmp_path,
        f"load --server 127.0.0.1:{daemon.tcp_port} --rate 300 --duration 2.5 --processes 2 "
        f"--udp-listen {free_udp_port()} --udp-json --plot {plot}",
        quiet=False,
    )
    assert code == 0, out
    counts_add_up(report)
    assert report["processes"] == 2 and report["lost"] == 0 and report["wrong"] == 0
    assert 650 <= report["sent"] <= 800
    assert report["latency"]["count"] + report["warmup_latency"]["count"] == report["answered"]
    assert 250 <= report["warmup_latency"]["count"] <= 350  # the first second of 300/s
    udp = report["udp"]
    # The 1.5 s lease was renewed all along, and every chunked JSON result reassembled.
    assert udp["subscription"]["renewals"] >= 3
    assert udp["results"] == report["answered"] and udp["results_missing"] == 0
    assert udp["lost"] == 0 and udp["duplicates"] == 0 and udp["incomplete_results"] == 0
    assert udp["received"] > udp["results"]  # several datagrams per result
    assert plot.stat().st_size > 10_000
    assert "bot load" in out and "req/s" in out  # the live line (on stderr)


def test_stress_over_two_processes_judges_merged_steps(daemon: DaemonProcess, tmp_path: Path):
    stress = (
        f"stress --server 127.0.0.1:{daemon.tcp_port} --processes 2 "
        "--start-rate 200 --step-rate 200 --step-seconds 0.7"
    )
    code, report, out = bot(tmp_path, f"{stress} --max-steps 2 --slo-p99-ms 500")
    assert code == 0, out
    counts_add_up(report)
    steps = report["steps"]
    assert [s["target_rate"] for s in steps] == [200, 400] and all(s["held"] for s in steps)
    assert report["knee_rate"] == 400
    assert sum(s["sent"] for s in steps) == report["sent"]
    assert 130 <= steps[0]["sent"] <= 150  # both workers' halves of 200/s for 0.7 s
    code, report, out = bot(tmp_path, f"{stress} --slo-p99-ms 0.001")
    assert code == 1 and "no knee" in out
    assert len(report["steps"]) == 1 and report["knee_rate"] == 0


def test_concurrency_over_two_processes_merges_latencies(daemon: DaemonProcess, tmp_path: Path):
    server = f"127.0.0.1:{daemon.tcp_port}"
    code, report, out = bot(
        tmp_path, f"concurrency --server {server} --connections 400 --processes 2"
    )
    assert code == 0, out
    counts_add_up(report)
    assert report["served"] == report["connections"] == 400
    assert report["connect_latency"]["count"] == 400
    assert report["first_reply_latency"]["count"] == 400
    code, report, out = bot(
        tmp_path, f"concurrency --server {server} --connections 20 --slo-p99-ms 0.001"
    )
    assert code == 1 and "SLO broken" in out


def test_soak_over_two_processes_samples_the_server_once(daemon: DaemonProcess, tmp_path: Path):
    code, report, out = bot(
        tmp_path,
        f"soak --server 127.0.0.1:{daemon.tcp_port} --processes 2 "
        f"--pid-file {daemon.log_path.parent / 'ports.json'} "
        "--duration 2 --rate 200 --sample-seconds 0.2",
    )
    assert code == 0, out
    counts_add_up(report)
    times = [s["t"] for s in report["resources"]]
    assert len(times) >= 8 and times == sorted(times)  # one sampler, not two interleaved
    assert report["rss_start_mib"] > 30 and report["fds_start"] > 3
    assert {"rss_slope_mib_per_min", "fd_slope_per_min", "p99_drift_ms"} <= set(report)


def test_failover_over_two_processes_with_udp_from_both_servers(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    with run_daemon(tmp_path, CONFIG) as doomed:
        code, report, out = bot(
            tmp_path,
            f"failover --servers 127.0.0.1:{doomed.tcp_port} 127.0.0.1:{daemon.tcp_port} "
            f"--duration 2.5 --kill-after 0.8 --kill-pid {doomed.ports['pid']} "
            f"--connections 4 --processes 2 --udp-listen {free_udp_port()}",
        )
        assert doomed.process.wait(timeout=10) == -9
    assert code == 0, out
    counts_add_up(report)
    assert report["lost"] == 0 and report["duplicates"] == 0 and report["unexpected"] == 0
    assert report["retried"] >= 1 and report["time_to_recover_s"] is not None
    assert len(report["answered_by_server"]) == 2
    assert report["actions"] and "SIGKILL" in report["actions"][0]
    udp = report["udp"]
    assert udp["sources"] == 2  # scored per server: each has its own sequence numbers
    # Thousands of datagrams a second on a shared 2-core box: allow a rare drop.
    assert udp["results_missing"] <= report["answered"] // 1000 and udp["duplicates"] == 0
    # With nowhere left to fail over to, requests are lost and the run fails.
    code, report, out = bot(
        tmp_path,
        f"failover --servers 127.0.0.1:{doomed.tcp_port} --duration 0.5 --warmup 0 --grace 0.3 "
        "--connections 2 --inflight 3",
    )
    assert code == 1 and "failover lost 6" in out, out
    counts_add_up(report)


def test_an_unreachable_server_is_exit_code_2_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        for extra in ("", "--processes 2"):
            code, _, out = bot(
                tmp_path, f"load --server 127.0.0.1:{port} --duration 1 --warmup 0 {extra}"
            )
            assert code == 2, out
            assert "cannot connect" in out and "Traceback" not in out


def test_bad_runs_stop_before_any_load_with_exit_code_2(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    server = f"127.0.0.1:{daemon.tcp_port}"
    missing = tmp_path / "nonexistent" / "r.json"
    for argv, message in (
        (
            f"load --server {server} --models moving_average,movingaverage",
            f"{server} does not serve 'movingaverage' (it serves: ",
        ),
        (f"load --server {server} --report {missing}", f"--report {missing}: no directory"),
        (f"load --server {server} --rate -5", "argument --rate: expected a number >= 0, got -5"),
    ):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "bot", *shlex.split(argv), "--duration", "30", "--quiet"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = result.stdout + result.stderr
        assert result.returncode == 2, out
        assert message in out and "Traceback" not in out
        assert len(out.strip().splitlines()) == 1, out
        assert time.monotonic() - started < 15  # never the 30 s of load


class _Misbehaving(socketserver.BaseRequestHandler):
    """Answers moving_average requests wrongly, or twice, depending on the server's mode."""

    def handle(self) -> None:
        mode = self.server.mode  # type: ignore[attr-defined]
        decoder = EnvelopeDecoder()
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            for request in decoder.feed(data):
                if request.HasField("list_models"):  # the bot's check before the run
                    models = pb.Envelope(request_id=request.request_id)
                    models.model_list.models.add(name="moving_average")
                    self.request.sendall(frame_envelope(models))
                    continue
                infer = request.infer_request
                config = {k: getattr(v, str(v.WhichOneof("kind"))) for k, v in infer.config.items()}
                forecast = moving_average_forecast(
                    list(infer.input.values),
                    int(config["forecast_steps"]),
                    int(config["window_size"]),
                    bool(config["include_trend"]),
                )
                reply = pb.Envelope(request_id=request.request_id)
                reply.infer_response.model = infer.model
                reply.infer_response.predictions.extend(
                    [v + (0.5 if mode == "wrong" else 0.0) for v in forecast]
                )
                self.request.sendall(frame_envelope(reply) * (2 if mode == "double" else 1))


@pytest.mark.parametrize(("mode", "field"), [("wrong", "wrong"), ("double", "unexpected")])
def test_wrong_or_duplicated_answers_fail_the_run(tmp_path: Path, mode: str, field: str) -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    server.mode = mode  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        code, report, out = bot(
            tmp_path,
            f"load --server 127.0.0.1:{port} --duration 0.5 --warmup 0 --connections 1 "
            "--inflight 4",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1, out
    counts_add_up(report)
    assert report[field] > 0
    assert ("wrong answers" if mode == "wrong" else "no outstanding request id") in out
