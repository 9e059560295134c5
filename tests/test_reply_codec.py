"""The batch reply path: hand-encoded InferResponses equal protobuf's, one write per batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from aiServer.commands.infer import float32_bytes
from aiServer.service import build_daemon
from commonlib.wire import pb
from factory.codec import (
    encode_envelope,
    encode_infer_reply,
    infer_response_head,
    timings_batch_part,
)
from factory.packet_protocol import PacketProtocol
from tests.support import Client, infer, make_app
from util.config import Config, parse_config

MA = [1.0, 2.0, 3.0, 4.0, 5.0]
T = TypeVar("T")

timing = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-45, 3.4e38]), st.floats(0.0, 1e7, allow_subnormal=True)
)
float32s = st.floats(width=32, allow_nan=False)
rows = st.lists(float32s, max_size=40).map(lambda v: np.array(v, dtype=np.float32))
float64_rows = st.lists(st.floats(-3e38, 3e38), max_size=8).map(
    lambda v: np.array(v, dtype=np.float64)
)


def protobuf_reply(
    request_id: int,
    model: str,
    version: str,
    predictions: np.ndarray,
    confidence: np.ndarray | None,
    timings: tuple[float, int, float, float],
) -> bytes:
    """The reply as the handler built it with the generated code before the batch path."""
    reply = pb.Envelope(request_id=request_id)
    response = reply.infer_response
    response.model = model
    response.version = version
    response.predictions.extend(predictions.tolist())
    if confidence is not None:
        response.confidence.extend(confidence.tolist())
    t = response.timings
    t.queue_wait_ms, t.batch_size, t.inference_ms, t.total_ms = timings
    return encode_envelope(reply)


@settings(max_examples=400, deadline=None)
@given(
    request_id=st.integers(0, 2**64 - 1),
    model=st.text(max_size=20),
    version=st.text(max_size=5),
    predictions=st.one_of(rows, float64_rows),
    confidence=st.one_of(st.none(), rows),
    queue_wait_ms=timing,
    batch_size=st.integers(0, 2**32 - 1),
    inference_ms=timing,
    total_ms=timing,
)
def test_the_hand_encoded_reply_is_byte_identical_to_protobufs(
    request_id: int,
    model: str,
    version: str,
    predictions: np.ndarray,
    confidence: np.ndarray | None,
    queue_wait_ms: float,
    batch_size: int,
    inference_ms: float,
    total_ms: float,
) -> None:
    mine = encode_infer_reply(
        request_id,
        infer_response_head(model, version),
        float32_bytes(predictions),
        None if confidence is None else float32_bytes(confidence),
        queue_wait_ms,
        timings_batch_part(batch_size, inference_ms),
        total_ms,
    )
    timings = (queue_wait_ms, batch_size, inference_ms, total_ms)
    assert mine == protobuf_reply(request_id, model, version, predictions, confidence, timings)


class CountingTransport(StringTransport):
    """A StringTransport that counts write calls."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_a_batchs_replies_to_one_connection_go_out_in_one_write() -> None:
    app = make_app()
    protocol = app.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
    assert isinstance(protocol, PacketProtocol)
    transport = CountingTransport()
    protocol.makeConnection(transport)
    client = Client(protocol, transport)
    other = app.connect()
    client.send_raw(
        b"".join(
            encode_envelope(infer(i, "moving_average", MA, include_trend=True))
            for i in range(1, 17)
        )
    )
    other.send(infer(99, "moving_average", MA, include_trend=True))
    assert transport.writes == 0
    app.settle()
    replies = client.replies()
    assert transport.writes == 1
    assert [r.request_id for r in replies] == list(range(1, 17))
    assert all(len(r.infer_response.predictions) == 5 for r in replies)
    assert {r.infer_response.timings.batch_size for r in replies} == {17}
    (theirs,) = other.replies()
    assert theirs.request_id == 99 and theirs.infer_response.model == "moving_average"


class InlineRunner:
    """A BatchRunner running each batch at once, on the submitting call's stack."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, fn: Callable[[], T]) -> Deferred[T]:
        return succeed(fn())


def test_a_batch_that_finishes_within_the_submit_leaves_nothing_in_flight() -> None:
    data = Config().model_dump()
    data["inference"]["models"]["moving_average"]["batching"] = {"max_batch_size": 4}
    clock = Clock()
    daemon = build_daemon(parse_config(data), clock, runner=InlineRunner())
    protocol = daemon.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
    assert isinstance(protocol, PacketProtocol)
    client = Client(protocol, StringTransport())
    protocol.makeConnection(client.transport)
    # The 4th request fills the batch, which runs and is answered inside its submit.
    client.send_raw(b"".join(encode_envelope(infer(i, "moving_average", MA)) for i in range(1, 5)))
    assert [r.HasField("infer_response") for r in client.replies()] == [True] * 4
    assert daemon.dispatcher.inflight() == 0
    client.send(infer(1, "moving_average", MA))  # the id is free again
    clock.advance(0)
    (again,) = client.replies()
    assert again.request_id == 1 and again.HasField("infer_response")
