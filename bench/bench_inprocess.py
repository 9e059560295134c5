"""CPU per request of the real stack in one process: no sockets, no threads.

Builds the real daemon (protocol, dispatcher, handlers, facade, batcher, models)
on a ``task.Clock``, connects ``StringTransport`` clients, and feeds them
pre-encoded frames in bursts the way a pipelining client's reads arrive; batches
run synchronously on this thread. What it reports is the Python cost per request
of everything between ``dataReceived`` and ``transport.write``, which is what
bounds a GIL-bound server; the thread hand-off and the kernel are left out (the
socket benchmark, bench_server.py, measures those).

    .venv/bin/python bench/bench_inprocess.py                 # both models
    .venv/bin/python bench/bench_inprocess.py --profile       # plus a cProfile top list
    .venv/bin/python bench/bench_inprocess.py --reference     # and the bare decode protocol
    .venv/bin/python bench/bench_inprocess.py --stages        # µs per request by stage

``--stages`` splits the cost (thread CPU time) into: framing alone (a framing
protocol that drops the frames); the transport's gate and decode (PacketProtocol
with sessions that drop the packets; the C parser, or protobuf on the pure-Python
path); dispatch, validation and queueing (the rest of ``dataReceived`` on the real
stack); the model (the thread CPU time of the batches' ``run_batch``); and completing the
batches: outcomes, reply encoding and writes (the rest of the reactor turn that
runs them).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from aiServer.service import build_daemon
from bench.bench_server import MODELS
from bench.load_client import request_frames
from bench.reference_server import DecodeProtocol
from factory import fastcodec
from factory.packet_protocol import ConnectionLimits, PacketFactory, PacketProtocol
from netlib.framing import FramedProtocol
from util.config import Config, parse_config

T = TypeVar("T")


class InlineRunner:
    """Runs each batch at once on the calling thread (a BatchRunner).

    ``cpu_s`` adds up the thread CPU time the batches took (the model stage: the
    batcher's own timing is wall time, which a busy machine inflates).
    """

    cpu_s = 0.0

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def run(self, fn: Callable[[], T]) -> Deferred[T]:
        """Call ``fn`` now."""
        started = time.thread_time()
        result = fn()
        self.cpu_s += time.thread_time() - started
        return succeed(result)


def measure(
    model: str, connections: int, burst: int, rounds: int, profile: bool, raw: bool = False
) -> float:
    """Microseconds of CPU per request, over ``rounds`` bursts per connection."""
    data: dict[str, Any] = Config().model_dump()
    data["udp"]["enabled"] = False
    config = parse_config(data)
    clock = Clock()
    daemon = build_daemon(config, clock, runner=InlineRunner())
    values, model_config = MODELS[model]
    clients = []
    for c in range(connections):
        protocol = daemon.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
        assert isinstance(protocol, PacketProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        frames = request_frames(model, values, model_config, (c + 1) * 1_000_000, burst, raw=raw)
        clients.append((protocol, transport, b"".join(frames)))

    def run(n: int) -> None:
        for _ in range(n):
            for protocol, _transport, burst_bytes in clients:
                protocol.dataReceived(burst_bytes)
            clock.advance(0)
            for _protocol, transport, _ in clients:
                transport.clear()

    run(20)  # warm caches and the model
    profiler = cProfile.Profile() if profile else None
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    run(rounds)
    if profiler is not None:
        profiler.disable()
    elapsed = time.process_time() - started
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return elapsed / (rounds * connections * burst) * 1e6


class _DroppingSession:
    """A PacketHandler that admits every frame and drops the packets."""

    pending = 0

    def refusal(self) -> None:
        return None

    def packet_received(self, envelope: Any) -> None:
        pass

    def infer_received(self, request: Any, payload: bytes) -> None:
        pass

    def connection_lost(self) -> None:
        pass


class _DroppingApplication:
    def open_session(self, connection: Any) -> _DroppingSession:
        return _DroppingSession()


class _FrameCounter(FramedProtocol):
    split = staticmethod(fastcodec.split_frames)

    def frame_received(self, payload: bytes) -> None:
        pass


def _feed_cost(protocols: list[Any], bursts: list[bytes], rounds: int) -> float:
    """Thread CPU seconds to feed each protocol its burst ``rounds`` times."""
    for protocol in protocols:
        protocol.makeConnection(StringTransport())
    started = time.thread_time()
    for _ in range(rounds):
        for protocol, burst_bytes in zip(protocols, bursts, strict=True):
            protocol.dataReceived(burst_bytes)
    return time.thread_time() - started


def measure_stages(
    model: str, connections: int, burst: int, rounds: int, raw: bool = False
) -> dict[str, float]:
    """µs per request of each stage (see the module docstring)."""
    data: dict[str, Any] = Config().model_dump()
    data["udp"]["enabled"] = False
    # Batches of connections x burst still (the next tick takes the queue), but run by
    # clock.advance, not by the submit that fills them, so the two paths time apart.
    batching = data["inference"]["models"][model].setdefault("batching", {})
    batching["max_batch_size"] = connections * burst + 1
    config = parse_config(data)
    values, model_config = MODELS[model]
    bursts = [
        b"".join(request_frames(model, values, model_config, (c + 1) * 1_000_000, burst, raw=raw))
        for c in range(connections)
    ]
    n = rounds * connections * burst
    framing = _feed_cost([_FrameCounter() for _ in bursts], bursts, rounds)
    factory = PacketFactory(_DroppingApplication(), ConnectionLimits(), Clock())
    transport = _feed_cost(
        [factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0)) for _ in bursts],
        bursts,
        rounds,
    )
    clock = Clock()
    runner = InlineRunner()
    daemon = build_daemon(config, clock, runner=runner)
    clients = []
    for burst_bytes in bursts:
        protocol = daemon.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
        written = StringTransport()
        protocol.makeConnection(written)
        clients.append((protocol, written, burst_bytes))
    request_path = completion = 0.0
    for warm in (True, False):
        model_before = runner.cpu_s
        for _ in range(20 if warm else rounds):
            started = time.thread_time()
            for protocol, _written, burst_bytes in clients:
                protocol.dataReceived(burst_bytes)
            middle = time.thread_time()
            clock.advance(0)
            for _protocol, written, _burst in clients:
                written.clear()
            request_path += middle - started
            completion += time.thread_time() - middle
        if warm:
            request_path = completion = 0.0
    model_s = runner.cpu_s - model_before
    return {
        "frame": framing / n * 1e6,
        "gate + decode": (transport - framing) / n * 1e6,
        "dispatch + validate + queue": (request_path - transport) / n * 1e6,
        "model (batch)": model_s / n * 1e6,
        "complete + encode + write": (completion - model_s) / n * 1e6,
        "total": (request_path + completion) / n * 1e6,
    }


def measure_reference(connections: int, burst: int, rounds: int) -> float:
    """The same for bench/reference_server.py's bare decode protocol (moving_average)."""
    values, model_config = MODELS["moving_average"]
    clients = []
    for c in range(connections):
        protocol = DecodeProtocol()
        transport = StringTransport()
        protocol.makeConnection(transport)
        frames = request_frames("moving_average", values, model_config, (c + 1) * 1_000_000, burst)
        clients.append((protocol, transport, b"".join(frames)))

    def run(n: int) -> None:
        for _ in range(n):
            for protocol, transport, burst_bytes in clients:
                protocol.dataReceived(burst_bytes)
                transport.clear()

    run(20)
    started = time.process_time()
    run(rounds)
    return (time.process_time() - started) / (rounds * connections * burst) * 1e6


def main() -> None:
    """Print µs per request for each model."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--burst", type=int, default=16, help="frames per read per connection")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--raw-values", action="store_true", help="send Tensor.raw_values")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also measure the bare decode protocol of bench/reference_server.py",
    )
    parser.add_argument("--stages", action="store_true", help="µs per request by stage")
    args = parser.parse_args()
    path = "C hot path" if fastcodec.native else "pure Python"
    if args.stages:
        for model in args.models:
            stages = measure_stages(
                model, args.connections, args.burst, args.rounds, args.raw_values
            )
            print(f"{model} ({path}), µs of CPU per request by stage:")
            for stage, us in stages.items():
                print(f"  {stage:28} {us:6.2f}")
        return
    if args.reference:
        us = measure_reference(args.connections, args.burst, args.rounds)
        print(f"{'reference decode':16} {us:6.2f} µs CPU per request (in process)", flush=True)
    for model in args.models:
        us = measure(
            model, args.connections, args.burst, args.rounds, args.profile, args.raw_values
        )
        print(
            f"{model:16} {us:6.2f} µs CPU per request (in process, batches of "
            f"{args.connections * args.burst}{', raw_values' if args.raw_values else ''})",
            flush=True,
        )


if __name__ == "__main__":
    main()
