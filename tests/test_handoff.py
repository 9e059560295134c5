"""Connection hand-off (netlib/handoff.py) with real sockets, driven by hand on a MemoryReactor.

Real TCP connections on 127.0.0.1 are accepted by the Acceptor, their descriptors
cross real SOCK_SEQPACKET channels, and HandoffReceivers take them; the reactor's
readers are called directly, so every step is deterministic.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet.testing import MemoryReactor

from bot.blocking_client import BlockingClient
from factory.codec import encode_envelope, error_envelope
from netlib.handoff import Acceptor, HandoffReceiver, WorkerChannel, channel_pair
from util.errors import ErrorCode


class Worker:
    """A HandoffReceiver whose adopt keeps a duplicate of each connection's socket."""

    def __init__(self, reactor: MemoryReactor, sock: socket.socket) -> None:
        self.taken: list[socket.socket] = []
        self.gone = 0
        self.receiver = HandoffReceiver(reactor, sock, self._adopt, self._gone)
        self.receiver.start()

    def _adopt(self, fd: int, family: int) -> None:
        taken = socket.socket(family, socket.SOCK_STREAM, fileno=socket.dup(fd))
        taken.getpeername()  # a connected TCP socket, or OSError as in Twisted's adopt
        self.taken.append(taken)

    def _gone(self) -> None:
        self.gone += 1

    def read(self) -> None:
        self.receiver._reader.doRead()


Rig = tuple[MemoryReactor, socket.socket, list[WorkerChannel], list[Worker]]


@pytest.fixture
def rig() -> Iterator[Rig]:
    reactor = MemoryReactor()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    channels, workers = [], []
    for i in range(2):
        supervisor_end, worker_end = channel_pair()
        channels.append(WorkerChannel(i, supervisor_end))
        workers.append(Worker(reactor, worker_end))
    yield reactor, listener, channels, workers
    for w in workers:
        for s in w.taken:
            s.close()
    listener.close()


def connect(listener: socket.socket) -> BlockingClient:
    return BlockingClient("127.0.0.1", listener.getsockname()[1], timeout=5)


def test_four_connections_go_two_and_two_and_closes_are_counted(rig: Rig) -> None:
    reactor, listener, channels, workers = rig
    for w, c in zip(workers, channels, strict=True):
        w.receiver.announce_ready({"tcp": 1000 + c.index})
        assert c.read_messages() and c.ready and c.info == {"tcp": 1000 + c.index}
    acceptor = Acceptor(reactor, listener, lambda: channels, refuse=lambda conn: None)
    acceptor.start()
    clients = [connect(listener) for _ in range(4)]
    acceptor._reader.doRead()
    for w in workers:
        w.read()
    assert [len(w.taken) for w in workers] == [2, 2]
    assert [c.connections for c in channels] == [2, 2]
    # The worker really holds the client's connection: bytes cross it both ways.
    clients[0].send_raw(b"ping")
    client_address = clients[0].sock.getsockname()
    holder = next(s for w in workers for s in w.taken if s.getpeername() == client_address)
    assert holder.recv(4) == b"ping"
    # A closed connection is reported, and the next one goes to the emptier worker.
    workers[1].receiver.connection_closed()
    workers[1].receiver.connection_closed()
    channels[1].read_messages()
    assert [c.connections for c in channels] == [2, 0]
    clients.append(connect(listener))
    acceptor._reader.doRead()
    workers[1].read()
    assert len(workers[1].taken) == 3 and channels[1].connections == 1
    assert acceptor.accepted == 5 and acceptor.refused == 0
    for client in clients:
        client.close()
    acceptor.stop()


def test_a_worker_not_ready_gets_nothing_and_with_none_ready_the_client_is_told(rig: Rig) -> None:
    reactor, listener, channels, workers = rig
    channels[1].ready = True
    refusal = encode_envelope(error_envelope(0, ErrorCode.UNAVAILABLE, "no worker"))

    def refuse(conn: socket.socket) -> None:
        conn.send(refusal)

    acceptor = Acceptor(reactor, listener, lambda: channels, refuse)
    acceptor.start()
    with connect(listener):
        acceptor._reader.doRead()
        workers[0].read()
        workers[1].read()
        assert [len(w.taken) for w in workers] == [0, 1]
    channels[1].ready = False
    with connect(listener) as second:
        acceptor._reader.doRead()
        reply = second.receive()
        assert reply.error.code == ErrorCode.UNAVAILABLE.value
        with pytest.raises(ConnectionError):
            second.receive()  # and closed
    assert acceptor.refused == 1


def test_a_client_gone_before_adoption_is_reported_closed(rig: Rig) -> None:
    reactor, listener, channels, workers = rig
    channels[0].ready = True
    acceptor = Acceptor(reactor, listener, lambda: channels[:1], refuse=lambda conn: None)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.connect(listener.getsockname())
    acceptor.start()
    acceptor._reader.doRead()
    client.close()  # RST: the worker's getpeername fails
    workers[0].read()
    channels[0].read_messages()
    assert workers[0].receiver.failed == 1 and channels[0].connections == 0


def test_the_worker_learns_when_its_supervisor_has_gone(rig: Rig) -> None:
    _, _, channels, workers = rig
    channels[0].close()
    workers[0].read()
    assert workers[0].gone == 1
    workers[0].receiver.connection_closed()  # nothing is sent once gone, and nothing raised
    assert workers[1].gone == 0
