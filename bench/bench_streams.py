"""CPU per server tick of character streams, in one process: no sockets, no threads.

Builds the real daemon on a ``task.Clock``, opens ``--characters`` streams spread over
``--connections`` ``StringTransport`` clients, and for ``--ticks`` ticks feeds each
client one pre-encoded Tick frame, advances the clock one tick period and runs the
step the tick launched. It reports, per tick, the reactor's CPU for the Tick frames
(decode + latest-wins write), for launching the tick and delivering its outputs
(TickResults, and a protobuf UDP snapshot to one subscriber with ``--udp``), and
the worker's step (gather, one ``stream_step``, scatter), and the characters·steps
per second one core could sustain at that cost.

    .venv/bin/python bench/bench_streams.py                           # 2,000 lstm characters
    .venv/bin/python bench/bench_streams.py --characters 500 --udp
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from aiServer.service import build_daemon
from bot.blocking_client import frame_bytes
from commonlib.wire import pb
from factory.packet_protocol import PacketProtocol
from factory.tick_codec import encode_tick
from util.config import Config, parse_config

T = TypeVar("T")


class TimedRunner:
    """Runs queued work when asked, timing the work itself apart from its callbacks."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self.work_s = 0.0

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def run(self, fn: Callable[[], T]) -> Deferred[T]:
        """Queue ``fn``."""
        d: Deferred[T] = Deferred()
        self.pending.append((fn, d))
        return d

    def run_pending(self) -> None:
        """Run the queued work, then fire its Deferreds (the reactor's delivery)."""
        done = []
        for fn, d in self.pending:
            started = time.perf_counter()
            result = fn()
            self.work_s += time.perf_counter() - started
            done.append((d, result))
        self.pending.clear()
        for d, result in done:
            d.callback(result)


class NullDatagramTransport:
    """Counts datagrams instead of sending them."""

    def __init__(self) -> None:
        self.datagrams = 0

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1


def main() -> None:
    """Run the measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lstm_timeseries")
    parser.add_argument("--characters", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--udp", action="store_true", help="one protobuf snapshot subscriber")
    args = parser.parse_args()

    data: dict[str, Any] = Config().model_dump()
    data["streams"]["max_per_connection"] = args.characters
    config = parse_config(data)
    clock = Clock()
    runner = TimedRunner()
    daemon = build_daemon(config, clock, runner=runner)
    period = 1.0 / config.streams.tick_hz
    udp = NullDatagramTransport()
    if daemon.broadcaster is not None:
        daemon.broadcaster.transport = udp  # type: ignore[assignment]
    clients = []
    per_connection = np.array_split(np.arange(args.characters, dtype=np.uint32), args.connections)
    width = 1
    for c, ids in enumerate(per_connection):
        protocol = daemon.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
        assert isinstance(protocol, PacketProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for cid in ids.tolist():
            opening = pb.Envelope(request_id=cid + 1)
            opening.stream_open.model = args.model
            opening.stream_open.character_id = cid
            protocol.dataReceived(frame_bytes(opening))
        reply = pb.Envelope()
        reply.ParseFromString(transport.value()[4 : 4 + int.from_bytes(transport.value()[:4])])
        assert reply.HasField("stream_opened"), reply
        width = reply.stream_opened.input_width
        transport.clear()
        if args.udp and c == 0:
            subscribe = pb.Envelope(request_id=1)
            subscribe.subscribe.host = "127.0.0.1"
            subscribe.subscribe.port = 9
            protocol.dataReceived(frame_bytes(subscribe))
            transport.clear()
        clients.append((protocol, transport, ids))
    rng = np.random.default_rng(1)
    frames = [
        [
            frame_bytes(
                pb.Envelope(
                    request_id=t + 1,
                    tick=encode_tick(
                        args.model, ids, rng.normal(0, 1, (len(ids), width)), client_tick=t
                    ),
                )
            )
            for _, _, ids in clients
        ]
        for t in range(16)
    ]
    receive, launch_deliver, step = [], [], []
    for t in range(args.ticks):
        started = time.perf_counter()
        for (protocol, _, _), frame in zip(clients, frames[t % 16], strict=True):
            protocol.dataReceived(frame)
        received = time.perf_counter()
        runner.work_s = 0.0
        clock.advance(period * 1.001)
        runner.run_pending()
        finished = time.perf_counter()
        receive.append(received - started)
        step.append(runner.work_s)
        launch_deliver.append(finished - received - runner.work_s)
        for _, transport, _ in clients:
            transport.clear()
    skip = min(20, args.ticks // 5)  # warm-up: first loads and allocations
    med = {
        name: statistics.median(values[skip:]) * 1e3
        for name, values in (("receive", receive), ("deliver", launch_deliver), ("step", step))
    }
    reactor_ms = med["receive"] + med["deliver"]
    print(
        f"{args.model}: {args.characters} characters on {args.connections} connections, "
        f"{args.ticks} ticks (median per tick)"
    )
    print(
        f"  reactor: Tick frames {med['receive']:.3f} ms, launch + deliver {med['deliver']:.3f} ms"
    )
    print(f"  worker: step {med['step']:.3f} ms (gather, one stream_step, scatter)")
    total_ms = reactor_ms + med["step"]
    print(
        f"  total {total_ms:.3f} ms per tick = {total_ms * 1e3 / args.characters:.2f} µs per "
        f"character step; one core: {args.characters / total_ms * 1e3:,.0f} character steps/s"
    )
    if args.udp:
        print(f"  UDP datagrams per tick: {udp.datagrams / args.ticks:.1f}")


if __name__ == "__main__":
    main()
