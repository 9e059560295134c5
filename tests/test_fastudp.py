"""The C snapshot sender (netlib/_fastudp.c) against its pure-Python twin, on real sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from commonlib.wire import pb
from netlib import fastudp
from netlib.udp_broadcast import TickSnapshot, UdpBroadcaster

native: Any = pytest.importorskip("netlib._fastudp", reason="the C extension is not built")


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[Any, ...]:
    width = draw(st.integers(1, 60))
    rows = draw(st.integers(0, 40))
    ids = np.array(draw(st.lists(st.integers(0, 2**32 - 1), min_size=rows, max_size=rows)))
    outputs = draw(st.binary(min_size=4 * width * rows, max_size=4 * width * rows))
    return (
        draw(st.text(max_size=20)).encode("utf-8"),
        draw(st.integers(0, 2**63)),  # 0: proto3 leaves the field out
        draw(st.integers(0, 2**63)),
        width,
        ids.astype("<u4").tobytes(),
        outputs,
        draw(st.integers(1, 50)),
        draw(st.integers(1, 2**62)),
        draw(st.integers(0, 2**63)),
    )


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_c_datagrams_are_protobufs_own_bytes(args: tuple[Any, ...]) -> None:
    assert native.snapshot_datagrams(*args) == fastudp.snapshot_datagrams_py(*args)


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_sendmmsg_sends_every_datagram_in_order_past_one_batch(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    datagrams = [bytes([i % 256]) * (1 + i % 700) for i in range(150)]  # 64 + 64 + 22
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        assert native.send_datagrams(sender.fileno(), "127.0.0.1", port, datagrams) == 150
    assert [receiver.recv(2048) for _ in datagrams] == datagrams


def test_sendmmsg_refuses_a_bad_address_and_reports_what_a_dead_socket_did_not_send() -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(ValueError, match="IPv4 literal"):
        native.send_datagrams(sender.fileno(), "localhost", 9999, [b"x"])
    with pytest.raises(TypeError):
        native.send_datagrams(sender.fileno(), "127.0.0.1", 9999, [b"x", "y"])
    fd = sender.fileno()
    sender.close()  # EBADF: nothing sent, nothing raised (the broadcaster counts drops)
    assert native.send_datagrams(fd, "127.0.0.1", 9999, [b"x", b"y"]) == 0


class _SocketTransport:
    """A datagram transport over a real socket (what twisted's udp.Port gives the protocol)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.sock.sendto(datagram, addr)


def test_a_snapshot_reaches_a_real_socket_whole_through_sendmmsg(receiver: socket.socket) -> None:
    clock = Clock()
    clock.advance(1_700_000_000.5)
    broadcaster = UdpBroadcaster(clock, 1200)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        broadcaster.transport = _SocketTransport(sender)  # type: ignore[assignment]
        broadcaster.add_target("127.0.0.1", receiver.getsockname()[1])
        ids = np.arange(1, 2001, dtype=np.uint32)
        outputs = np.random.default_rng(3).normal(size=(2000, 51)).astype(np.float32)
        broadcaster.publish_snapshot(TickSnapshot("motion_lstm", 9, 123, 51, ids, outputs))
        count = broadcaster.datagrams_sent
        assert count == 400 and broadcaster.datagrams_dropped == 0
        parts = [pb.Datagram.FromString(receiver.recv(2048)) for _ in range(count)]
    assert [p.sequence for p in parts] == list(range(1, 401))
    got = np.concatenate([np.frombuffer(p.snapshot.ids, "<u4") for p in parts])
    rows = np.concatenate([np.frombuffer(p.snapshot.outputs, "<f4") for p in parts])
    assert np.array_equal(got, ids) and np.array_equal(rows.reshape(2000, 51), outputs)
    assert broadcaster.targets()[0].sequence == 400  # the next tick goes on from 401
