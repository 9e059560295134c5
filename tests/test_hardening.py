"""Limits and timeouts, in memory on task.Clock: in-flight, queue, output, idle, trickle."""

from __future__ import annotations

import struct

from commonlib.wire import pb
from factory.client_codec import EnvelopeDecoder, frame_envelope, frame_payload, ping_envelope
from tests.support import infer, make_app
from util.errors import ErrorCode

MA = [1.0, 2.0, 3.0, 4.0, 5.0]


def codes(replies: list[pb.Envelope]) -> dict[int, int]:
    return {r.request_id: (r.error.code if r.HasField("error") else 0) for r in replies}


def test_inflight_limit_answers_busy_at_once_and_frees_on_reply() -> None:
    app = make_app({"server": {"max_inflight_per_connection": 4}})
    client = app.connect()
    for i in range(6):
        client.send(infer(i, "moving_average", MA))
    early = codes(client.replies())
    assert early == {4: ErrorCode.BUSY, 5: ErrorCode.BUSY}
    app.settle()
    assert codes(client.replies()) == {0: 0, 1: 0, 2: 0, 3: 0}
    client.send(infer(9, "moving_average", MA))  # slots are free again
    app.settle()
    assert codes(client.replies()) == {9: 0}


def test_a_request_id_reused_while_in_flight_is_rejected() -> None:
    app = make_app()
    client = app.connect()
    client.send(infer(7, "moving_average", MA))
    client.send(infer(7, "moving_average", MA))
    (dup,) = client.replies()
    assert dup.error.code == ErrorCode.INVALID_INPUT and "already in flight" in dup.error.message
    app.settle()
    assert codes(client.replies()) == {7: 0}
    client.send(infer(7, "moving_average", MA))  # fine once answered
    app.settle()
    assert codes(client.replies()) == {7: 0}


def test_stalled_model_with_queue_q_rejects_exactly_k_of_q_plus_k() -> None:
    q, k = 10, 3
    app = make_app(
        {
            "server": {"max_inflight_per_connection": 1000},
            "inference": {
                "models": {"moving_average": {"batching": {"max_batch_size": 1, "max_queue": q}}}
            },
        }
    )
    client = app.connect()
    client.send(infer(0, "moving_average", MA))
    app.clock.advance(0)  # request 0 is now running (the runner never finishes it: stalled)
    assert len(app.runner.pending) == 1
    for i in range(1, q + k + 1):
        client.send(infer(i, "moving_average", MA))
    rejected = codes(client.replies())
    assert len(rejected) == k and set(rejected.values()) == {ErrorCode.BUSY}
    app.settle()
    assert set(codes(client.replies()).values()) == {0}


def test_queue_timeout_answers_deadline_exceeded_while_the_model_is_stalled() -> None:
    app = make_app(
        {
            "inference": {
                "models": {
                    "moving_average": {"batching": {"max_batch_size": 1, "queue_timeout_ms": 500.0}}
                }
            }
        }
    )
    client = app.connect()
    client.send(infer(0, "moving_average", MA))
    app.clock.advance(0)
    for i in range(1, 4):
        client.send(infer(i, "moving_average", MA))
    app.clock.advance(0.499)
    assert client.replies() == []
    app.clock.advance(0.002)
    late = client.replies()
    assert {r.request_id for r in late} == {1, 2, 3}
    assert {r.error.code for r in late} == {ErrorCode.DEADLINE_EXCEEDED}
    assert "queue_timeout_ms=500" in late[0].error.message
    app.runner.run_pending()
    assert codes(client.replies()) == {0: 0}
    queues = {q.model: q for q in app.facade.get_queue_status()}
    assert queues["moving_average"].timed_out == 3


def _pings(n: int) -> bytes:
    return b"".join(frame_envelope(ping_envelope(i)) for i in range(n))


def test_a_client_that_never_reads_gets_nothing_more_handled_until_it_does() -> None:
    app = make_app()
    client = app.connect()
    other = app.connect()
    protocol = client.protocol
    protocol.pauseProducing()  # what the transport does once its write buffer is full
    assert client.transport.producerState == "paused"  # stopped reading the client
    client.send_raw(_pings(10_000))  # bytes already in flight still arrive
    app.settle()
    early = len(client.replies())
    assert early <= 1  # ...but are not handled while it does not read
    other.send(infer(1, "moving_average", MA))
    app.settle()
    assert codes(other.replies()) == {1: 0}
    protocol.resumeProducing()  # the client read its replies
    app.settle()
    assert early + len(client.replies()) == 10_000
    assert client.transport.producerState == "producing"


def test_unsent_replies_past_the_cap_abort_the_connection() -> None:
    app = make_app({"server": {"max_output_buffer_bytes": 65536}})
    client = app.connect()
    protocol = client.protocol
    protocol.pauseProducing()
    big = pb.Envelope(request_id=1, error=pb.Error(message="x" * 10_000))
    for _ in range(6):  # replies of requests already in flight keep coming
        protocol.send_envelope(big)
    assert not client.transport.disconnected
    protocol.send_envelope(big)
    assert client.transport.disconnected  # aborted, not merely closed
    assert "not reading" in protocol.aborted_reason
    assert app.factory.stats.aborted_slow_reader == 1
    assert len(client.transport.value()) <= 65536


def test_a_burst_yields_to_other_connections_every_64_frames() -> None:
    app = make_app()
    burst = app.connect()
    burst.send_raw(_pings(200))
    assert len(burst.replies()) == 64
    assert burst.transport.producerState == "paused"
    pending = [getattr(c, "func", None) for c in app.clock.getDelayedCalls()]
    assert burst.protocol._next_turn in pending  # the rest waits for the next tick
    # (task.Clock runs zero-delay calls added during advance(0) at once; the real
    # reactor runs them on its next iteration, after other connections' reads.)
    app.clock.advance(0)
    assert len(burst.replies()) == 136
    assert burst.transport.producerState == "producing"


def test_resume_after_the_client_catches_up() -> None:
    app = make_app()
    client = app.connect()
    client.protocol.pauseProducing()
    client.protocol.resumeProducing()
    assert client.transport.producerState == "producing"
    client.send(pb.Envelope(request_id=3, ping=pb.Ping()))
    assert codes(client.replies()) == {3: 0}


def test_idle_connections_close_but_not_while_waiting_for_a_reply() -> None:
    app = make_app({"server": {"idle_timeout_s": 60.0}})
    idle = app.connect()
    waiting = app.connect()
    waiting.send(infer(1, "moving_average", MA))
    app.clock.advance(0)  # dispatched to the runner, which never finishes it: in flight
    app.clock.advance(59)
    assert not idle.closed
    app.clock.advance(2)
    assert idle.closed
    assert not waiting.closed


def test_a_frame_trickled_byte_by_byte_is_cut_off_by_the_minimum_receive_rate() -> None:
    # A complete 6-byte Ping trickled one byte a second used to finish well inside the
    # 10 s frame timeout, again and again, holding the connection for ever.
    app = make_app({"server": {"frame_grace_s": 1.0, "idle_timeout_s": 60.0}})
    client = app.connect()
    ping = _pings(1)
    client.send_raw(ping[:1])
    app.clock.advance(0.5)
    client.send_raw(ping[1:2])
    assert not client.closed
    app.clock.advance(0.6)  # the sweep after the first byte's grace second
    (reply,) = client.replies()
    assert reply.error.code == ErrorCode.BAD_PACKET and "min_receive_rate" in reply.error.message
    assert client.closed
    client.send_raw(ping[2:])  # the rest of the frame is never handled
    assert client.replies() == []


def test_a_large_frame_arriving_at_a_healthy_rate_is_not_cut() -> None:
    app = make_app({"server": {"min_receive_rate_bytes_per_s": 16_384}})
    client = app.connect()
    body = pb.Envelope(request_id=5, ping=pb.Ping()).SerializeToString()
    pad = 100_000
    body += b"\x9a\x06" + _varint(pad) + b"\x00" * pad  # an unknown field 99: ignored
    frame = frame_payload(body)
    chunk = 10_000  # 20 KB/s: a frame of 100 KB gets 1 + 100,007 / 16,384 = 7.1 s
    for start in range(0, len(frame), chunk):
        assert not client.closed
        client.send_raw(frame[start : start + chunk])
        app.clock.advance(0.5)
    (reply,) = client.replies()
    assert reply.request_id == 5 and reply.HasField("pong")


def test_the_frame_deadline_is_grace_plus_size_at_the_minimum_rate_capped() -> None:
    from factory.packet_protocol import ConnectionLimits

    limits = ConnectionLimits(
        frame_grace_s=1.0, min_receive_rate_bytes_per_s=1000, frame_timeout_s=10.0
    )
    assert limits.frame_deadline_s(None) == 1.0  # the length prefix is not complete yet
    assert limits.frame_deadline_s(6) == 1.006
    assert limits.frame_deadline_s(5000) == 6.0
    assert limits.frame_deadline_s(1_000_000) == 10.0


def test_a_frame_timeout_closes_and_counts_once_whatever_the_peer_does() -> None:
    app = make_app({"server": {"abort_timeout_s": 100.0, "idle_timeout_s": 30.0}})
    client = app.connect()
    client.send_raw(b"\x00\x00")  # half a length prefix, then nothing
    app.clock.pump([1.0] * 40)  # sweeps past the idle timeout while the peer holds on
    stats = app.factory.stats
    assert client.closed and not client.transport.disconnected
    assert stats.timed_out_frame == 1 and stats.errors_sent["BAD_PACKET"] == 1
    assert stats.timed_out_idle == 0  # closing already: no second reason
    client.protocol.connectionLost()
    assert stats.truncated_disconnects == 0  # the server closed it: not the client's doing


def test_a_client_that_has_not_read_for_the_timeout_is_aborted() -> None:
    app = make_app({"server": {"slow_reader_timeout_s": 5.0}})
    client = app.connect()
    other = app.connect()
    client.protocol.pauseProducing()  # its replies fill the buffers: it is not reading
    app.clock.pump([1.0] * 4)
    assert not client.transport.disconnected
    app.clock.pump([1.0] * 2)
    assert client.transport.disconnected
    assert "slow_reader_timeout_s=5.0" in client.protocol.aborted_reason
    app.clock.pump([1.0] * 3)
    assert app.factory.stats.aborted_slow_reader == 1
    other.send(pb.Envelope(request_id=1, ping=pb.Ping()))
    assert other.replies()[0].HasField("pong")


def test_a_client_that_reads_again_in_time_is_not_aborted() -> None:
    app = make_app({"server": {"slow_reader_timeout_s": 5.0}})
    client = app.connect()
    client.protocol.pauseProducing()
    app.clock.pump([1.0] * 4)
    client.protocol.resumeProducing()
    app.clock.pump([1.0] * 4)
    assert not client.transport.disconnected


def test_frames_after_a_close_decision_in_the_same_read_are_not_handled() -> None:
    app = make_app({"server": {"max_frame_bytes": 64}})
    client = app.connect()
    data = _pings(1) + struct.pack(">I", 65) + b"x" * 65 + _pings(3)
    client.send_raw(data)
    replies = client.replies()
    assert [r.WhichOneof("body") for r in replies] == ["pong", "error"]
    assert replies[1].error.code == ErrorCode.FRAME_TOO_LARGE and client.closed
    client.send_raw(_pings(2))
    assert client.replies() == []


def test_max_connections_refuses_the_next_one_with_busy() -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    app = make_app({"server": {"max_connections": 2}})
    app.connect()
    app.connect()
    refused = app.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    refused.makeConnection(transport)
    error = next(EnvelopeDecoder().feed(transport.value())).error
    assert error.code == ErrorCode.BUSY and "max_connections=2" in error.message
    assert transport.disconnecting
    assert app.factory.stats.refused == 1


def test_close_aborts_when_the_peer_does_not_let_go() -> None:
    app = make_app({"server": {"abort_timeout_s": 15.0, "max_frame_bytes": 64}})
    client = app.connect()
    client.send_raw(struct.pack(">I", 65))  # FRAME_TOO_LARGE: close
    assert client.closed and not client.transport.disconnected
    app.clock.advance(15)
    assert client.transport.disconnected
    assert app.factory.stats.aborted_close_timeout == 1


def test_a_prompt_close_cancels_its_abort_timer() -> None:
    app = make_app({"server": {"max_frame_bytes": 64}})
    client = app.connect()
    client.send_raw(struct.pack(">I", 65))
    client.protocol.connectionLost()
    pending = [getattr(c, "func", None) for c in app.clock.getDelayedCalls() if c.active()]
    assert client.protocol._abort_if_open not in pending


def test_shedding_happens_before_decoding_and_answers_like_the_handler() -> None:
    app = make_app({"server": {"max_inflight_per_connection": 2}})
    client = app.connect()
    for i in range(1, 6):
        client.send(infer(i * 1000, "moving_average", MA))
    busy = [r for r in client.replies() if r.HasField("error")]
    assert [r.request_id for r in busy] == [3000, 4000, 5000]
    assert {r.error.code for r in busy} == {ErrorCode.BUSY}
    assert "max_inflight_per_connection=2" in busy[0].error.message
    assert app.factory.stats.shed_before_decode == 3
    client.send(pb.Envelope(request_id=77, ping=pb.Ping()))  # other commands still pass
    assert client.replies()[0].HasField("pong")


def _varint(value: int) -> bytes:
    from factory.codec import encode_varint

    return encode_varint(value)


def test_the_in_flight_gate_also_holds_for_a_non_canonical_field_order() -> None:
    # request_id after the body: not the layout the pre-decode peek reads, so the same
    # gate runs after decoding; there is no second check in the handler.
    app = make_app({"server": {"max_inflight_per_connection": 1}})
    client = app.connect()

    def reordered(request_id: int) -> bytes:
        body = infer(0, "moving_average", MA).SerializeToString()  # request_id 0: not sent
        return body + b"\x08" + _varint(request_id)

    for request_id in (1, 2):
        payload = reordered(request_id)
        client.send_raw(frame_payload(payload))
    (busy,) = client.replies()
    assert busy.request_id == 2 and busy.error.code == ErrorCode.BUSY
    assert app.factory.stats.shed_before_decode == 1
    app.settle()
    assert codes(client.replies()) == {1: 0}


def test_a_partial_frame_has_no_deadline_while_the_server_is_not_reading_it() -> None:
    app = make_app({"server": {"frame_grace_s": 1.0, "slow_reader_timeout_s": 10.0}})
    client = app.connect()
    ping = _pings(1)
    client.send_raw(ping[:3])
    client.protocol.pauseProducing()  # the client stopped reading: so do we
    app.clock.pump([1.0] * 5)
    assert not client.closed  # its frame is late because of us, not of it
    client.protocol.resumeProducing()
    client.send_raw(ping[3:])
    (pong,) = client.replies()
    assert pong.HasField("pong")


def test_finish_draining_answers_what_the_kernel_holds_then_half_closes() -> None:
    import socket

    from twisted.internet.testing import StringTransport

    class SocketTransport(StringTransport):
        """StringTransport for writes, with a real socket whose receive buffer holds data."""

        def __init__(self, sock: socket.socket) -> None:
            super().__init__()
            self.sock = sock
            self.write_closed = False

        def getHandle(self) -> socket.socket:
            return self.sock

        def loseWriteConnection(self) -> None:
            self.write_closed = True

    def drain(buffered: bytes, in_kernel: bytes) -> tuple[list[int], SocketTransport]:
        app = make_app()
        server_sock, client_sock = socket.socketpair()
        try:
            protocol = app.factory.buildProtocol(None)
            transport = SocketTransport(server_sock)
            protocol.makeConnection(transport)
            if buffered:  # read, but a burst yields after 64 frames: the rest waits here
                protocol.dataReceived(buffered)
                transport.clear()
            if in_kernel:  # arrived, but the reactor has not read it yet
                client_sock.sendall(in_kernel)
            protocol.finish_draining()  # type: ignore[attr-defined]
            assert app.factory.stats.closed_draining == 1
            return [r.request_id for r in parse_replies(transport.value())], transport
        finally:
            server_sock.close()
            client_sock.close()

    pings = _pings(200)
    answered, transport = drain(b"", pings)  # more than a turn's 64 frames, all answered
    assert answered == list(range(200)) and transport.write_closed
    answered, _ = drain(pings, b"")  # the frames left after a yield, answered too
    assert answered == list(range(64, 200))


def parse_replies(data: bytes) -> list[pb.Envelope]:
    return list(EnvelopeDecoder().feed(data))


def test_client_sockets_get_tcp_nodelay_and_a_capped_send_buffer() -> None:
    import socket

    from twisted.internet.testing import StringTransport

    class TcpTransport(StringTransport):
        def __init__(self, sock: socket.socket) -> None:
            super().__init__()
            self.sock = sock

        def getHandle(self) -> socket.socket:
            return self.sock

    app = make_app({"server": {"socket_send_buffer_bytes": 65536}})
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            protocol = app.factory.buildProtocol(None)
            protocol.makeConnection(TcpTransport(accepted))
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            # Linux doubles the value for its bookkeeping.
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536
