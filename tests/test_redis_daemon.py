"""The result cache's Redis tier with real daemon processes and a real redis-server."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.blocking_client import BlockingClient
from commonlib.models.moving_average import MovingAverageModel
from commonlib.result_cache import cache_key
from commonlib.wire import pb
from factory.client_codec import infer_envelope
from tests.daemon_process import DaemonProcess, run_daemon
from tests.redis_server import RedisServer, needs_redis, run_redis

pytestmark = [needs_redis, pytest.mark.timeout(120)]

MODEL = "moving_average"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis(tmp_path / "redis") as server:
        yield server


def cached_config(url: str, **cache: Any) -> dict[str, Any]:
    return {
        "udp": {"enabled": False},
        "inference": {"models": {MODEL: {}}},  # the models given replace the defaults
        "cache": {"enabled": True, "redis_url": url, **cache},
    }


def series(i: int) -> list[float]:
    return [float(i), float(i) + 1.5, 2.0, float(i % 7), 0.25]


def expected(values: list[float]) -> float:
    """moving_average's default forecast: the mean of the last 5 values, as float32."""
    return float(np.float32(np.mean(np.array(values, dtype=np.float64))))


def scrape(daemon: DaemonProcess) -> str:
    url = f"http://127.0.0.1:{daemon.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def metric(daemon: DaemonProcess, name: str) -> dict[tuple[str, ...], float]:
    text = scrape(daemon)
    return {
        tuple(sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def redis_key(values: list[float]) -> str:
    """The Redis key a default-config moving_average request for ``values`` is stored under."""
    digest = cache_key(MODEL, "1", MovingAverageModel().prepare(values, {}))
    return f"inference:result:{MODEL}:1:{digest.hex()}"


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run_rounds(client: BlockingClient, first: int, rounds: int) -> list[pb.Envelope]:
    """Pipelined rounds of 16 requests, half of them repeats of 8 inputs; checks each answer."""
    replies = []
    for r in range(first, first + rounds):
        sent = {}
        for k in range(16):
            request_id = r * 16 + k
            values = series(k % 8) if k % 2 else series(1000 + request_id)
            sent[request_id] = values
            client.send(infer_envelope(request_id, MODEL, values))
        for _ in range(16):
            reply = client.receive()
            assert reply.HasField("infer_response"), reply
            predictions = list(reply.infer_response.predictions)
            assert predictions == [expected(sent.pop(reply.request_id))] * 5
            replies.append(reply)
    return replies


def test_killing_redis_mid_run_fails_no_request(tmp_path: Path, redis_server: RedisServer) -> None:
    # A generous timeout: on a loaded machine a live Redis must not read as slow.
    config = cached_config(redis_server.url, redis_retry_s=0.2, redis_timeout_ms=500.0)
    with run_daemon(tmp_path, config) as daemon, BlockingClient("127.0.0.1", daemon.tcp_port) as c:
        before = run_rounds(c, 0, 20)
        wait_for(lambda: redis_server.client().dbsize() > 0, "results stored in Redis")
        redis_server.kill()
        after = run_rounds(c, 20, 20)  # each unique input tries Redis (or skips it: down)
        assert len(before) == len(after) == 320
        assert sum(r.infer_response.timings.cache_hit for r in after) >= 160  # local LRU
        failures = metric(daemon, "inference_result_cache_redis_failures_total")
        assert failures.get((MODEL, "error"), 0) >= 1
        assert sum(failures.values()) >= 160
        assert daemon.log().count("Redis result cache unavailable") == 1  # once a minute

        redis_server.restart()
        time.sleep(0.3)  # past redis_retry_s
        rounds = iter(range(40, 1000))  # fresh unique inputs each time: LRU misses
        wait_for(
            lambda: bool(run_rounds(c, next(rounds), 1)) and redis_server.client().dbsize() > 0,
            "results stored in the restarted Redis",
        )
        assert "Redis result cache reachable again" in daemon.log()

        text = scrape(daemon)
        for family in ("hits", "misses", "bypassed", "evictions", "expired", "redis_failures"):
            assert f"inference_result_cache_{family}_total" in text
        promtool = shutil.which("promtool")
        assert promtool, "promtool is installed by `make test` (scripts/install_system_deps.sh)"
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_two_daemons_share_results_through_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    config = cached_config(redis_server.url, redis_timeout_ms=500.0)
    values = series(42)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        run_daemon(tmp_path / "a", config) as a,
        run_daemon(tmp_path / "b", config) as b,
        BlockingClient("127.0.0.1", a.tcp_port) as to_a,
        BlockingClient("127.0.0.1", b.tcp_port) as to_b,
    ):
        first = to_a.infer(MODEL, values, request_id=1).infer_response
        assert not first.timings.cache_hit and first.timings.batch_size == 1
        key = redis_key(values)
        wait_for(lambda: redis_server.client().exists(key), "a's result stored in Redis")
        shared = to_b.infer(MODEL, values, request_id=2).infer_response
        assert shared.timings.cache_hit and shared.timings.batch_size == 0
        assert list(shared.predictions) == list(first.predictions)
        again = to_b.infer(MODEL, values, request_id=3).infer_response
        assert again.timings.cache_hit
        hits = metric(b, "inference_result_cache_hits_total")
        assert hits == {(MODEL, "local"): 1.0, (MODEL, "redis"): 1.0}
        assert metric(b, "inference_result_cache_misses_total") == {(MODEL,): 0.0}
