"""server.workers: 2 — a real supervisor and two real worker processes behind one TCP port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.blocking_client import BlockingClient
from commonlib.models.lstm_timeseries import LstmTimeseriesModel
from commonlib.models.moving_average import MovingAverageModel
from commonlib.wire import pb
from factory.client_codec import infer_envelope
from tests.daemon_process import DaemonProcess, run_daemon

MA_CONFIG = {"forecast_steps": 5, "window_size": 5, "include_trend": True}
LSTM_CONFIG = {"forecast_steps": 5, "sequence_length": 10, "hidden_size": 64}
TWO_WORKERS = {"server": {"workers": 2, "worker_restart_delay_s": 0.2}}


def http_json(daemon: DaemonProcess, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}{path}", timeout=10) as r:
        return json.loads(r.read())


def http_text(daemon: DaemonProcess, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}{path}", timeout=10) as r:
        text: str = r.read().decode()
        return text


def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def series(i: int) -> list[float]:
    values: list[float] = (np.sin(np.arange(32) / (3 + i)) * (1 + i)).tolist()
    return values


def test_two_workers_share_one_port_evenly_answer_correctly_and_broadcast(
    tmp_path: Path,
) -> None:
    ma = MovingAverageModel()
    lstm = LstmTimeseriesModel({"hidden_size": 64})
    lstm.load()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    far_listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far_listener.bind(("127.0.0.3", 0))
    with run_daemon(tmp_path, TWO_WORKERS) as daemon:
        assert len(daemon.ports["workers"]) == 2
        clients = [BlockingClient("127.0.0.1", daemon.tcp_port) for _ in range(4)]
        try:
            for i, client in enumerate(clients):
                for j, (model, config, reference) in enumerate(
                    [("moving_average", MA_CONFIG, ma), ("lstm_timeseries", LSTM_CONFIG, lstm)]
                ):
                    values = series(i + j)
                    want = reference.forward([reference.prepare(values, config)])[0].predictions
                    reply = client.request(infer_envelope(10 * i + j + 1, model, values, config))
                    assert reply.request_id == 10 * i + j + 1
                    assert list(reply.infer_response.predictions) == pytest.approx(
                        list(want), rel=1e-5, abs=1e-5
                    )
            workers = http_json(daemon, "/workers")["workers"]
            assert [w["handed_off"] for w in workers] == [2, 2]
            assert [w["connections"] for w in workers] == [2, 2]
            # A Subscribe lives in the worker holding the connection; its results arrive.
            sub = pb.Envelope(request_id=99)
            sub.subscribe.host = "127.0.0.1"
            sub.subscribe.port = listener.getsockname()[1]
            assert clients[3].request(sub).subscribe_ack.active
            clients[3].request(infer_envelope(77, "moving_average", series(1), MA_CONFIG))
            datagram = pb.Datagram.FromString(listener.recvfrom(2048)[0])
            assert pb.BroadcastResult.FromString(datagram.payload).request_id == 77
            # A worker sees the real client's address (the fd is passed), so a Subscribe
            # with an empty host ("my own address") targets it.
            far_listener.settimeout(10)
            with BlockingClient("127.0.0.1", daemon.tcp_port, source_host="127.0.0.3") as far:
                sub = pb.Envelope(request_id=98)
                sub.subscribe.port = far_listener.getsockname()[1]
                assert far.request(sub).subscribe_ack.host == "127.0.0.3"
                far.request(infer_envelope(78, "moving_average", series(2), MA_CONFIG))
                datagram = pb.Datagram.FromString(far_listener.recvfrom(2048)[0])
                assert pb.BroadcastResult.FromString(datagram.payload).request_id == 78
            metrics = http_text(daemon, "/metrics")
            for worker in ("0", "1"):
                assert (
                    f'inference_requests_total{{model="moving_average",outcome="ok",worker="{worker}"}}'
                    in metrics
                )
            assert "inference_supervisor_workers_ready 2.0" in metrics
            status = http_json(daemon, "/status")["workers"]
            assert sorted(status) == ["0", "1"]
            assert http_json(daemon, "/readyz") == {"ready": True}
        finally:
            for client in clients:
                client.close()
        wait_for(
            lambda: [w["connections"] for w in http_json(daemon, "/workers")["workers"]] == [0, 0]
        )
    listener.close()
    far_listener.close()


def test_a_killed_worker_is_restarted_and_sigterm_stops_every_process(tmp_path: Path) -> None:
    with run_daemon(tmp_path, TWO_WORKERS) as daemon:
        pids = [w["pid"] for w in daemon.ports["workers"]]
        doomed = BlockingClient("127.0.0.1", daemon.tcp_port)
        survivor = BlockingClient("127.0.0.1", daemon.tcp_port)
        holder = {w["index"]: w["pid"] for w in http_json(daemon, "/workers")["workers"]}
        assert doomed.infer("moving_average", series(0), MA_CONFIG).HasField("infer_response")
        os.kill(holder[0], signal.SIGKILL)  # the first connection went to worker 0
        with pytest.raises(ConnectionError):
            doomed.receive()
        reply = survivor.infer("moving_average", series(1), MA_CONFIG, request_id=2)
        assert reply.HasField("infer_response")  # the other worker's client is unaffected

        def restarted() -> bool:
            w = http_json(daemon, "/workers")["workers"][0]
            return bool(w["restarts"] == 1 and w["ready"])

        wait_for(restarted)
        new_pid = http_json(daemon, "/workers")["workers"][0]["pid"]
        assert new_pid not in pids
        with BlockingClient("127.0.0.1", daemon.tcp_port) as again:  # to the emptier worker 0
            assert again.infer("moving_average", series(2), MA_CONFIG).HasField("infer_response")
        assert "exited unexpectedly" in daemon.log()
        survivor.close()
        doomed.close()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
        for pid in (pids[1], new_pid):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_workers_exit_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    with run_daemon(tmp_path, TWO_WORKERS) as daemon:
        pids = [w["pid"] for w in daemon.ports["workers"]]
        daemon.process.kill()  # no SIGTERM to forward: the workers see their channel close
        daemon.process.wait(timeout=10)

        def all_gone() -> bool:
            for pid in pids:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                return False
            return True

        wait_for(all_gone, timeout=30)
        assert daemon.log().count("the supervisor has gone") == 2


def test_a_worker_failing_at_start_up_fails_the_supervisor_without_a_restart_loop(
    tmp_path: Path,
) -> None:
    config = {
        "server": {"workers": 2, "port_file": str(tmp_path / "ports.json")},
        "http": {"port": 0},
        "inference": {
            "models": {
                "lstm_timeseries": {
                    "settings": {"checkpoint": str(tmp_path / "missing.pt"), "hidden_size": 64}
                }
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    result = subprocess.run(
        [sys.executable, "-m", "aiServer", "--config", str(path), "--port", "0"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "exited during start-up" in result.stdout
    assert "restarting" not in result.stdout
    assert not (tmp_path / "ports.json").exists()  # it never served
