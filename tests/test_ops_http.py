"""The HTTP side door on a real daemon: health, readiness, metrics (checked by promtool), drain."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from aiServer.service import build_daemon
from bot.blocking_client import BlockingClient
from commonlib.wire import pb
from factory.client_codec import infer_envelope
from tests.daemon_process import run_daemon
from tests.support import ManualRunner
from util.config import Config
from util.errors import ErrorCode

MA = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


def test_health_readiness_models_status_and_metrics(tmp_path: Path) -> None:
    with run_daemon(tmp_path) as daemon:
        assert get(daemon.http_port, "/healthz")[0] == 200
        status, _, body = get(daemon.http_port, "/readyz")
        assert status == 200 and json.loads(body) == {"ready": True}
        models = json.loads(get(daemon.http_port, "/models")[2])["models"]
        by_name = {m["name"]: m for m in models}
        assert set(by_name) == {"moving_average", "lstm_timeseries", "motion_lstm"}
        assert all(m["loaded"] for m in models)  # warmed before ready
        ma_config = by_name["moving_average"]["input_schema"]["config"]
        assert ma_config["forecast_steps"]["maximum"] == 256
        with BlockingClient("127.0.0.1", daemon.tcp_port) as client:
            for i in range(20):
                client.send(infer_envelope(i, "moving_average", MA))
            client.send(infer_envelope(99, "nope", MA))
            replies = [client.receive() for _ in range(21)]
        assert sum(r.HasField("infer_response") for r in replies) == 20
        status_doc = json.loads(get(daemon.http_port, "/status")[2])
        assert status_doc["ready"] is True
        ma = next(q for q in status_doc["queues"] if q["model"] == "moving_average")
        assert int(ma["requestsRun"]) >= 20 and "batchSizeCounts" in ma
        assert "moving_average@1" in status_doc["cache"]["loadSeconds"]
        status, content_type, metrics = get(daemon.http_port, "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        text = metrics.decode()
        for line in (
            # 20 from this test and 1 from the daemon's own loopback self-check at start
            'inference_requests_total{model="moving_average",outcome="ok"} 21.0',
            'inference_requests_total{model="other",outcome="UNKNOWN_MODEL"} 1.0',
            'inference_errors_sent_total{code="UNKNOWN_MODEL"} 1.0',
            "inference_connections_open 0.0",
            "inference_ready 1.0",
        ):
            assert line in text, line
        for name in (
            "inference_request_duration_seconds_bucket",
            "inference_queue_wait_seconds_bucket",
            "inference_batch_duration_seconds_bucket",
            "inference_batch_size_bucket",
            "inference_queue_depth",
            "inference_model_load_seconds",
            "inference_model_cache_misses_total",
            "inference_udp_datagrams_sent_total",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
        ):
            assert name in text, name
        promtool = shutil.which("promtool")
        assert promtool, "promtool is installed by `make test` (scripts/install_system_deps.sh)"
        check = subprocess.run(
            [promtool, "check", "metrics"], input=metrics, capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_readiness_reasons_before_warm_up_and_while_draining() -> None:
    from twisted.internet.task import Clock

    daemon = build_daemon(Config(), Clock(), runner=ManualRunner())
    assert "warming up" in (daemon.not_ready_reason() or "")
    daemon.state.ready = True
    assert daemon.not_ready_reason() is None
    daemon.state.draining = True
    assert "draining" in (daemon.not_ready_reason() or "")


def test_sigterm_mid_burst_answers_every_accepted_request_then_exits_0(tmp_path: Path) -> None:
    # Requests wait 1 s in their queue, so SIGTERM lands while all are pending.
    slow_batching = {
        "eager_when_idle": False,
        "max_wait_ms": 1000.0,
        "max_batch_size": 1000,
        "queue_timeout_ms": 10000.0,
    }
    config = {"inference": {"models": {"moving_average": {"batching": slow_batching}}}}
    with run_daemon(tmp_path, config) as daemon:
        clients = [BlockingClient("127.0.0.1", daemon.tcp_port) for _ in range(4)]
        try:
            for c, client in enumerate(clients):
                for i in range(25):
                    client.send(infer_envelope(c * 100 + i, "moving_average", MA))
            for client in clients:  # a Pong proves the server has read the whole burst
                client.send(pb.Envelope(request_id=7777, ping=pb.Ping()))
            pongs: dict[int, list[pb.Envelope]] = {}
            for c, client in enumerate(clients):
                reply = client.receive()
                while not reply.HasField("pong"):
                    pongs.setdefault(c, []).append(reply)
                    reply = client.receive()
            daemon.process.send_signal(signal.SIGTERM)
            status, _, body = get(daemon.http_port, "/readyz")
            assert status == 503 and "draining" in json.loads(body)["reason"]
            clients[0].send(infer_envelope(5555, "moving_average", MA))
            answered: dict[int, pb.Envelope] = {}
            for c, client in enumerate(clients):
                for reply in pongs.get(c, []):
                    answered[reply.request_id] = reply
                want = 26 if c == 0 else 25
                while sum(1 for k in answered if k // 100 == c or (c == 0 and k == 5555)) < want:
                    reply = client.receive()
                    answered[reply.request_id] = reply
            late = answered.pop(5555)
            assert late.error.code == ErrorCode.UNAVAILABLE
            assert len(answered) == 100
            assert all(r.HasField("infer_response") for r in answered.values())
            assert daemon.process.wait(timeout=30) == 0
        finally:
            for client in clients:
                client.close()
    assert "drained in" in daemon.log()
    with pytest.raises(OSError):
        BlockingClient("127.0.0.1", daemon.tcp_port, timeout=2)
