"""The worker's side of the pipe to its parent bot process: JSON lines on stdin/stdout.

Worker to parent: ``ready`` (started), ``progress`` (a Tick every second),
``step`` (a stress step's counts and encoded histogram), ``report`` (the final
report, histograms encoded) or ``failed``. Parent to worker: ``go`` (all workers
are ready: start now) and ``decision`` (the merged verdict of a stress step).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from bot.errors import BotRunError
from bot.histogram import encode
from bot.scenarios.stress import step_codes, step_counts
from bot.stats import RunStats


class WorkerChannel(LineReceiver):
    """JSON messages to and from the parent over the worker's stdin and stdout."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self._waiting: dict[str, Deferred[dict[str, Any]]] = {}
        self._inbox: dict[str, list[dict[str, Any]]] = {}
        self.closed: Deferred[None] = Deferred()

    def send(self, kind: str, **body: Any) -> None:
        """Write one message."""
        self.sendLine(json.dumps({"type": kind, **body}).encode())

    def expect(self, kind: str) -> Deferred[dict[str, Any]]:
        """The next message of ``kind`` from the parent."""
        queued = self._inbox.get(kind)
        d: Deferred[dict[str, Any]] = Deferred()
        if queued:
            d.callback(queued.pop(0))
        else:
            self._waiting[kind] = d
        return d

    def lineReceived(self, line: bytes) -> None:
        message = json.loads(line)
        kind = str(message["type"])
        waiting = self._waiting.pop(kind, None)
        if waiting is not None:
            waiting.callback(message)
        else:
            self._inbox.setdefault(kind, []).append(message)

    def finish(self) -> Deferred[None]:
        """Flush what was sent and close; fires once closed."""
        if self.transport is not None:
            self.transport.loseConnection()
        return self.closed

    def connectionLost(self, reason: Failure | None = None) -> None:
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(Failure(BotRunError("the parent bot process went away")))
        if not self.closed.called:
            self.closed.callback(None)


class WorkerGate:
    """A stress StepGate that lets the parent judge the merged step."""

    def __init__(self, channel: WorkerChannel) -> None:
        self.channel = channel

    def judge(
        self, index: int, target_rate: float, stats: RunStats, phase: str = "ramp"
    ) -> Deferred[dict[str, Any]]:
        """Send the step; fires with the parent's merged row."""
        self.channel.send(
            "step",
            index=index,
            target_rate=target_rate,
            counts=step_counts(stats),
            codes=step_codes(stats),
            phase=phase,
            histogram=encode(stats.histogram),
        )
        return self.channel.expect("decision").addCallback(lambda m: dict(m["row"]))
