"""The daemon's service tree (aiServer/service.py, aiServer/services/) in memory.

Built on a PortsReactor (MemoryReactorClock that records each port's listen and
stop in order) with a ManualRunner, so every step of the start-up and of the stop
is checked as it happens: nothing binds before the start, the TCP port opens only
once the warm-up and the self-check are done (never when they fail), and the stop
drains the TCP connections before the HTTP and UDP ports close.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter

from aiServer.service import DaemonService, build_daemon, daemon_service
from aiServer.services.ordered import Milestone, OrderedServices
from aiServer.startup import StartupError
from commonlib.models.lstm_timeseries import kernel_available
from factory.packet_protocol import PacketProtocol
from netlib.handoff import READY, channel_pair
from tests.service_tree import PortsReactor, drive, start_in_memory
from tests.support import Client, ManualRunner, _merge, infer
from util.config import Config, parse_config

MA = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
BASE: dict[str, Any] = {
    "inference": {
        "gc_freeze": False,  # not in the test process
        "models": {"lstm_timeseries": {"enabled": False}, "motion_lstm": {"enabled": False}},
    },
    "udp": {"targets": [{"host": "127.0.0.1", "port": 7777}]},
}
LISTENING_AT_START = ["listen udp:0", "listen tcp:9100"]  # the UDP sender, then HTTP


def tree(
    overrides: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[DaemonService, PortsReactor, ManualRunner]:
    data = Config().model_dump()
    for values in (BASE, overrides or {}):
        for section, value in values.items():
            _merge(data[section], value)
    reactor, runner = PortsReactor(), ManualRunner()
    service = daemon_service(build_daemon(parse_config(data), reactor, runner=runner), **kwargs)
    return service, reactor, runner


def warm(reactor: PortsReactor, runner: ManualRunner) -> None:
    """Run the warm-up batches (each round is scheduled once the one before is done)."""
    reactor.advance(0)
    while runner.run_pending():
        reactor.advance(0)


def connect(service: DaemonService) -> Client:
    """A client connection accepted by the daemon's factory, over a StringTransport."""
    protocol = service.daemon.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert isinstance(protocol, PacketProtocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return Client(protocol, transport)


def outcome(d: Deferred[Any]) -> Any:
    """What ``d`` fired with (a Failure, consumed), or None while it has not fired."""
    result: list[Any] = []
    d.addBoth(result.append)
    return result[0] if result else None


def test_the_children_start_in_order_and_building_them_binds_nothing() -> None:
    service, reactor, runner = tree()
    names = [child.name for child in service]
    assert names == [
        "worker-pool",
        "udp",
        "http",
        "warm-up",
        "drain",
        "self-check",
        "tcp",
        "readiness",
    ]
    assert reactor.log == [] and reactor.tcpClients == [] and runner.pending == []
    assert not any(child.running for child in service)
    assert not service.daemon.state.ready


def test_the_tcp_port_opens_only_once_warm_and_self_checked() -> None:
    service, reactor, runner = tree()
    service.startService()
    assert reactor.log == LISTENING_AT_START
    assert not service.ready.called and service.daemon.not_ready_reason() is not None

    for _ in range(20):  # the warm-up rounds, one after the other
        reactor.advance(0)
        if not runner.run_pending():
            break
        assert "listen tcp:7600" not in reactor.log
    # Warm: the self-check listens on a private loopback port and connects to it.
    assert reactor.listening() == ["udp:0", "tcp:9100", "tcp:0"]
    assert reactor.tcpServers[-1][3] == "127.0.0.1"
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 0)]
    assert not service.ready.called and not service.daemon.state.ready

    drive(reactor, runner)  # the self-check's requests are answered
    assert reactor.log == [*LISTENING_AT_START, "listen tcp:0", "stop tcp:0", "listen tcp:7600"]
    assert reactor.listening() == ["udp:0", "tcp:9100", "tcp:7600"]
    assert service.ready.called and outcome(service.ready) is None
    assert service.daemon.state.ready and service.daemon.not_ready_reason() is None
    stats = service.daemon.facade.get_queue_status()[0]
    assert stats.requests_run > 1  # warm-up batches and the self-check's request
    # Static UDP targets receive results only from now on.
    assert service.daemon.broadcaster is not None
    assert [t.port for t in service.daemon.broadcaster.targets()] == [7777]


def test_static_udp_targets_are_not_added_before_ready() -> None:
    service, reactor, runner = tree()
    service.startService()
    warm(reactor, runner)
    assert service.daemon.broadcaster is not None
    assert service.daemon.broadcaster.targets() == []


@pytest.mark.allow_logged_errors
def test_the_tcp_port_never_opens_when_the_self_check_fails() -> None:
    service, reactor, runner = tree()
    service.startService()
    warm(reactor, runner)
    assert reactor.listening()[-1] == "tcp:0"
    pump = ConnectionCompleter(reactor).succeedOnce()  # the self-check connects ...
    assert pump is not None
    pump.flush()
    reactor.advance(0)
    (_batch, answer), *_ = runner.pending  # ... and its request's batch crashes
    runner.pending.clear()
    answer.errback(RuntimeError("the model crashed"))
    pump.flush()
    failure = outcome(service.ready)
    assert isinstance(failure, Failure) and failure.check(StartupError), failure
    assert str(failure.value).startswith(
        "server.host: the start-up self-check through 127.0.0.1:0 failed: "
        "a self-check request failed:"
    )
    assert "listen tcp:7600" not in reactor.log
    assert reactor.listening() == ["udp:0", "tcp:9100"]  # the private port closed
    assert not service.daemon.state.ready
    stopped = service.stopService()
    assert stopped.called and reactor.listening() == []


@pytest.mark.allow_logged_errors
def test_the_tcp_port_never_opens_when_the_warm_up_fails(tmp_path: Any) -> None:
    missing = tmp_path / "missing.pt"
    models = {"lstm_timeseries": {"enabled": True, "settings": {"checkpoint": str(missing)}}}
    service, reactor, runner = tree({"inference": {"models": models}})
    service.startService()
    drive(reactor, runner)
    failure = outcome(service.ready)
    assert isinstance(failure, Failure), failure
    assert "settings.checkpoint" in str(failure.value)
    assert reactor.log == LISTENING_AT_START  # no self-check port, no TCP port
    assert reactor.tcpClients == []
    service.stopService()
    assert reactor.listening() == []


@pytest.mark.allow_logged_errors
def test_a_port_in_use_fails_ready_naming_its_key_and_starts_nothing_after_it() -> None:
    service, reactor, runner = tree()
    reactor.in_use.add("tcp:9100")
    service.startService()
    failure = outcome(service.ready)
    assert isinstance(failure, Failure) and failure.check(StartupError)
    assert str(failure.value) == (
        "http.port: cannot listen on 127.0.0.1:9100: Address already in use "
        "(another process holds it?)"
    )
    assert [child.name for child in service if child.running] == ["worker-pool", "udp", "http"]
    assert runner.pending == []  # no warm-up
    stopped = service.stopService()
    assert stopped.called and reactor.log == ["listen udp:0", "stop udp:0"]


def test_stop_drains_the_tcp_connections_before_closing_http_and_udp() -> None:
    service, reactor, runner = tree()
    start_in_memory(service, reactor, runner)
    started = list(reactor.log)
    client = connect(service)
    client.send(infer(1, "moving_average", MA))
    reactor.advance(0)  # the batch is queued on the runner, not run

    stopped = service.stopService()
    assert service.daemon.state.draining  # /readyz says draining at once
    assert reactor.log[len(started) :] == ["stop tcp:7600"]  # accepting nothing more
    reactor.pump([0.02] * 10)
    assert not stopped.called and reactor.listening() == ["udp:0", "tcp:9100"]

    runner.run_pending()  # the accepted request is answered ...
    reactor.pump([0.02] * 5)
    assert [r.request_id for r in client.replies()] == [1]
    assert client.closed  # ... it is half-closed, and the client closes after its EOF
    client.protocol.connectionLost(Failure(ConnectionDone()))
    reactor.pump([0.02] * 2)
    assert stopped.called
    assert reactor.log[len(started) :] == ["stop tcp:7600", "stop tcp:9100", "stop udp:0"]


def test_a_worker_tells_its_supervisor_only_once_ready_and_stops_taking_first() -> None:
    supervisor_end, worker_end = channel_pair()
    with supervisor_end, worker_end:
        service, reactor, runner = tree(worker_channel=worker_end)
        assert [child.name for child in service][-2:] == ["readiness", "handoff"]
        service.startService()
        warm(reactor, runner)
        with pytest.raises(BlockingIOError):
            supervisor_end.recv(1024)  # warm, self-check pending: not ready
        assert reactor.readers == set()  # takes no connection yet
        drive(reactor, runner)
        message = supervisor_end.recv(1024)
        assert message[:1] == READY
        assert json.loads(message[1:])["tcp"] == 7600
        assert service.ready.called and len(reactor.readers) == 1

        stopped = service.stopService()
        assert reactor.readers == set() and stopped.called


def test_sighup_reloads_only_while_ready() -> None:
    service, reactor, runner = tree()
    reload = service.reload_repository()
    assert reload.called and runner.pending == []  # warming up: ignored
    start_in_memory(service, reactor, runner)
    reload = service.reload_repository()
    drive(reactor, runner)
    assert reload.called
    service.stopService()
    assert service.reload_repository().called


def test_gc_is_frozen_after_the_models_load() -> None:
    service, reactor, runner = tree({"inference": {"gc_freeze": True}})
    try:
        service.startService()
        frozen_before = gc.get_freeze_count()
        warm(reactor, runner)
        assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()


def test_the_warm_up_logs_what_runs_each_models_forward_pass() -> None:
    service, reactor, runner = tree(
        {"inference": {"models": {"lstm_timeseries": {"enabled": True}}}}
    )
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
    try:
        service.startService()
        warm(reactor, runner)
    finally:
        globalLogPublisher.removeObserver(events.append)  # type: ignore[arg-type]
    lines = [formatEvent(e) for e in events if "forward pass" in e.get("log_format", "")]
    expected = "C kernel" if kernel_available() else "TorchScript on cpu"
    assert len(lines) == 1, lines  # moving_average has nothing to choose between
    assert lines[0].startswith(f"model lstm_timeseries version 1: forward pass on {expected}")


# -- the building blocks (aiServer/services/ordered.py) ------------------------------------
class Step(Service):
    def __init__(self, name: str, log: list[str], stop: Deferred[None] | None = None) -> None:
        self.setName(name)
        self.log = log
        self.stop_with = stop

    def startService(self) -> None:
        super().startService()
        if self.name == "broken":
            raise RuntimeError("cannot start")
        self.log.append(f"start {self.name}")

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.log.append(f"stop {self.name}")
        return self.stop_with


def test_ordered_services_stop_one_after_the_other_in_reverse() -> None:
    log: list[str] = []
    slow: Deferred[None] = Deferred()
    root = OrderedServices()
    for step in (Step("a", log), Step("b", log, slow), Step("c", log)):
        step.setServiceParent(root)
    root.startService()
    assert log == ["start a", "start b", "start c"]
    stopped = root.stopService()
    assert log[3:] == ["stop c", "stop b"] and not stopped.called  # a waits for b
    slow.callback(None)
    assert log[3:] == ["stop c", "stop b", "stop a"] and stopped.called


def test_ordered_services_start_nothing_after_a_failed_start_and_stop_what_started() -> None:
    log: list[str] = []
    root = OrderedServices()
    for step in (Step("a", log), Step("broken", log), Step("c", log)):
        step.setServiceParent(root)
    with pytest.raises(RuntimeError):
        root.startService()
    assert log == ["start a"]
    root.stopService()
    assert log == ["start a", "stop broken", "stop a"]  # never "stop c": it never started


def test_a_milestone_tells_every_waiter_once_and_a_cancelled_waiter_nothing() -> None:
    reached = Milestone("m")
    early, cancelled = reached.wait(), reached.wait()
    cancelled.cancel()
    assert isinstance(outcome(cancelled), Failure)
    reached.reach()
    reached.fail(Failure(RuntimeError("late")))  # ignored: already reached
    assert early.called and outcome(early) is None and outcome(reached.wait()) is None
    failed = Milestone("f")
    waiting = failed.wait()
    failed.fail(Failure(CancelledError()))
    assert outcome(waiting).check(CancelledError)
    assert outcome(failed.wait()).check(CancelledError) and not failed.reached
