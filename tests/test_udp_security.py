"""Who may Subscribe which UDP target: no reflection to third parties (issue #11 item 3).

In memory (StringTransport, Clock) for the policy; real loopback sockets and a real
daemon for the end-to-end check that a refused target receives nothing.
"""

from __future__ import annotations

import json
import socket
import struct
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiServer.facade import result_json
from bot.blocking_client import BlockingClient
from commonlib.wire import pb
from factory.client_codec import infer_envelope
from tests.daemon_process import run_daemon
from tests.support import App, Client, infer, make_app
from tests.test_udp_broadcast import FakeDatagramTransport
from util.config import ConfigError, parse_config
from util.errors import ErrorCode

TOKEN = "udp-test-token"
MA_CONFIG = {"forecast_steps": 5, "window_size": 5, "include_trend": True}


def subscribe(request_id: int, host: str, port: int, **fields: Any) -> pb.Envelope:
    return pb.Envelope(
        request_id=request_id, subscribe=pb.Subscribe(host=host, port=port, **fields)
    )


def unsubscribe(request_id: int, host: str, port: int) -> pb.Envelope:
    return pb.Envelope(request_id=request_id, unsubscribe=pb.Unsubscribe(host=host, port=port))


def ask(client: Client, envelope: pb.Envelope) -> pb.Envelope:
    client.send(envelope)
    (reply,) = client.replies()
    return reply


def targets(app: App) -> list[tuple[str, int]]:
    return sorted((t.host, t.port) for t in app.broadcaster.targets())


def authenticated(app: App, peer_host: str) -> Client:
    client = app.connect(peer_host)
    ack = ask(client, pb.Envelope(request_id=1, hello=pb.Hello(token=TOKEN)))
    assert ack.hello_ack.authentication_required
    return client


def test_a_client_may_only_target_its_own_address() -> None:
    app = make_app({"udp": {"allowed_target_cidrs": ["0.0.0.0/0"]}})  # ignored without auth
    client = app.connect("203.0.113.5")
    ack = ask(client, subscribe(1, "203.0.113.5", 5555))
    assert ack.subscribe_ack.active and ack.subscribe_ack.host == "203.0.113.5"
    for request_id, host in enumerate(("127.0.0.1", "localhost", "203.0.113.6", "10.0.0.1"), 2):
        reply = ask(client, subscribe(request_id, host, 5556))
        assert reply.error.code == ErrorCode.PERMISSION_DENIED, host
        assert "not this connection's own address (203.0.113.5)" in reply.error.message
    assert targets(app) == [("203.0.113.5", 5555)]


def test_an_empty_host_means_the_connections_own_address() -> None:
    app = make_app()
    client = app.connect("198.51.100.7")
    ack = ask(client, subscribe(1, "", 6000))
    assert ack.subscribe_ack.host == "198.51.100.7" and ack.subscribe_ack.active
    assert targets(app) == [("198.51.100.7", 6000)]
    gone = ask(client, unsubscribe(2, "", 6000))
    assert gone.subscribe_ack.host == "198.51.100.7" and gone.subscribe_ack.changed
    assert targets(app) == []


def test_an_ipv6_client_gets_its_mapped_ipv4_address_or_nothing() -> None:
    app = make_app()
    mapped = app.connect("::ffff:203.0.113.9")
    assert ask(mapped, subscribe(1, "", 5555)).subscribe_ack.host == "203.0.113.9"
    assert ask(mapped, subscribe(2, "203.0.113.9", 5556)).subscribe_ack.active
    native = app.connect("2001:db8::1")
    for request_id, host in enumerate(("", "127.0.0.1", "203.0.113.9"), 1):
        reply = ask(native, subscribe(request_id, host, 5557))
        assert reply.error.code == ErrorCode.PERMISSION_DENIED, host
    assert targets(app) == [("203.0.113.9", 5555), ("203.0.113.9", 5556)]


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1"]
)
def test_broadcast_multicast_and_unspecified_are_refused_even_under_a_wide_cidr(host: str) -> None:
    app = make_app({"auth": {"tokens": [TOKEN]}, "udp": {"allowed_target_cidrs": ["0.0.0.0/0"]}})
    client = authenticated(app, "127.0.0.1")
    reply = ask(client, subscribe(2, host, 5555))
    assert reply.error.code == ErrorCode.PERMISSION_DENIED
    assert targets(app) == []
    # Anything else is inside 0.0.0.0/0, so this client may target it.
    assert ask(client, subscribe(3, "192.0.2.1", 5555)).subscribe_ack.active


def test_multicast_needs_a_listed_cidr_inside_the_multicast_range() -> None:
    app = make_app({"auth": {"tokens": [TOKEN]}, "udp": {"allowed_target_cidrs": ["239.1.0.0/16"]}})
    client = authenticated(app, "127.0.0.1")
    assert ask(client, subscribe(2, "239.1.2.3", 5555)).subscribe_ack.host == "239.1.2.3"
    assert ask(client, subscribe(3, "239.2.0.1", 5555)).error.code == ErrorCode.PERMISSION_DENIED
    assert targets(app) == [("239.1.2.3", 5555)]


def test_ports_below_min_target_port_are_refused_and_bad_ones_are_invalid() -> None:
    app = make_app()
    client = app.connect("127.0.0.1")
    for request_id, port in enumerate((7, 9, 19, 1023), 1):
        reply = ask(client, subscribe(request_id, "127.0.0.1", port))
        assert reply.error.code == ErrorCode.PERMISSION_DENIED
        assert reply.error.message == (f"UDP target port {port} is below udp.min_target_port=1024")
    for request_id, port in ((10, 0), (11, 70_000)):
        assert ask(client, subscribe(request_id, "", port)).error.code == ErrorCode.INVALID_INPUT
    assert ask(client, subscribe(12, "game.example", 5555)).error.code == ErrorCode.INVALID_INPUT
    assert ask(client, subscribe(13, "127.0.0.1", 1024)).subscribe_ack.active
    assert targets(app) == [("127.0.0.1", 1024)]
    lowered = make_app({"udp": {"min_target_port": 1}})
    assert ask(lowered.connect(), subscribe(1, "127.0.0.1", 9)).subscribe_ack.active


def test_a_subscriber_chooses_its_datagram_size_within_the_udp_limits() -> None:
    app = make_app()
    client = app.connect("127.0.0.1")
    default = ask(client, subscribe(1, "", 5555)).subscribe_ack
    assert default.active and default.max_datagram_bytes == 1200  # udp.max_datagram_bytes
    local = ask(client, subscribe(2, "", 5556, max_datagram_bytes=65_507)).subscribe_ack
    assert local.active and local.max_datagram_bytes == 65_507
    sizes = {t.port: t.max_datagram_bytes for t in app.broadcaster.targets()}
    assert sizes == {5555: 1200, 5556: 65_507}
    for request_id, size in ((3, 127), (4, 65_508)):
        reply = ask(client, subscribe(request_id, "", 5557, max_datagram_bytes=size))
        assert reply.error.code == ErrorCode.INVALID_INPUT
        assert f"max_datagram_bytes must be 128..65507 (0 for the server's 1200), got {size}" in (
            reply.error.message
        )
    assert len(app.broadcaster.targets()) == 2


def test_allowed_cidrs_apply_only_to_a_client_authenticated_by_token() -> None:
    cidrs = {"allowed_target_cidrs": ["10.0.0.0/8"]}
    no_auth = make_app({"udp": cidrs})
    reply = ask(no_auth.connect("127.0.0.1"), subscribe(1, "10.1.2.3", 5555))
    assert reply.error.code == ErrorCode.PERMISSION_DENIED
    assert "others need auth on, a token, and udp.allowed_target_cidrs" in reply.error.message

    app = make_app({"auth": {"tokens": [TOKEN]}, "udp": cidrs})
    anonymous = app.connect("127.0.0.1")
    assert ask(anonymous, subscribe(1, "10.1.2.3", 5555)).error.code == ErrorCode.UNAUTHENTICATED
    client = authenticated(app, "127.0.0.1")
    assert ask(client, subscribe(2, "10.1.2.3", 5555)).subscribe_ack.host == "10.1.2.3"
    assert ask(client, subscribe(3, "11.0.0.1", 5555)).error.code == ErrorCode.PERMISSION_DENIED
    assert ask(client, subscribe(4, "", 5556)).subscribe_ack.host == "127.0.0.1"
    assert targets(app) == [("10.1.2.3", 5555), ("127.0.0.1", 5556)]


@pytest.mark.parametrize(
    ("cidr", "problem"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("game.example", "not an IPv4 network"),
        ("::/0", "not an IPv4 network"),
        ("0.0.0.0/8", "never a UDP target"),
        ("255.255.255.255/32", "never a UDP target"),
    ],
)
def test_bad_allowed_cidrs_fail_at_load_naming_the_key(cidr: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        parse_config({"udp": {"allowed_target_cidrs": ["192.168.0.0/16", cidr]}})
    assert info.value.path == "udp.allowed_target_cidrs.1"


def test_targets_are_owned_another_connection_cannot_remove_take_or_use_them() -> None:
    app = make_app({"udp": {"max_subscriptions_per_connection": 1}})
    transport = FakeDatagramTransport()
    app.broadcaster.transport = transport  # type: ignore[assignment]
    owner, other = app.connect("127.0.0.1"), app.connect("127.0.0.1")  # same host, both allowed
    assert ask(owner, subscribe(1, "127.0.0.1", 5555)).subscribe_ack.active

    gone = ask(other, unsubscribe(1, "127.0.0.1", 5555))
    assert not gone.subscribe_ack.changed  # not its target: left alone
    taken = ask(other, subscribe(2, "127.0.0.1", 5555, encoding=pb.ENCODING_JSON))
    assert taken.error.code == ErrorCode.PERMISSION_DENIED
    assert taken.error.message == "UDP target 127.0.0.1:5555 is another connection's"
    assert ask(other, subscribe(3, "127.0.0.1", 5556)).subscribe_ack.active
    # At its cap of one, taking the other's target is still refused, not a way past the cap.
    assert ask(other, subscribe(4, "127.0.0.1", 5555)).error.code == ErrorCode.PERMISSION_DENIED
    assert [(t.port, t.owner, t.encoding) for t in app.broadcaster.targets()] == [
        (5555, owner.protocol, "protobuf"),
        (5556, other.protocol, "protobuf"),
    ]

    # The owner renews (no BUSY at its cap of one) and its sequence carries on.
    for request_id in (10, 11):
        owner.send(infer(request_id, "moving_average", [1, 2, 3, 4, 5]))
        app.settle()
        assert owner.replies()[0].HasField("infer_response")
        assert ask(owner, subscribe(request_id, "127.0.0.1", 5555)).subscribe_ack.active
    sequences = [pb.Datagram.FromString(d).sequence for d, a in transport.written if a[1] == 5555]
    assert sequences == [1, 2]
    assert ask(owner, unsubscribe(6, "127.0.0.1", 5555)).subscribe_ack.changed
    assert targets(app) == [("127.0.0.1", 5556)]


def test_a_lease_expires_while_the_connection_lives_and_renewing_keeps_both_alive() -> None:
    app = make_app({"udp": {"lease_s": 30.0}, "server": {"idle_timeout_s": 60.0}})
    renewing, lapsing = app.connect(), app.connect()
    assert ask(renewing, subscribe(1, "", 5555)).subscribe_ack.lease_s == pytest.approx(30.0)
    assert ask(lapsing, subscribe(1, "", 5556)).subscribe_ack.active
    for step in range(1, 6):  # 100 s, renewing every 20 s
        app.clock.advance(20)
        renewed = ask(renewing, subscribe(step + 1, "", 5555)).subscribe_ack
        assert renewed.active and renewed.lease_s == pytest.approx(30.0)
    assert targets(app) == [("127.0.0.1", 5555)]  # lapsing's lease ran out at 30 s
    assert not renewing.closed and lapsing.closed  # idle (sent nothing) for 60 s


def test_errors_are_never_broadcast() -> None:
    app = make_app()
    transport = FakeDatagramTransport()
    app.broadcaster.transport = transport  # type: ignore[assignment]
    client = app.connect()
    assert ask(client, subscribe(1, "", 5555)).subscribe_ack.active
    client.send(infer(2, "moving_average", [1.0]))  # too short: INVALID_INPUT
    client.send(infer(3, "no_such_model", [1.0, 2.0]))
    app.settle()
    assert [r.error.code for r in client.replies()] == [
        ErrorCode.INVALID_INPUT,
        ErrorCode.UNKNOWN_MODEL,
    ]
    assert transport.written == []
    client.send(infer(4, "moving_average", [1, 2, 3, 4, 5]))
    app.settle()
    assert len(transport.written) == 1


def _bits(value: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", value))[0])


def _float32(bits: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def _reads_back_exactly(text: str, value: float) -> bool:
    """Whether decimal ``text`` gives float32 ``value`` read either way a client might."""
    if _bits(float(text)) != _bits(value):  # to double, then rounded to float32
        return False
    # Straight to float32: strictly nearer to value than to either neighbour.
    magnitude = abs(value)
    bits = _bits(magnitude)
    below = _float32(bits - 1) if bits else -_float32(1)
    above = _float32(bits + 1) if bits + 1 < 0x7F800000 else 2 * magnitude - below
    twice = 2 * abs(Fraction(text)) - Fraction(magnitude)
    return Fraction(below) < twice < Fraction(above)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=8))
def test_json_broadcasts_keep_every_float32_bit_exact(values: list[float]) -> None:
    response = pb.InferResponse(model="m", version="1", predictions=values, confidence=values)
    decoded = json.loads(json.dumps(result_json(3, response)))
    for key in ("predictions", "confidence"):
        texts = [json.dumps(v) for v in decoded[key]]
        assert all(_reads_back_exactly(t, v) for t, v in zip(texts, values, strict=True)), texts
        assert all(len(Decimal(t).normalize().as_tuple().digits) <= 9 for t in texts)


def test_json_broadcasts_write_short_values_short() -> None:
    response = pb.InferResponse(model="m", predictions=[0.1, 1.23456784e-05, 1 / 3, 2.5])
    assert json.dumps(result_json(1, response)["predictions"]) == (
        "[0.1, 1.2345678e-05, 0.33333334, 2.5]"
    )


# -- real sockets --------------------------------------------------------------------------
def _udp_listener(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(5)
    return sock


def test_a_client_cannot_send_results_to_another_loopback_address(tmp_path: Path) -> None:
    victim = _udp_listener("127.0.0.2")
    own = _udp_listener("127.0.0.1")
    # Only moving_average (no LSTM to warm up): a faster start.
    config: dict[str, Any] = {"inference": {"models": {"moving_average": {}}}}
    try:
        with (
            run_daemon(tmp_path, config) as daemon,
            BlockingClient("127.0.0.1", daemon.tcp_port) as attacker,
            BlockingClient("127.0.0.1", daemon.tcp_port) as player,
        ):
            refused = attacker.request(subscribe(1, "127.0.0.2", victim.getsockname()[1]))
            assert refused.error.code == ErrorCode.PERMISSION_DENIED
            for i in range(20):
                reply = player.request(infer_envelope(100 + i, "moving_average", [1, 2, 3, 4, 5]))
                assert reply.HasField("infer_response")
            victim.settimeout(0.5)
            with pytest.raises(TimeoutError):
                victim.recvfrom(2048)

            ack = attacker.request(subscribe(2, "", own.getsockname()[1]))
            assert ack.subscribe_ack.host == "127.0.0.1" and ack.subscribe_ack.active
            player.request(infer_envelope(200, "moving_average", [1, 2, 3, 4, 5], MA_CONFIG))
            datagram = pb.Datagram.FromString(own.recvfrom(2048)[0])
            assert datagram.sequence == 1
            assert pb.BroadcastResult.FromString(datagram.payload).request_id == 200

            # The peer address the server sees is the client's real one.
            with BlockingClient("127.0.0.1", daemon.tcp_port, source_host="127.0.0.2") as other:
                ack = other.request(subscribe(1, "", victim.getsockname()[1]))
                assert ack.subscribe_ack.host == "127.0.0.2"
                player.request(infer_envelope(201, "moving_average", [1, 2, 3, 4, 5]))
                victim.settimeout(5)
                datagram = pb.Datagram.FromString(victim.recvfrom(2048)[0])
                assert pb.BroadcastResult.FromString(datagram.payload).request_id == 201
    finally:
        victim.close()
        own.close()
