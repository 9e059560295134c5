"""Start-up failures: a daemon that cannot serve exits at once, naming the key to fix.

Real ``python -m aiServer`` subprocesses (ports held by the test, bad model
settings, a missing checkpoint), and the self-check against real loopback
servers that drop the connection or never answer.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from aiServer.facade import model_specs
from aiServer.self_check import SelfCheckFailed, self_check, self_check_requests
from commonlib.models.base import InputSchema
from commonlib.models.registry import model_factory
from commonlib.wire import pb
from factory.client_codec import frame_payload
from tests.support import make_app
from util.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[1]
EXIT_BOUND_S = 30.0
"""A failing daemon must have exited by now (it imports torch first: a few seconds)."""


@dataclass
class Exited:
    code: int
    output: str
    seconds: float


def start_and_wait(tmp_path: Path, config: dict[str, Any], *args: str) -> Exited:
    """Run the daemon with ``config`` (port 0 unless the config says otherwise) to its exit."""
    config = {"http": {"port": 0}, **config}
    config.setdefault("server", {}).setdefault("tcp_port", 0)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "aiServer", "--config", str(path), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=EXIT_BOUND_S,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"the daemon was still running after {EXIT_BOUND_S} s:\n{out}")
    return Exited(result.returncode, result.stdout + result.stderr, time.monotonic() - started)


@contextmanager
def held_port() -> Iterator[int]:
    """A loopback TCP port another socket is listening on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def lstm_settings(**settings: object) -> dict[str, Any]:
    return {"inference": {"models": {"lstm_timeseries": {"settings": settings}}}}


# -- ports in use -----------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_http_port_in_use_exits_naming_http_port(tmp_path: Path, workers: int) -> None:
    with held_port() as port:
        result = start_and_wait(
            tmp_path, {"http": {"port": port}, "server": {"tcp_port": 0, "workers": workers}}
        )
    assert result.code == 1, result.output
    assert f"http.port: cannot listen on 127.0.0.1:{port}: Address already in use" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("workers", [1, 2])
def test_tcp_port_in_use_exits_naming_server_tcp_port(tmp_path: Path, workers: int) -> None:
    with held_port() as port:
        result = start_and_wait(tmp_path, {"server": {"tcp_port": port, "workers": workers}})
    assert result.code == 1, result.output
    message = f"server.tcp_port: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert message in result.output
    assert "Traceback" not in result.output


def test_udp_port_in_use_exits_naming_udp_bind_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        result = start_and_wait(tmp_path, {"udp": {"bind_host": "127.0.0.1", "bind_port": port}})
    assert result.code == 1, result.output
    assert f"udp.bind_port: cannot listen on 127.0.0.1:{port}: Address already in use" in (
        result.output
    )


# -- models that cannot serve -----------------------------------------------------------
def test_hidden_size_not_matching_the_checkpoint_names_the_key_and_both_sizes(
    tmp_path: Path,
) -> None:
    checkpoint = "models/lstm_timeseries/1/weights.pt"  # a file: no repository
    result = start_and_wait(tmp_path, lstm_settings(checkpoint=checkpoint, hidden_size=32))
    assert result.code == 1, result.output
    assert "inference.models.lstm_timeseries.settings.hidden_size: checkpoint " in result.output
    assert "has hidden size 64 but the lstm_timeseries hidden_size setting is 32" in result.output
    assert "Traceback" not in result.output


def test_a_setting_disagreeing_with_the_repository_version_names_both(tmp_path: Path) -> None:
    result = start_and_wait(tmp_path, lstm_settings(hidden_size=32))
    assert result.code == 2, result.output
    manifest = ROOT / "models" / "lstm_timeseries" / "1" / "manifest.json"
    assert (
        f"inference.models.lstm_timeseries.settings.hidden_size: {manifest}: settings."
        "hidden_size is 64 here but the config sets hidden_size: 32" in result.output
    )
    assert "Traceback" not in result.output


def test_missing_checkpoint_names_the_key_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    result = start_and_wait(tmp_path, lstm_settings(checkpoint=str(missing)))
    assert result.code == 1, result.output
    key = "inference.models.lstm_timeseries.settings.checkpoint"
    assert f"{key}: lstm_timeseries checkpoint {missing} not found" in result.output
    assert "Traceback" not in result.output


# -- configuration errors: exit status 2 ----------------------------------------------
@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            lstm_settings(checkpont="models/lstm_timeseries.pt"),
            "inference.models.lstm_timeseries.settings.checkpont: unknown key",
        ),
        (
            lstm_settings(hidden_size="64"),
            "inference.models.lstm_timeseries.settings.hidden_size: Input should be a valid "
            "integer",
        ),
        (
            {"inference": {"models": {"moving_average": {"settings": {"window": 3}}}}},
            "inference.models.moving_average.settings.window: unknown key",
        ),
        (
            {
                "inference": {
                    "models": {
                        "moving_average": {"enabled": False},
                        "lstm_timeseries": {"enabled": False},
                    }
                }
            },
            "inference.models: no model is enabled",
        ),
    ],
)
def test_configuration_errors_exit_2_naming_the_key(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    result = start_and_wait(tmp_path, config)
    assert result.code == 2, result.output
    assert "configuration error" in result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_workers_configuration_error_stops_the_supervisor_before_any_worker(
    tmp_path: Path,
) -> None:
    config = lstm_settings(hidden_sise=64)
    config["server"] = {"workers": 2}
    result = start_and_wait(tmp_path, config)
    assert result.code == 2, result.output
    assert "inference.models.lstm_timeseries.settings.hidden_sise: unknown key" in result.output
    assert "starting 2 workers" not in result.output
    assert "restarting" not in result.output


def test_model_settings_are_checked_where_the_daemon_builds_its_models() -> None:
    config = parse_config(lstm_settings(hidden_size=0, extra=1))
    with pytest.raises(ConfigError) as caught:
        model_specs(config.inference, model_factory)
    text = str(caught.value)
    assert caught.value.path == "inference.models.lstm_timeseries.settings.hidden_size"
    assert "settings.hidden_size: Input should be greater than or equal to 1" in text
    assert "settings.extra: unknown key" in text
    bad_name = parse_config({"inference": {"models": {"nope": {}}}})
    with pytest.raises(ConfigError, match="no such model is registered") as caught:
        model_specs(bad_name.inference, model_factory)
    assert caught.value.path == "inference.models.nope"


def test_all_models_disabled_is_a_config_error() -> None:
    models = {name: {"enabled": False} for name in ("moving_average", "lstm_timeseries")}
    with pytest.raises(ConfigError, match="no model is enabled") as caught:
        parse_config({"inference": {"models": models}})
    assert caught.value.path == "inference.models"
    with pytest.raises(ConfigError, match="no model is enabled"):
        parse_config({"inference": {"models": {}}})


def test_input_schema_says_every_accepted_shape() -> None:
    shape = InputSchema().describe()["shape"]
    assert "[n]" in shape and "[n, 1]" in shape and "empty" in shape


# -- the self-check never hangs ---------------------------------------------------------
class _Dropper(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class _Silent(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


class _Garbler(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame_payload(b"\xff\xff\xff"))  # not an Envelope


def _self_check_against(server: type[Protocol], timeout: float) -> tuple[Failure, float]:
    """Run the self-check against a real loopback ``server``; its failure and duration."""
    reactor = SelectReactor()
    port = reactor.listenTCP(0, Factory.forProtocol(server), interface="127.0.0.1")
    outcome: list[Any] = []
    requests = [pb.Envelope(request_id=1, ping=pb.Ping())]
    started = time.monotonic()

    def go() -> None:
        check: Deferred[None] = self_check(
            reactor, "127.0.0.1", port.getHost().port, requests, timeout
        )
        check.addBoth(outcome.append).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    guard = reactor.callLater(30, reactor.stop)
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    port.stopListening()
    (result,) = outcome
    assert isinstance(result, Failure), result
    return result, time.monotonic() - started


def test_self_check_fails_when_the_connection_drops() -> None:
    failure, seconds = _self_check_against(_Dropper, timeout=20.0)
    assert failure.check(SelfCheckFailed)
    assert "closed the connection before replying" in failure.getErrorMessage()
    assert seconds < 10  # at once, not at the timeout


def test_self_check_fails_when_no_reply_comes() -> None:
    failure, seconds = _self_check_against(_Silent, timeout=0.5)
    assert failure.check(SelfCheckFailed)
    assert "no reply within 0.5 s (0 of 1)" in failure.getErrorMessage()
    assert 0.4 < seconds < 10


def test_self_check_fails_naming_a_connection_that_never_completes() -> None:
    reactor = MemoryReactorClock()  # records the connect, never completes it
    outcome: list[Any] = []
    requests = [pb.Envelope(request_id=1, ping=pb.Ping())]
    self_check(reactor, "127.0.0.1", 7600, requests, 2.0).addBoth(outcome.append)
    assert reactor.tcpClients and outcome == []
    reactor.advance(2.0)
    (failure,) = outcome
    assert isinstance(failure, Failure) and failure.check(SelfCheckFailed), failure
    assert "could not connect within 2 s" in failure.getErrorMessage()


def test_self_check_fails_naming_a_reply_it_cannot_read() -> None:
    failure, seconds = _self_check_against(_Garbler, timeout=20.0)
    assert failure.check(SelfCheckFailed)
    message = failure.getErrorMessage()
    assert "the server sent a frame the check cannot read" in message
    assert "a frame of 3 bytes is not a valid Envelope" in message
    assert seconds < 10  # at once, not at the timeout


def test_self_check_requests_bypass_the_cache_and_each_model_serves_its_own() -> None:
    app = make_app()
    requests = self_check_requests(app.facade.warmup_requests())
    assert [r.request_id for r in requests] == list(range(1, len(requests) + 1))
    assert requests[0].WhichOneof("body") == "ping"
    served = {r.infer_request.model for r in requests[1:]}
    assert served == set(app.facade.model_names())
    assert all(r.infer_request.cache == pb.CACHE_MODE_BYPASS for r in requests[1:])
    client = app.connect()
    for request in requests:
        client.send(request)
    app.settle()
    replies = client.replies()
    assert sorted(r.request_id for r in replies) == [r.request_id for r in requests]
    assert [r.error.message for r in replies if r.HasField("error")] == []
