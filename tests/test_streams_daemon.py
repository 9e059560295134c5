"""Character streams on the real daemon: 50 streams over TCP, snapshots over UDP, drop frees."""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bot.blocking_client import BlockingClient
from commonlib.models.lstm_timeseries import LstmTimeseriesModel
from commonlib.wire import pb
from factory.tick_codec import encode_tick, unpack_ids, unpack_rows
from tests.daemon_process import run_daemon

MODEL = "lstm_timeseries"
CHARACTERS = 50
DATAGRAM_BYTES = 256


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    return sock


def _subscribe(client: BlockingClient, port: int, encoding: int, request_id: int) -> None:
    envelope = pb.Envelope(request_id=request_id)
    envelope.subscribe.host = "127.0.0.1"
    envelope.subscribe.port = port
    envelope.subscribe.encoding = encoding  # type: ignore[assignment]
    envelope.subscribe.models.append(MODEL)
    assert client.request(envelope).subscribe_ack.active


def _expected(values: list[np.ndarray]) -> np.ndarray:
    """What the streams should output after stepping ``values`` (one [N] array per tick)."""
    model = LstmTimeseriesModel()
    model.load()
    config = model.plan({}).config
    init = model.initial_state(config)
    state = tuple(torch.from_numpy(np.stack([part] * CHARACTERS)) for part in init)
    with torch.inference_mode():
        for row in values:
            out, state = model.stream_step_for_key(5, torch.from_numpy(row[:, None]), state)
    return out.numpy()


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{MODEL}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


Part = tuple[int, int, dict[str, Any]]


def _snapshot_parts(sock: socket.socket, decode: str, tick: int) -> list[Part]:
    """Datagrams of server tick ``tick``: (chunk index, chunk count, snapshot fields)."""
    parts: list[Part] = []
    while not parts or len(parts) < parts[0][1]:
        data, _ = sock.recvfrom(65536)
        assert len(data) <= DATAGRAM_BYTES
        if decode == "json":
            message = json.loads(data)
            snap = message["snapshot"]
            index, count = message["chunk"], message["chunks"]
            fields = {"tick": snap["tick"], "ids": snap["ids"], "outputs": snap["outputs"]}
        else:
            datagram = pb.Datagram.FromString(data)
            snapshot = datagram.snapshot
            index, count = datagram.chunk_index, datagram.chunk_count
            fields = {
                "tick": snapshot.server_tick,
                "ids": unpack_ids(snapshot.ids).tolist(),
                "outputs": unpack_rows(snapshot.outputs, snapshot.output_width).tolist(),
            }
        if fields["tick"] == tick:
            parts.append((index, count, fields))
    return parts


def test_fifty_streams_over_tcp_with_chunked_udp_snapshots(tmp_path: Path) -> None:
    pb_sock, json_sock = _listener(), _listener()
    config = {"udp": {"max_datagram_bytes": DATAGRAM_BYTES}, "streams": {"tick_hz": 30.0}}
    with run_daemon(tmp_path, config) as daemon:
        client = BlockingClient("127.0.0.1", daemon.tcp_port)
        _subscribe(client, pb_sock.getsockname()[1], pb.ENCODING_PROTOBUF, 1)
        _subscribe(client, json_sock.getsockname()[1], pb.ENCODING_JSON, 2)
        ids = np.arange(1000, 1000 + CHARACTERS, dtype=np.uint32)
        for cid in ids.tolist():
            envelope = pb.Envelope(request_id=cid)
            envelope.stream_open.model = MODEL
            envelope.stream_open.character_id = cid
            client.send(envelope)
        opened = [client.receive() for _ in ids]
        assert [r.stream_opened.character_id for r in opened] == ids.tolist()
        assert _metric(daemon.http_port, "inference_streams_open") == CHARACTERS

        rng = np.random.default_rng(7)
        sent = []
        result = None
        for frame in range(2):
            values = rng.normal(0.0, 1.0, CHARACTERS).astype(np.float32)
            sent.append(values)
            tick = pb.Envelope(request_id=500 + frame)
            tick.tick.CopyFrom(encode_tick(MODEL, ids, values[:, None], client_tick=frame))
            client.send(tick)
            reply = client.receive()
            assert reply.HasField("tick_result"), reply
            assert reply.request_id == 500 + frame
            result = reply.tick_result
            assert result.client_tick == frame
            assert unpack_ids(result.ids).tolist() == ids.tolist()
        assert result is not None
        outputs = unpack_rows(result.outputs, result.output_width)
        np.testing.assert_allclose(outputs, _expected(sent), rtol=1e-4, atol=1e-5)

        rows_per_datagram = 6  # (256 - 50 - 61 bytes of headers) // (4 + 4 * 5)
        for sock, decode in ((pb_sock, "protobuf"), (json_sock, "json")):
            parts = _snapshot_parts(sock, decode, result.server_tick)
            assert sorted(index for index, _, _ in parts) == list(range(len(parts)))
            if decode == "protobuf":
                assert len(parts) == math.ceil(CHARACTERS / rows_per_datagram)
            by_id: dict[int, list[float]] = {}
            for _, _, fields in parts:
                by_id.update(zip(fields["ids"], fields["outputs"], strict=True))
            assert sorted(by_id) == ids.tolist()
            # Exact float32 values in both encodings (JSON's shortest round-trip text).
            got = np.array([by_id[i] for i in ids.tolist()], dtype=np.float32)
            assert np.array_equal(got, outputs)

        client.close()  # the connection drops: its streams are freed at once
        deadline = time.monotonic() + 10
        while _metric(daemon.http_port, "inference_streams_open") != 0:
            assert time.monotonic() < deadline, "streams not freed after the connection dropped"
            time.sleep(0.05)
    pb_sock.close()
    json_sock.close()
