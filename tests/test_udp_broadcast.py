"""UDP broadcast without sockets: sequence numbers, chunking, filters, drops, subscriptions."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from commonlib.wire import pb
from netlib.udp_broadcast import InvalidTarget, TargetLimitReached, TargetTaken, UdpBroadcaster
from tests.support import infer, make_app
from util.errors import ErrorCode


class FakeDatagramTransport:
    """Records datagrams; raises ``fail_with`` when set (like a full socket buffer)."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.fail_with: OSError | None = None

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.written.append((datagram, addr))


def make_broadcaster(max_bytes: int = 1200) -> tuple[UdpBroadcaster, FakeDatagramTransport, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000.25)
    broadcaster = UdpBroadcaster(clock, max_bytes, max_subscribers=2)
    transport = FakeDatagramTransport()
    broadcaster.transport = transport  # type: ignore[assignment]
    return broadcaster, transport, clock


def result(n: int, request_id: int = 7) -> tuple[bytes, dict[str, Any]]:
    response = pb.InferResponse(model="m", version="1", predictions=[i / 3 for i in range(n)])
    as_pb = pb.BroadcastResult(request_id=request_id, result=response).SerializeToString()
    return as_pb, {"request_id": request_id, "model": "m", "predictions": [i / 3 for i in range(n)]}


def test_each_target_has_its_own_sequence_and_the_server_time() -> None:
    broadcaster, transport, _ = make_broadcaster()
    payload, js = result(3)
    broadcaster.add_target("127.0.0.1", 9001)
    broadcaster.publish("m", lambda: payload, lambda: js)
    broadcaster.add_target("localhost", 9002)
    broadcaster.publish("m", lambda: payload, lambda: js)
    by_port: dict[int, list[pb.Datagram]] = {}
    for data, (host, port) in transport.written:
        assert host == "127.0.0.1"
        by_port.setdefault(port, []).append(pb.Datagram.FromString(data))
    assert [d.sequence for d in by_port[9001]] == [1, 2]
    assert [d.sequence for d in by_port[9002]] == [1]
    assert {d.server_time_us for d in by_port[9001]} == {1_700_000_000_250_000}


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 1500), max_bytes=st.integers(128, 1400))
def test_large_results_are_chunked_within_the_limit_and_reassemble(n: int, max_bytes: int) -> None:
    broadcaster, transport, _ = make_broadcaster(max_bytes)
    broadcaster.add_target("127.0.0.1", 9001, "protobuf")
    broadcaster.add_target("127.0.0.1", 9002, "json")
    payload, js = result(n)
    broadcaster.publish("m", lambda: payload, lambda: js)
    pb_parts = [pb.Datagram.FromString(d) for d, a in transport.written if a[1] == 9001]
    json_parts = [json.loads(d) for d, a in transport.written if a[1] == 9002]
    assert all(len(d) <= max_bytes for d, _ in transport.written)
    # protobuf: consecutive sequences, chunk indexes 0..count-1, payload reassembles
    assert [d.chunk_index for d in pb_parts] == list(range(len(pb_parts)))
    assert {d.chunk_count for d in pb_parts} == {len(pb_parts)}
    assert [d.sequence - d.chunk_index for d in pb_parts] == [1] * len(pb_parts)
    joined = pb.BroadcastResult.FromString(b"".join(d.payload for d in pb_parts))
    assert joined.request_id == 7 and len(joined.result.predictions) == n
    # JSON: whole result inline, or parts that concatenate to the result's JSON text
    if len(json_parts) == 1:
        assert json_parts[0]["result"] == js
    else:
        assert [p["chunk"] for p in json_parts] == list(range(len(json_parts)))
        assert json.loads("".join(p["part"] for p in json_parts)) == js
    assert broadcaster.results_chunked == (len(pb_parts) > 1) + (len(json_parts) > 1)


def test_model_filter_and_lazy_encoding() -> None:
    broadcaster, transport, _ = make_broadcaster()
    broadcaster.add_target("127.0.0.1", 9001, "protobuf", frozenset({"other"}))
    calls: list[str] = []

    def as_pb() -> bytes:
        calls.append("pb")
        return b""

    def as_json() -> dict[str, Any]:
        calls.append("json")
        return {}

    broadcaster.publish("m", as_pb, as_json)
    assert transport.written == [] and calls == []
    assert not broadcaster.wants("m") and broadcaster.wants("other")


def test_a_full_socket_drops_and_counts_without_raising() -> None:
    broadcaster, transport, _ = make_broadcaster()
    target = broadcaster.add_target("127.0.0.1", 9001)
    transport.fail_with = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    payload, js = result(3)
    broadcaster.publish("m", lambda: payload, lambda: js)
    assert broadcaster.datagrams_dropped == 1 and target.dropped == 1
    transport.fail_with = None
    broadcaster.publish("m", lambda: payload, lambda: js)
    assert broadcaster.datagrams_sent == 1
    # The lost datagram still used a sequence number, so the listener can count the gap.
    assert pb.Datagram.FromString(transport.written[0][0]).sequence == 2


def test_target_validation_and_limits() -> None:
    broadcaster, _, _ = make_broadcaster()
    with pytest.raises(InvalidTarget):
        broadcaster.add_target("example.com", 9000)
    with pytest.raises(InvalidTarget):
        broadcaster.add_target("127.0.0.1", 0)
    broadcaster.add_target("127.0.0.1", 1)
    broadcaster.add_target("127.0.0.1", 2)
    broadcaster.add_target("127.0.0.1", 3, static=True)  # static targets are not counted
    with pytest.raises(TargetLimitReached):
        broadcaster.add_target("127.0.0.1", 4)
    assert broadcaster.remove_target("127.0.0.1", 1)
    assert not broadcaster.remove_target("127.0.0.1", 3)  # static stays
    assert not broadcaster.remove_target("127.0.0.1", 99)


def test_subscriptions_over_tcp_end_when_the_connection_does() -> None:
    app = make_app({"udp": {"max_subscribers": 1}})
    client = app.connect()
    sub = pb.Envelope(request_id=1, subscribe=pb.Subscribe(host="127.0.0.1", port=5555))
    bad_host = pb.Envelope(request_id=2, subscribe=pb.Subscribe(host="game.example", port=5556))
    too_many = pb.Envelope(request_id=3, subscribe=pb.Subscribe(host="127.0.0.1", port=5557))
    bad_model = pb.Envelope(
        request_id=4, subscribe=pb.Subscribe(host="127.0.0.1", port=5558, models=["nope"])
    )
    bad_encoding = pb.Envelope(request_id=5)
    bad_encoding.subscribe.host = "127.0.0.1"
    bad_encoding.subscribe.port = 5559
    bad_encoding.subscribe.encoding = 7  # type: ignore[assignment]
    for env in (sub, bad_host, too_many, bad_model, bad_encoding):
        client.send(env)
    replies = {r.request_id: r for r in client.replies()}
    assert replies[1].subscribe_ack.active
    assert replies[2].error.code == ErrorCode.INVALID_INPUT
    assert replies[3].error.code == ErrorCode.BUSY
    assert replies[4].error.code == ErrorCode.UNKNOWN_MODEL
    assert replies[5].error.code == ErrorCode.INVALID_INPUT
    assert [(t.host, t.port) for t in app.broadcaster.targets()] == [("127.0.0.1", 5555)]
    transport = FakeDatagramTransport()
    app.broadcaster.transport = transport  # type: ignore[assignment]
    client.send(infer(9, "moving_average", [1, 2, 3, 4, 5]))
    app.settle()
    assert len(transport.written) == 1
    client.protocol.connectionLost()
    assert app.broadcaster.targets() == []
    unsub = app.connect()
    unsub.send(pb.Envelope(request_id=6, unsubscribe=pb.Unsubscribe(host="127.0.0.1", port=5555)))
    (ack,) = unsub.replies()
    assert not ack.subscribe_ack.changed


def test_subscriptions_are_leases_renewed_by_subscribing_again() -> None:
    broadcaster, transport, clock = make_broadcaster()
    broadcaster.lease_s = 60.0
    owner = object()
    broadcaster.add_target("127.0.0.1", 9001, owner=owner)
    static = broadcaster.add_target("127.0.0.1", 9002, static=True)
    clock.advance(50)
    broadcaster.add_target("127.0.0.1", 9001, owner=owner)  # renew
    clock.advance(50)
    payload, js = result(2)
    broadcaster.publish("m", lambda: payload, lambda: js)
    assert {a[1] for _, a in transport.written} == {9001, 9002}
    clock.advance(11)
    broadcaster.publish("m", lambda: payload, lambda: js)
    assert [t.port for t in broadcaster.targets()] == [static.port]
    assert broadcaster.leases_expired == 1


def test_subscriptions_per_connection_are_limited() -> None:
    broadcaster, _, _ = make_broadcaster()
    broadcaster.max_subscribers = 100
    broadcaster.max_per_owner = 2
    first, second = object(), object()
    broadcaster.add_target("127.0.0.1", 1, owner=first)
    broadcaster.add_target("127.0.0.1", 2, owner=first)
    with pytest.raises(TargetLimitReached, match="max_subscriptions_per_connection=2"):
        broadcaster.add_target("127.0.0.1", 3, owner=first)
    broadcaster.add_target("127.0.0.1", 3, owner=second)


def test_a_target_belongs_to_its_owner_who_alone_renews_or_removes_it() -> None:
    broadcaster, transport, _ = make_broadcaster()
    broadcaster.max_subscribers = 100
    broadcaster.max_per_owner = 1
    owner, other = object(), object()
    payload, js = result(2)
    broadcaster.add_target("127.0.0.1", 9001, owner=owner)
    broadcaster.publish("m", lambda: payload, lambda: js)
    # Another owner can neither take the address over nor remove it...
    with pytest.raises(TargetTaken, match="another connection's"):
        broadcaster.add_target("127.0.0.1", 9001, "json", owner=other)
    assert not broadcaster.remove_target("127.0.0.1", 9001, other)
    # ...nor use it to get past its own cap of one.
    broadcaster.add_target("127.0.0.1", 9002, owner=other)
    with pytest.raises(TargetTaken):
        broadcaster.add_target("127.0.0.1", 9001, owner=other)
    # The owner renews (not counted twice against its cap) and keeps its sequence.
    renewed = broadcaster.add_target("127.0.0.1", 9001, owner=owner)
    assert renewed.owner is owner and renewed.encoding == "protobuf"
    broadcaster.publish("m", lambda: payload, lambda: js)
    sequences = [pb.Datagram.FromString(d).sequence for d, a in transport.written if a[1] == 9001]
    assert sequences == [1, 2]
    assert broadcaster.remove_target("127.0.0.1", 9001, owner)
    assert [(t.port, t.owner) for t in broadcaster.targets()] == [(9002, other)]


def test_a_static_target_cannot_be_taken_over_or_removed_by_a_subscriber() -> None:
    broadcaster, _, _ = make_broadcaster()
    broadcaster.add_target("127.0.0.1", 7777, "json", static=True)
    subscriber = object()
    with pytest.raises(TargetTaken, match="static target"):
        broadcaster.add_target("127.0.0.1", 7777, "protobuf", owner=subscriber)
    assert not broadcaster.remove_target("127.0.0.1", 7777, subscriber)
    (static,) = broadcaster.targets()
    assert static.static and static.encoding == "json" and static.owner is None


def test_the_udp_socket_never_answers_what_it_receives() -> None:
    broadcaster, transport, _ = make_broadcaster()
    broadcaster.add_target("127.0.0.1", 9001)
    for datagram in (b"", b"x" * 1200, pb.Envelope(subscribe=pb.Subscribe()).SerializeToString()):
        broadcaster.datagramReceived(datagram, ("203.0.113.9", 5000))
    assert transport.written == []  # no amplification: zero bytes out for any bytes in
