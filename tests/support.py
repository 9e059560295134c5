"""Shared test helpers: an in-memory daemon driven by task.Clock, and its client side."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from aiServer.commands.registry import ServerState
from aiServer.dispatcher import Dispatcher
from aiServer.facade import AIFacade
from aiServer.service import build_daemon
from commonlib.models.registry import ModelFactory, model_factory
from commonlib.wire import pb
from factory.client_codec import EnvelopeDecoder, frame_envelope, infer_envelope
from factory.packet_protocol import PacketFactory, PacketProtocol
from netlib.udp_broadcast import UdpBroadcaster
from util.config import Config, parse_config

T = TypeVar("T")


class ManualRunner:
    """A BatchRunner whose batches run when the test calls ``run_pending``.

    It does the same work as the thread pool, in the test's thread, at the moment
    the test chooses, so batching decisions can be checked step by step.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def run(self, fn: Callable[[], T]) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self.pending.append((fn, d))
        return d

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run_pending(self) -> int:
        """Run every queued batch (and any queued while doing so); how many ran."""
        count = 0
        while self.pending:
            fn, d = self.pending.pop(0)
            count += 1
            try:
                result = fn()
            except Exception as exc:
                d.errback(exc)
            else:
                d.callback(result)
        return count


@dataclass
class App:
    """An in-memory daemon: real facade, models, batcher, dispatcher and protocol."""

    config: Config
    clock: Clock
    runner: ManualRunner
    facade: AIFacade
    dispatcher: Dispatcher
    factory: PacketFactory
    broadcaster: UdpBroadcaster
    state: ServerState
    clients: list[Client] = field(default_factory=list)

    def connect(self, peer_host: str = "127.0.0.1") -> Client:
        """A new client connection from ``peer_host`` (IPv4, or IPv6 when it has a colon)."""
        kind = IPv6Address if ":" in peer_host else IPv4Address
        protocol = self.factory.buildProtocol(kind("TCP", peer_host, 0))
        assert isinstance(protocol, PacketProtocol), "refused: max_connections reached"
        transport = StringTransport(peerAddress=kind("TCP", peer_host, 40000 + len(self.clients)))
        protocol.makeConnection(transport)
        client = Client(protocol, transport)
        self.clients.append(client)
        return client

    def settle(self) -> None:
        """Advance the clock by zero (next tick) and run batches until quiet."""
        for _ in range(100):
            self.clock.advance(0)
            if not self.runner.run_pending():
                return


@dataclass
class Client:
    """The client side of one in-memory connection."""

    protocol: PacketProtocol
    transport: StringTransport
    decoder: EnvelopeDecoder = field(default_factory=EnvelopeDecoder)

    def send(self, envelope: pb.Envelope) -> None:
        self.protocol.dataReceived(frame_envelope(envelope))

    def send_raw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def replies(self) -> list[pb.Envelope]:
        """Envelopes written to this client since the last call."""
        written = self.transport.value()
        self.transport.clear()
        return list(self.decoder.feed(written))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def make_app(overrides: dict[str, Any] | None = None, factory: ModelFactory = model_factory) -> App:
    """Build the app from the default config plus ``overrides`` (nested dict)."""
    data = Config().model_dump()
    for section, values in (overrides or {}).items():
        _merge(data[section], values)
    config = parse_config(data)
    clock = Clock()
    runner = ManualRunner()
    daemon = build_daemon(config, clock, factory, runner=runner)
    assert daemon.broadcaster is not None
    daemon.factory.doStart()  # starts the timeout sweep on the test clock
    return App(
        config,
        clock,
        runner,
        daemon.facade,
        daemon.dispatcher,
        daemon.factory,
        daemon.broadcaster,
        daemon.state,
    )


def _merge(into: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def infer(request_id: int, model: str, values: list[float], **config: Any) -> pb.Envelope:
    return infer_envelope(request_id, model, values, config)


ROOT = Path(__file__).resolve().parents[1]


def run_bot(
    tmp_path: Path, command: str, quiet: bool = True, timeout: float = 90
) -> tuple[int, dict[str, Any], str]:
    """Run `python -m bot COMMAND --report F [--quiet]`; (exit code, report, stdout + stderr)."""
    report = tmp_path / f"report-{len(list(tmp_path.iterdir()))}.json"
    result = subprocess.run(
        [sys.executable, "-m", "bot", *shlex.split(command), "--report", str(report)]
        + (["--quiet"] if quiet else []),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        # Wide enough that rich never wraps a table's header or cell the tests look for.
        env=dict(os.environ, COLUMNS="200"),
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    if data:
        validate_report(data)
    return result.returncode, data, result.stdout + result.stderr


def validate_report(report: dict[str, Any]) -> None:
    """Fail unless ``report`` follows bot/report.schema.json (every error listed)."""
    import jsonschema

    from bot.meta import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = [f"{e.json_path}: {e.message[:300]}" for e in validator.iter_errors(report)]
    assert not errors, "report does not follow bot/report.schema.json:\n" + "\n".join(errors)
