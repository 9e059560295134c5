"""The real daemon in a subprocess on loopback: clients, UDP broadcast, bad input, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

from bot.blocking_client import BlockingClient
from commonlib.models.lstm_timeseries import LstmTimeseriesModel
from commonlib.models.moving_average import MovingAverageModel
from commonlib.wire import pb
from factory.client_codec import frame_envelope, infer_envelope
from tests.daemon_process import run_daemon
from util.errors import ErrorCode

MA_CONFIG = {"forecast_steps": 5, "window_size": 5, "include_trend": True}
LSTM_CONFIG = {"forecast_steps": 5, "sequence_length": 10, "hidden_size": 64}


def _series(i: int, n: int = 32) -> list[float]:
    t = np.arange(n, dtype=np.float32)
    series: list[float] = (np.sin(t / (3 + i % 5) + i) * (1 + i % 3) + 0.1 * i).tolist()
    return series


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    return sock


def test_200_concurrent_clients_all_answered_correctly(tmp_path: Path) -> None:
    ma = MovingAverageModel()
    lstm = LstmTimeseriesModel({"hidden_size": 64})
    lstm.load()
    # Requests wait up to 20 ms for company, so batching is certain, not a race.
    batching = {"eager_when_idle": False, "max_wait_ms": 20.0}
    with run_daemon(tmp_path, {"inference": {"batching": batching}}) as daemon:
        clients = [BlockingClient("127.0.0.1", daemon.tcp_port) for _ in range(200)]
        try:
            expected = {}
            for i, client in enumerate(clients):
                values = _series(i)
                if i % 2:
                    model, config = "lstm_timeseries", LSTM_CONFIG
                    want = lstm.forward([lstm.prepare(values, config)])[0].predictions
                else:
                    model, config = "moving_average", MA_CONFIG
                    want = ma.forward([ma.prepare(values, config)])[0].predictions
                expected[i] = (model, want)
                client.send(infer_envelope(10_000 + i, model, values, config))
            batch_sizes = []
            for i, client in enumerate(clients):
                reply = client.receive()
                assert reply.request_id == 10_000 + i
                assert reply.HasField("infer_response"), reply
                model, want = expected[i]
                assert reply.infer_response.model == model
                np.testing.assert_allclose(
                    reply.infer_response.predictions, want, rtol=1e-4, atol=1e-4
                )
                batch_sizes.append(reply.infer_response.timings.batch_size)
            assert max(batch_sizes) > 1, "200 requests at once should have been batched"
        finally:
            for client in clients:
                client.close()


def test_udp_broadcast_in_both_encodings(tmp_path: Path) -> None:
    json_listener = _udp_socket()
    pb_listener = _udp_socket()
    json_port = json_listener.getsockname()[1]
    config = {
        "udp": {
            "targets": [
                {
                    "host": "127.0.0.1",
                    "port": json_port,
                    "encoding": "json",
                    "models": ["moving_average"],
                }
            ]
        }
    }
    with (
        run_daemon(tmp_path, config) as daemon,
        BlockingClient("127.0.0.1", daemon.tcp_port) as client,
    ):
        sub = pb.Envelope(request_id=1)
        sub.subscribe.host = "127.0.0.1"
        sub.subscribe.port = pb_listener.getsockname()[1]
        sub.subscribe.encoding = pb.ENCODING_PROTOBUF
        ack = client.request(sub)
        assert ack.subscribe_ack.active and ack.subscribe_ack.changed
        reply = client.infer(
            "moving_average", [1.2, 2.3, 3.1, 2.8, 3.5, 4.2], MA_CONFIG, request_id=77
        )
        predictions = list(reply.infer_response.predictions)

        data, _ = pb_listener.recvfrom(2048)
        datagram = pb.Datagram.FromString(data)
        assert datagram.sequence == 1 and datagram.chunk_count == 1 and datagram.server_time_us > 0
        result = pb.BroadcastResult.FromString(datagram.payload)
        assert result.request_id == 77
        assert list(result.result.predictions) == predictions

        text, _ = json_listener.recvfrom(2048)
        message = json.loads(text)
        assert message["seq"] == 1 and message["chunks"] == 1
        assert message["result"]["request_id"] == 77
        # JSON keeps each float32 exactly (docs/protocol.md §5).
        exact = np.array(message["result"]["predictions"], dtype=np.float32).tolist()
        assert exact == predictions

        # The JSON target filters on moving_average: an LSTM result reaches only the protobuf one.
        client.infer("lstm_timeseries", _series(1), LSTM_CONFIG, request_id=78)
        data, _ = pb_listener.recvfrom(2048)
        assert pb.BroadcastResult.FromString(pb.Datagram.FromString(data).payload).request_id == 78
        json_listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            json_listener.recvfrom(2048)
    json_listener.close()
    pb_listener.close()


def test_a_malformed_client_does_not_disturb_a_good_one(tmp_path: Path) -> None:
    with run_daemon(tmp_path, {"server": {"max_frame_bytes": 4096}}) as daemon:
        good = BlockingClient("127.0.0.1", daemon.tcp_port)
        bad = BlockingClient("127.0.0.1", daemon.tcp_port)
        try:
            bad.send_raw(struct.pack(">I", 6) + b"\xde\xad\xbe\xef\xff\xff")
            assert bad.receive().error.code == ErrorCode.BAD_PACKET
            assert good.infer("moving_average", [1, 2, 3, 4, 5, 6]).HasField("infer_response")
            bad.send_raw(struct.pack(">I", 0xFFFFFFFF))
            assert bad.receive().error.code == ErrorCode.FRAME_TOO_LARGE
            with pytest.raises(ConnectionError):
                bad.receive()
            for i in range(20):
                reply = good.infer("moving_average", [1, 2, 3, 4, 5, 6], request_id=i)
                assert reply.request_id == i and reply.HasField("infer_response")
        finally:
            good.close()
            bad.close()
        assert daemon.process.poll() is None


def test_one_request_in_flight_per_connection_starts_and_refuses_the_second(
    tmp_path: Path,
) -> None:
    # The start-up self-check once sent one request per model at once, so with a
    # limit of 1 the daemon refused its own check and never started.
    config = {"server": {"max_inflight_per_connection": 1}}
    with (
        run_daemon(tmp_path, config) as daemon,
        BlockingClient("127.0.0.1", daemon.tcp_port) as client,
    ):
        pair = b"".join(
            frame_envelope(infer_envelope(i, "moving_average", _series(i), MA_CONFIG))
            for i in (1, 2)
        )
        client.send_raw(pair)
        replies = {r.request_id: r for r in (client.receive(), client.receive())}
        assert replies[1].HasField("infer_response")
        assert replies[2].error.code == ErrorCode.BUSY
        assert "max_inflight_per_connection=1" in replies[2].error.message
        assert client.infer("moving_average", _series(3), MA_CONFIG).HasField("infer_response")


def test_sigterm_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    with run_daemon(tmp_path) as daemon:
        with BlockingClient("127.0.0.1", daemon.tcp_port) as client:
            assert client.request(pb.Envelope(request_id=5, ping=pb.Ping())).HasField("pong")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=20) == 0
        assert "Traceback" not in daemon.log()


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "bad.yaml"
    config.write_text("inference:\n  batching:\n    max_batch_size: 0\n  wrokers: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "aiServer", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert "inference.batching.max_batch_size" in result.stderr
    assert "inference.wrokers: unknown key" in result.stderr


def test_udp_listen_tool_prints_what_an_engine_receives(tmp_path: Path) -> None:
    import subprocess
    import sys

    probe = _udp_socket()
    port = probe.getsockname()[1]
    probe.close()
    with run_daemon(tmp_path) as daemon:
        listener = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "netlib.udp_listen",
                "--port",
                str(port),
                "--server",
                f"127.0.0.1:{daemon.tcp_port}",
                "--json",
                "--count",
                "1",
            ],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert listener.stdout is not None
            assert listener.stdout.readline().startswith("listening on udp")
            with BlockingClient("127.0.0.1", daemon.tcp_port) as client:
                client.infer("moving_average", [1, 2, 3, 4, 5, 6], request_id=31)
            out, err = listener.communicate(timeout=20)
        finally:
            listener.kill()
    assert '"request_id":31' in out and "seq=1" in out
    assert "1 results, 0 datagrams lost" in err


def test_protobuf_uses_the_fast_upb_backend() -> None:
    from aiServer.service import protobuf_backend

    assert protobuf_backend() == "upb"


def test_raw_values_over_a_real_socket_answer_as_repeated_floats(tmp_path: Path) -> None:
    series = [float(i % 7) + 0.25 for i in range(32)]
    with run_daemon(tmp_path, {}) as daemon:
        client = BlockingClient("127.0.0.1", daemon.tcp_port)
        try:
            for model in ("moving_average", "lstm_timeseries"):
                floats = client.infer(model, series, request_id=1).infer_response
                raw = client.infer(model, series, request_id=2, raw=True).infer_response
                assert len(raw.predictions) == 5
                assert list(raw.predictions) == list(floats.predictions)
        finally:
            client.close()
