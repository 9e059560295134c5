"""Bot actions as Commands: a scenario is a list of them, run per virtual client.

Every command takes the shared :class:`Session` and :class:`RunStats`, does one
thing over the real wire protocol and returns a Deferred.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from bot.client import ConnectionLostError, Session, connect
from bot.expected import matches, moving_average_forecast
from bot.retry import RetryPolicy
from bot.stats import RunStats
from commonlib.wire import pb
from factory.client_codec import (
    infer_envelope,
    list_models_envelope,
    ping_envelope,
    request_id_field,
    subscribe_envelope,
)


@dataclass(frozen=True)
class RequestSpec:
    """One kind of inference request the bot sends, with the answer it expects."""

    model: str
    values: tuple[float, ...]
    config: dict[str, Any] = field(default_factory=dict)
    expected: tuple[float, ...] | None = None  # the exact forecast, where the bot can compute it
    expected_len: int | None = None  # how many predictions the reply must carry
    raw: bool = False  # the input as Tensor.raw_values (float32 bytes) instead of values

    def envelope(self, request_id: int) -> pb.Envelope:
        """The request as an Envelope."""
        return infer_envelope(request_id, self.model, self.values, self.config, raw=self.raw)

    @cached_property
    def _body(self) -> bytes:
        return self.envelope(0).SerializeToString()  # request_id 0 is not serialized

    def payload(self, request_id: int) -> bytes:
        """The serialized Envelope of ``envelope(request_id)``, built from a cached body.

        Protobuf fields may come in any order, so the id's field is simply prepended:
        the bot spends its CPU on sending and checking, not on re-encoding the input.
        """
        return request_id_field(request_id) + self._body


@dataclass(frozen=True)
class Payload:
    """What the requests carry (``--series-length``, ``--config``, ``--raw-values``).

    ``length`` None: 64 values (32 for lstm_timeseries). ``config`` maps a model name
    (or ``*``, every model) to settings laid over the bot's own.
    """

    length: int | None = None
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: bool = False

    def settings(self, model: str, own: dict[str, Any]) -> dict[str, Any]:
        """The bot's settings for ``model`` with the overrides laid over them."""
        return {**own, **self.config.get("*", {}), **self.config.get(model, {})}


def request_mix(
    models: Sequence[str],
    variants: int = 8,
    weights: Sequence[int] | None = None,
    payload: Payload = Payload(),
) -> list[RequestSpec]:
    """A few distinct requests per model, interleaved by ``weights`` (default 1 each).

    moving_average requests carry their expected answer (computed by the bot), the
    others the number of predictions they must return.
    """
    per_model = [_model_specs(model, variants, payload) for model in models]
    counts = list(weights) if weights is not None else [1] * len(models)
    specs: list[RequestSpec] = []
    for v in range(variants):
        for model_specs, count in zip(per_model, counts, strict=True):
            specs.extend([model_specs[v]] * count)
    return specs


def describe_payload(specs: Sequence[RequestSpec]) -> dict[str, Any]:
    """What the requests of each model carry, as sent (the report's ``payload``).

    ``config`` lists every value a setting takes over the model's requests.
    """
    out: dict[str, Any] = {}
    for spec in specs:
        entry = out.setdefault(
            spec.model,
            {"values": len(spec.values), "raw_values": spec.raw, "config": {}},
        )
        for key, value in spec.config.items():
            seen = entry["config"].setdefault(key, [])
            if value not in seen:
                seen.append(value)
    return out


def _model_specs(model: str, variants: int, payload: Payload) -> list[RequestSpec]:
    specs = []
    length = payload.length or 64
    for v in range(variants):
        values = tuple(float(((i + 1) * (v + 3) * 7919) % 97) / 10.0 for i in range(length))
        if model == "moving_average":
            own = {"forecast_steps": 5, "window_size": 5, "include_trend": v % 2 == 0}
            config = payload.settings(model, own)
            expected = _forecast(values, config)
            size = None if expected is None else len(expected)
            specs.append(RequestSpec(model, values, config, expected, size, payload.raw))
        elif model == "lstm_timeseries":
            own = {"forecast_steps": 5, "sequence_length": 10, "hidden_size": 64}
            config = payload.settings(model, own)
            series = values if payload.length else values[:32]
            steps = int(config["forecast_steps"])
            specs.append(RequestSpec(model, series, config, None, steps, payload.raw))
        else:
            config = payload.settings(model, {})
            specs.append(RequestSpec(model, values, config, raw=payload.raw))
    return specs


def _forecast(values: tuple[float, ...], config: dict[str, Any]) -> tuple[float, ...] | None:
    """The moving_average answer for ``config``; None when the server must refuse it
    (a setting of the wrong type or range: the preflight probe reports the refusal)."""
    steps, window = config["forecast_steps"], config["window_size"]
    if not (isinstance(steps, int) and isinstance(window, int)) or isinstance(steps, bool):
        return None
    if not (1 <= steps <= 256 and 1 <= window <= min(4096, len(values))):
        return None
    if not isinstance(config["include_trend"], bool):
        return None
    return tuple(moving_average_forecast(values, steps, window, config["include_trend"]))


def judge(spec: RequestSpec, request_id: int, reply: pb.Envelope) -> str:
    """'ok', the error code's name, or 'WRONG_ANSWER' (wrong id, model or values)."""
    if reply.request_id != request_id:
        return "WRONG_ANSWER"
    if reply.HasField("error"):
        return pb.ErrorCode.Name(reply.error.code).removeprefix("ERROR_CODE_")
    if not reply.HasField("infer_response") or reply.infer_response.model != spec.model:
        return "WRONG_ANSWER"
    predictions = reply.infer_response.predictions
    if spec.expected is not None and not matches(predictions, spec.expected):
        return "WRONG_ANSWER"
    if spec.expected_len is not None and (
        len(predictions) != spec.expected_len or not all(map(math.isfinite, predictions))
    ):
        return "WRONG_ANSWER"
    return "ok"


class BotCommand(ABC):
    """One bot action."""

    name = ""

    @abstractmethod
    def execute(self, session: Session, stats: RunStats) -> Deferred[Any]:
        """Do it; the Deferred fires when done."""


class Connect(BotCommand):
    """Open the session's TCP connection."""

    name = "connect"

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout

    def execute(self, session: Session, stats: RunStats) -> Deferred[Any]:
        """Connect, keep the protocol on the session; fires with the connect time (s)."""
        started: float = session.reactor.seconds()
        d = connect(session.reactor, session.host, session.port, timeout=self.timeout)

        def connected(protocol: Any) -> float:
            session.protocol = protocol
            now: float = session.reactor.seconds()
            session.connected_at = now
            return now - started

        return d.addCallback(connected)


class SendInference(BotCommand):
    """Send one request and check its reply (id, model, and values where known)."""

    name = "infer"

    def __init__(self, spec: RequestSpec, retry: RetryPolicy | None = None) -> None:
        self.spec = spec
        self.retry = retry

    def execute(self, session: Session, stats: RunStats) -> Deferred[Any]:
        """Send, wait, judge, count; fires with the verdict ('ok' or the error code).

        BUSY and DEADLINE_EXCEEDED mean "not run, retry later" (docs/protocol.md):
        with a ``retry`` policy the request is sent again, with a new id, after an
        exponential backoff with jitter (bot/retry.py).
        """
        assert session.protocol is not None, "Connect first"
        clock = session.reactor
        sent = clock.seconds()
        stats.on_sent(sent, self.spec.model)
        return self._attempt(session, stats, sent, attempt=0)

    def _attempt(
        self, session: Session, stats: RunStats, sent: float, attempt: int
    ) -> Deferred[Any]:
        clock = session.reactor
        if session.protocol is None or not session.connected:
            stats.lost += 1  # the connection went away during a retry pause
            return succeed("LOST")
        request_id = session.next_id()
        d = session.protocol.send_request(request_id, self.spec.payload(request_id))

        def answered(reply: pb.Envelope) -> Any:
            now = clock.seconds()
            verdict = judge(self.spec, request_id, reply)
            pause = self.retry.pause(verdict, attempt, now - sent) if self.retry else None
            if pause is not None:
                stats.retried += 1
                return deferLater(clock, pause, self._attempt, session, stats, sent, attempt + 1)
            if verdict == "ok":
                stats.on_answer(now, now - sent, self.spec.model, reply.infer_response.timings)
            else:
                if verdict == "WRONG_ANSWER":
                    stats.wrong += 1
                stats.on_error(now, verdict, self.spec.model)
            return verdict

        def lost(failure: Failure) -> str:
            failure.trap(ConnectionLostError)
            stats.lost += 1
            return "LOST"

        return d.addCallbacks(answered, lost)


class SubscribeRefusedError(Exception):
    """The server answered Subscribe with an error."""


class Subscribe(BotCommand):
    """Ask the server to broadcast results to a UDP listener (sent again, it renews the lease)."""

    name = "subscribe"

    def __init__(
        self,
        host: str,
        port: int,
        json_encoding: bool = False,
        models: Sequence[str] = (),
        max_datagram_bytes: int = 0,
    ) -> None:
        self.host, self.port, self.json_encoding = host, port, json_encoding
        self.models = tuple(models)
        self.max_datagram_bytes = max_datagram_bytes  # 0: the server's default

    def execute(self, session: Session, stats: RunStats) -> Deferred[Any]:
        """Subscribe; fires with the SubscribeAck, fails with SubscribeRefusedError."""
        assert session.protocol is not None, "Connect first"
        envelope = subscribe_envelope(
            session.next_id(),
            self.port,
            self.host,
            self.models,
            pb.ENCODING_JSON if self.json_encoding else pb.ENCODING_PROTOBUF,
            self.max_datagram_bytes,
        )

        def check(reply: pb.Envelope) -> pb.SubscribeAck:
            if not reply.HasField("subscribe_ack"):
                code = pb.ErrorCode.Name(reply.error.code)
                raise SubscribeRefusedError(f"{code}: {reply.error.message}")
            return reply.subscribe_ack

        return session.protocol.request(envelope).addCallback(check)


class Ping(BotCommand):
    """A round trip (the bot's handshake)."""

    name = "ping"

    def execute(self, session: Session, stats: RunStats) -> Deferred[Any]:
        """Ping and record nothing but success."""
        assert session.protocol is not None, "Connect first"
        envelope = ping_envelope(session.next_id())
        return session.protocol.request(envelope)


class ServerRefusedError(Exception):
    """The server answered a bot command with an error."""


class ListModels(BotCommand):
    """Ask the server which models it serves."""

    name = "list_models"

    def execute(self, session: Session, stats: RunStats) -> Deferred[Any]:
        """Fires with the served model names; fails with ServerRefusedError."""
        assert session.protocol is not None, "Connect first"
        envelope = list_models_envelope(session.next_id())

        def names(reply: pb.Envelope) -> list[str]:
            if not reply.HasField("model_list"):
                code = pb.ErrorCode.Name(reply.error.code)
                raise ServerRefusedError(f"{code}: {reply.error.message}")
            # One entry per served version: each name once, in order.
            return list(dict.fromkeys(model.name for model in reply.model_list.models))

        return session.protocol.request(envelope).addCallback(names)


class Disconnect(BotCommand):
    """Close the connection."""

    name = "disconnect"

    def __init__(self, abort: bool = False) -> None:
        self.abort = abort

    def execute(self, session: Session, stats: RunStats) -> Deferred[Any]:
        """Close (``abort``: without flushing) and wait for the close.

        Replies that matched no request on this connection are added to
        ``stats.unexpected``.
        """
        if session.protocol is None:
            return succeed(None)
        protocol, session.protocol = session.protocol, None
        stats.unexpected += protocol.unexpected
        protocol.close(self.abort)
        return protocol.closed


def run_script(
    commands: Sequence[BotCommand], session: Session, stats: RunStats
) -> Deferred[list[Any]]:
    """Run ``commands`` one after another on ``session``; fires with their results."""
    results: list[Any] = []
    d: Deferred[Any] = succeed(None)

    def step(_: object, command: BotCommand) -> Deferred[Any]:
        return command.execute(session, stats).addCallback(results.append)

    for command in commands:
        d.addCallback(step, command)
    return d.addCallback(lambda _: results)
