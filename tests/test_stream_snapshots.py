"""Per-tick UDP snapshots without sockets: chunking, sequences, both encodings, exact floats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from commonlib.wire import pb
from factory.tick_codec import unpack_ids, unpack_rows
from netlib import udp_listen
from netlib.udp_broadcast import Encoding, InvalidTarget, TickSnapshot
from tests.test_udp_broadcast import make_broadcaster

MODEL = "motion"


def _outputs(n: int, k: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(1_000_000, n, replace=False).astype(np.uint32)
    return ids, rng.normal(0, 1e-3, (n, k)).astype(np.float32)


def test_protobuf_snapshots_are_self_contained_parts_within_the_datagram_size() -> None:
    broadcaster, transport, clock = make_broadcaster(max_bytes=300)
    broadcaster.add_target("127.0.0.1", 9001, models=frozenset({MODEL}))
    broadcaster.add_target("127.0.0.1", 9002, models=frozenset({"other"}))
    ids, outputs = _outputs(40, 6)
    broadcaster.publish_snapshot(TickSnapshot(MODEL, 12, 1_700_000_000_250_000, 6, ids, outputs))
    datagrams = [pb.Datagram.FromString(data) for data, _ in transport.written]
    assert {port for _, (_, port) in transport.written} == {9001}
    assert all(len(data) <= 300 for data, _ in transport.written)
    count = len(datagrams)
    assert count > 1 and broadcaster.results_chunked == 1
    assert [d.sequence for d in datagrams] == list(range(1, count + 1))
    assert [(d.chunk_index, d.chunk_count) for d in datagrams] == [(i, count) for i in range(count)]
    got_ids, got_rows = [], []
    for d in datagrams:
        snap = d.snapshot
        assert (snap.model, snap.server_tick, snap.output_width) == (MODEL, 12, 6)
        assert snap.tick_time_us == 1_700_000_000_250_000 and not d.payload
        assert d.server_time_us == int(clock.seconds() * 1e6)
        got_ids.extend(unpack_ids(snap.ids).tolist())
        got_rows.append(unpack_rows(snap.outputs, 6))
    assert got_ids == ids.tolist()
    assert np.array_equal(np.concatenate(got_rows), outputs)
    # Header fields + the snapshot field serialized once: protobuf's own bytes.
    for (data, _), d in zip(transport.written, datagrams, strict=True):
        assert data == d.SerializeToString()


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_each_target_gets_datagrams_of_the_size_it_asked_for(encoding: Encoding) -> None:
    broadcaster, transport, _ = make_broadcaster(max_bytes=300)
    broadcaster.add_target("127.0.0.1", 9001, encoding=encoding)  # the server's 300
    broadcaster.add_target("127.0.0.1", 9002, encoding=encoding, max_datagram_bytes=2000)
    ids, outputs = _outputs(40, 6)
    broadcaster.publish_snapshot(TickSnapshot(MODEL, 12, 99, 6, ids, outputs))
    sizes: dict[int, list[int]] = {9001: [], 9002: []}
    for data, (_, port) in transport.written:
        sizes[port].append(len(data))
    assert max(sizes[9001]) <= 300 and max(sizes[9002]) <= 2000
    assert max(sizes[9002]) > 300 and len(sizes[9002]) * 4 <= len(sizes[9001])
    for port in (9001, 9002):  # every character reaches both, in the target's own parts
        got = []
        for data, (_, to) in transport.written:
            if to == port:
                if encoding == "json":
                    got.extend(json.loads(data)["snapshot"]["ids"])
                else:
                    got.extend(unpack_ids(pb.Datagram.FromString(data).snapshot.ids).tolist())
        assert got == ids.tolist()
    for bad in (127, 65_508):
        with pytest.raises(InvalidTarget, match=r"max_datagram_bytes must be 128\.\.65507"):
            broadcaster.add_target("127.0.0.1", 9003, max_datagram_bytes=bad)


def test_json_snapshots_keep_every_float32_exactly() -> None:
    broadcaster, transport, _ = make_broadcaster(max_bytes=400)
    broadcaster.add_target("127.0.0.1", 9001, encoding="json")
    ids, outputs = _outputs(25, 4)
    outputs[0, 0] = np.float32(1.23456784e-05)
    broadcaster.publish_snapshot(TickSnapshot(MODEL, 3, 99, 4, ids, outputs))
    messages = [json.loads(data) for data, _ in transport.written]
    assert all(len(data) <= 400 for data, _ in transport.written)
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [(m["chunk"], m["chunks"]) for m in messages] == [
        (i, len(messages)) for i in range(len(messages))
    ]
    snap = messages[0]["snapshot"]
    assert (snap["model"], snap["tick"], snap["tick_time_us"], snap["width"]) == (MODEL, 3, 99, 4)
    assert snap["outputs"][0][0] == 1.2345678e-05  # float32's shortest round-trip text
    got_ids = [i for m in messages for i in m["snapshot"]["ids"]]
    rows = [r for m in messages for r in m["snapshot"]["outputs"]]
    assert got_ids == ids.tolist()
    assert np.array_equal(np.array(rows, dtype=np.float32), outputs)


def test_a_row_that_fits_no_datagram_is_dropped_and_counted() -> None:
    broadcaster, transport, _ = make_broadcaster(max_bytes=128)
    broadcaster.add_target("127.0.0.1", 9001)
    ids, outputs = _outputs(3, 51)
    broadcaster.publish_snapshot(TickSnapshot(MODEL, 1, 1, 51, ids, outputs))
    assert transport.written == [] and broadcaster.snapshot_rows_dropped == 3


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_the_udp_listen_tool_prints_each_snapshot_part_whole(encoding: str) -> None:
    broadcaster, transport, _ = make_broadcaster(max_bytes=200)
    broadcaster.add_target("127.0.0.1", 9001, encoding=encoding)  # type: ignore[arg-type]
    ids, outputs = _outputs(9, 2)
    broadcaster.publish_snapshot(TickSnapshot(MODEL, 8, 5, 2, ids, outputs))
    seen_ids = []
    for data, _ in transport.written:
        _, _, index, count, payload, kind = udp_listen.decode(data)
        assert (index, count, kind) == (0, 1, "json")
        part = json.loads(udp_listen.describe(payload, kind))
        assert part["chunks"] == len(transport.written) and part["snapshot"]["tick"] == 8
        seen_ids.extend(part["snapshot"]["ids"])
        assert np.array_equal(
            np.array(part["snapshot"]["outputs"], dtype=np.float32),
            outputs[[ids.tolist().index(i) for i in part["snapshot"]["ids"]]],
        )
    assert seen_ids == ids.tolist()


def test_a_non_finite_output_is_null_in_json() -> None:
    broadcaster, transport, _ = make_broadcaster()
    broadcaster.add_target("127.0.0.1", 9001, encoding="json")
    outputs = np.array([[1.5, np.inf], [np.nan, -2.0]], dtype=np.float32)
    broadcaster.publish_snapshot(TickSnapshot(MODEL, 1, 1, 2, np.array([4, 5], np.uint32), outputs))
    ((data, _),) = transport.written
    assert json.loads(data)["snapshot"]["outputs"] == [[1.5, None], [None, -2.0]]
