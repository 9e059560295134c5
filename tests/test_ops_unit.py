"""Operations in memory: HTTP site, metrics collector, graceful drain, warm-up, access log.

Everything runs on task.Clock with the ManualRunner, so each step is deterministic;
tests/test_ops_http.py covers the same features on the real process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from aiServer.metrics import MetricSources, make_registry
from aiServer.service import Daemon, DaemonService, build_daemon, daemon_service
from aiServer.services.drain import Drain
from commonlib.wire import pb
from factory.packet_protocol import PacketProtocol
from netlib.http_server import HttpResponse, make_site
from tests.service_tree import PortsReactor, RecordingPort, start_in_memory
from tests.support import Client, ManualRunner, _merge, infer
from util.config import Config, parse_config
from util.errors import ErrorCode

MA = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
ONLY_MA = {
    "inference": {
        "models": {"lstm_timeseries": {"enabled": False}, "motion_lstm": {"enabled": False}}
    }
}


# -- HTTP plumbing (netlib/http_server.py) ------------------------------------------------
def http_get(site: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 GET through the real Site and HTTPChannel, over a StringTransport."""
    site.reactor = Clock()  # the channel's timeouts, off the global reactor
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4444))
    channel.makeConnection(transport)
    channel.dataReceived(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    channel.connectionLost(Failure(ConnectionDone()))
    return int(status_line.split()[1]), headers, body


@implementer(ILogObserver)
@dataclass
class Events:
    """Log events seen while the ``events`` fixture is active."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, event: dict[str, Any]) -> None:
        self.items.append(event)

    def with_key(self, key: str) -> list[dict[str, Any]]:
        return [e for e in self.items if key in e]


@pytest.fixture
def events() -> Iterator[Events]:
    recorder = Events()
    globalLogPublisher.addObserver(recorder)
    try:
        yield recorder
    finally:
        globalLogPublisher.removeObserver(recorder)


def test_site_serves_routes_lists_them_at_root_and_404s_the_rest() -> None:
    site = make_site(
        {
            "/healthz": lambda: HttpResponse.json(200, {"status": "alive"}),
            "/readyz": lambda: HttpResponse.json(503, {"ready": False, "reason": "warming up"}),
        }
    )
    status, headers, body = http_get(site, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "alive"}
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    status, _, body = http_get(site, "/readyz")
    assert status == 503 and json.loads(body)["reason"] == "warming up"
    status, _, body = http_get(site, "/")
    assert status == 200 and json.loads(body) == {"endpoints": ["/healthz", "/readyz"]}
    status, headers, body = http_get(site, "/nope")
    assert status == 404 and headers["content-type"] == "application/json"
    assert json.loads(body)["endpoints"] == ["/healthz", "/readyz"]


def test_http_access_log_is_off_by_default_and_structured_when_on(events: Events) -> None:
    routes = {"/healthz": lambda: HttpResponse.json(200, {})}
    http_get(make_site(routes), "/healthz")
    assert events.with_key("path") == []
    http_get(make_site(routes, access_log=True), "/healthz")
    http_get(make_site(routes, access_log=True), "/missing")
    logged = [(e["method"], e["path"], e["status"], e["client"]) for e in events.with_key("path")]
    assert logged == [("GET", "/healthz", 200, "10.1.2.3"), ("GET", "/missing", 404, "10.1.2.3")]
    assert all(e["log_level"] == LogLevel.info for e in events.with_key("path"))


# -- an in-memory daemon and its service tree ---------------------------------------------
@dataclass
class Harness:
    """The daemon, its services, its clock (an in-memory reactor), runner and clients."""

    daemon: Daemon
    service: DaemonService
    clock: PortsReactor
    runner: ManualRunner
    clients: list[Client] = field(default_factory=list)

    @property
    def tcp_port(self) -> RecordingPort:
        return self.clock.ports[f"tcp:{self.daemon.config.server.tcp_port}"]

    def connect(self) -> Client:
        factory = self.daemon.factory
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
        assert isinstance(protocol, PacketProtocol)
        protocol.makeConnection(StringTransport())
        client = Client(protocol, protocol.transport)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    def settle(self) -> None:
        for _ in range(100):
            self.clock.advance(0)
            if not self.runner.run_pending():
                return

    def lose_closed_connections(self) -> None:
        """What the reactor does once a closing transport has flushed."""
        for client in self.clients:
            if client.closed and client.protocol.transport is not None:
                client.protocol.connectionLost(Failure(ConnectionDone()))


def harness(overrides: dict[str, Any] | None = None, started: bool = False) -> Harness:
    """The daemon with only moving_average; ``started``: its services started (warm, listening).

    Not started, it is marked ready with its timeout sweep running, and nothing has
    run through it yet.
    """
    data = Config().model_dump()
    for section, values in {**ONLY_MA, **(overrides or {})}.items():
        _merge(data[section], values)
    data["inference"]["gc_freeze"] = False  # never gc.freeze() the test process
    reactor = PortsReactor()
    runner = ManualRunner()
    daemon = build_daemon(parse_config(data), reactor, runner=runner)
    service = daemon_service(daemon)
    if started:
        start_in_memory(service, reactor, runner)
        assert service.ready.called and daemon.state.ready
    else:
        daemon.factory.doStart()
        daemon.state.ready = True
    return Harness(daemon, service, reactor, runner)


def test_drain_answers_every_accepted_request_refuses_new_ones_then_stops() -> None:
    h = harness(started=True)
    a, b = h.connect(), h.connect()
    for i in range(5):
        a.send(infer(i, "moving_average", MA))
        b.send(infer(100 + i, "moving_average", MA))
    assert h.daemon.pending_requests() == 10  # queued, nothing has run yet

    stopped: Deferred[None] = h.service.stopService()
    assert h.daemon.state.draining and h.daemon.not_ready_reason() is not None
    assert not h.tcp_port.listening  # the port stops accepting at once
    a.send(infer(999, "moving_average", MA))  # new work on an open connection
    a.send(pb.Envelope(request_id=1000, ping=pb.Ping()))  # still answered
    early = {r.request_id: r for r in a.replies()}
    assert early[999].error.code == ErrorCode.UNAVAILABLE
    assert early[1000].HasField("pong")
    assert not stopped.called

    h.settle()  # the queued requests run and are answered
    replies = a.replies() + b.replies()
    assert sorted(r.request_id for r in replies) == [*range(5), *range(100, 105)]
    assert all(r.HasField("infer_response") for r in replies)
    h.clock.advance(Drain.DRAIN_POLL_S)
    assert not a.closed  # nothing in flight, but the client spoke too recently
    h.clock.pump([Drain.DRAIN_POLL_S] * 3)
    assert a.closed and b.closed and not stopped.called  # closing: flushing replies
    assert h.daemon.factory.stats.closed_draining == 2
    h.lose_closed_connections()
    h.clock.advance(Drain.DRAIN_POLL_S)
    assert stopped.called


def test_drain_half_closes_a_client_that_keeps_sending_after_the_linger() -> None:
    h = harness(started=True)
    client = h.connect()
    stopped = h.service.stopService()
    for i in range(int(Drain.DRAIN_LINGER_S / Drain.DRAIN_POLL_S) - 1):
        client.send(infer(i, "moving_average", MA))  # each answered UNAVAILABLE at once
        h.clock.advance(Drain.DRAIN_POLL_S)
    assert not client.closed
    assert {r.error.code for r in client.replies()} == {ErrorCode.UNAVAILABLE}
    client.send(infer(10_000, "moving_average", MA))
    h.clock.pump([Drain.DRAIN_POLL_S] * 2)
    assert client.closed and not stopped.called
    assert client.replies()[-1].request_id == 10_000  # answered before the close


def test_drain_is_bounded_by_drain_timeout_s(events: Events) -> None:
    h = harness({"server": {"drain_timeout_s": 1.0}}, started=True)
    client = h.connect()
    client.send(infer(1, "moving_average", MA))
    h.clock.advance(0)  # the batch starts and never finishes (a stuck model)
    stopped = h.service.stopService()
    h.clock.pump([Drain.DRAIN_POLL_S] * 49)
    assert not stopped.called and not client.closed
    h.clock.pump([Drain.DRAIN_POLL_S] * 2)
    assert stopped.called  # the deadline aborts what is left
    assert client.protocol.aborted_reason == "drain_timeout_s reached"
    assert h.daemon.factory.stats.aborted_draining == 1
    (warning,) = events.with_key("pending")[1:]
    assert warning["log_level"] == LogLevel.warn and warning["pending"] == 1


def test_warm_up_loads_every_model_at_once_so_a_pool_loads_them_in_parallel() -> None:
    models = {"lstm_timeseries": {"enabled": True}, "motion_lstm": {"enabled": False}}
    h = harness({"inference": {"models": models}})
    facade = h.daemon.facade
    warmed = facade.warm_up()
    h.clock.advance(0)
    # Both first batches (which load their model) are handed to the runner together.
    assert len(h.runner.pending) == 2
    assert facade.get_cache_info().loaded == 0
    h.settle()
    assert warmed.called and facade.get_cache_info().loaded == 2
    assert all(d.loaded for d in facade.describe_models())


# -- metrics (aiServer/metrics.py) --------------------------------------------------------
def scrape(h: Harness) -> dict[str, float]:
    registry = h.daemon.metrics_registry()
    text = generate_latest(registry).decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_count_requests_batches_and_connections_at_scrape_time() -> None:
    h = harness()
    client = h.connect()
    for i in range(6):
        client.send(infer(i, "moving_average", MA))
    client.send(infer(50, "nope", MA))
    client.send(pb.Envelope(request_id=51, ping=pb.Ping()))
    h.settle()
    assert len(client.replies()) == 8
    m = scrape(h)
    assert m['inference_requests_total{model="moving_average",outcome="ok"}'] == 6
    assert m['inference_requests_total{model="other",outcome="UNKNOWN_MODEL"}'] == 1
    assert m['inference_commands_total{command="infer_request"}'] == 7
    assert m['inference_commands_total{command="ping"}'] == 1
    assert m['inference_errors_sent_total{code="UNKNOWN_MODEL"}'] == 1
    # Six requests of one tick ran as one batch of six.
    assert m['inference_batch_size_count{model="moving_average"}'] == 1
    assert m['inference_batch_size_sum{model="moving_average"}'] == 6
    assert m['inference_batch_size_bucket{le="4.0",model="moving_average"}'] == 0
    assert m['inference_batch_size_bucket{le="8.0",model="moving_average"}'] == 1
    assert m['inference_queue_wait_seconds_count{model="moving_average"}'] == 6
    assert m['inference_batch_duration_seconds_count{model="moving_average"}'] == 1
    assert m['inference_request_duration_seconds_count{model="moving_average"}'] == 6
    assert m['inference_queue_depth{model="moving_average"}'] == 0
    assert m["inference_connections_open"] == 1
    assert m["inference_connections_accepted_total"] == 1
    assert m["inference_model_cache_misses_total"] == 1
    assert m['inference_model_load_seconds{model="moving_average",version="1"}'] >= 0
    assert m['inference_version_requests_total{model="moving_average",version="1"}'] == 6
    assert m["inference_udp_datagrams_sent_total"] == 0
    assert m["inference_ready"] == 1
    assert m["process_resident_memory_bytes"] > 0
    h.daemon.state.draining = True
    assert scrape(h)["inference_ready"] == 0


def test_metric_names_follow_prometheus_conventions() -> None:
    h = harness()
    registry = make_registry(
        MetricSources(
            h.daemon.facade,
            h.daemon.dispatcher,
            h.daemon.factory,
            h.daemon.broadcaster,
            h.daemon.state,
            lambda: True,
        )
    )
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        name = family.name
        assert name.startswith(("inference_", "process_")), name
        assert name == name.lower() and family.documentation, name
        if any(word in name for word in ("duration", "_wait", "_load_", "cpu")):
            assert name.endswith("_seconds"), name
        for sample in family.samples:  # counters are exposed as <name>_total
            if family.type == "counter":
                assert sample.name == f"{name}_total", sample.name


# -- per-request log lines ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("logging", "level"),
    [
        ({}, None),  # default: the hot path does not log
        ({"level": "debug"}, LogLevel.debug),
        ({"access_log": True}, LogLevel.info),
    ],
)
def test_per_request_log_line(
    events: Events, logging: dict[str, Any], level: LogLevel | None
) -> None:
    h = harness({"logging": logging})
    client = h.connect()
    client.send(infer(7, "moving_average", MA))
    h.settle()
    assert client.replies()[0].HasField("infer_response")
    lines = events.with_key("request_id")
    if level is None:
        assert lines == []
        return
    (line,) = lines
    assert line["log_level"] == level
    assert (line["request_id"], line["model"], line["batch_size"]) == (7, "moving_average", 1)
    assert {"queue_wait_ms", "inference_ms", "total_ms"} <= set(line)
