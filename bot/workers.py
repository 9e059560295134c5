"""``--processes N``: the parent's side of the worker bot processes.

The parent spawns N copies of the same command (``--worker i/N``), each running
its share of the clients on its own reactor and core. It starts them together
(``go`` once all are ``ready``), adds up their progress ticks for the live line,
merges each stress step exactly and sends the verdict back (:class:`StepBarrier`),
and collects their final reports for bot/merge.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from bot.errors import BotRunError
from bot.histogram import merge_encoded
from bot.progress import Tick
from bot.scenarios.stress import Ramp, knee_of, step_row

ROOT = Path(__file__).resolve().parents[1]


class StepBarrier:
    """Merges each stress step over all workers, judges it once and tells every worker."""

    def __init__(self, count: int, ramp: Ramp, send: Callable[[int, str, dict[str, Any]], None]):
        self.ramp = ramp
        self.send = send
        self.active = set(range(count))
        self.count = count
        self.rows: list[dict[str, Any]] = []
        self._parts: dict[int, dict[int, dict[str, Any]]] = {}

    def add(self, worker: int, message: dict[str, Any]) -> None:
        """One worker finished step ``message['index']``."""
        index = int(message["index"])
        self._parts.setdefault(index, {})[worker] = message
        self._maybe_decide(index)

    def worker_gone(self, worker: int) -> None:
        """A worker exited: stop waiting for it."""
        self.active.discard(worker)
        for index in sorted(self._parts):
            self._maybe_decide(index)

    def _maybe_decide(self, index: int) -> None:
        parts = self._parts.get(index)
        if parts is None or not self.active <= set(parts):
            return
        del self._parts[index]
        counts = {
            key: sum(int(p["counts"][key]) for p in parts.values())
            for key in ("sent", "answered", "errors", "lost")
        }
        histogram = merge_encoded(p["histogram"] for p in parts.values())
        rate = sum(float(p["target_rate"]) for p in parts.values())
        codes: Counter[str] = Counter()
        for part in parts.values():
            codes.update(part.get("codes", {}))
        phase = str(next(iter(parts.values())).get("phase", "ramp"))
        step_s = self.ramp.step_s if phase == "ramp" else self.ramp.refine_s
        row = step_row(index, rate, step_s, counts, histogram, self.ramp, codes, phase)
        if len(parts) < self.count:
            row["held"] = False  # a worker is missing: this step is not the fleet's
            row["broken"].append("a worker process exited")
        self.rows.append(row)
        for worker in parts:
            if worker in self.active:
                self.send(worker, "decision", {"row": row})

    @property
    def knee_rate(self) -> float:
        """The highest total rate that held (bot.scenarios.stress.knee_of)."""
        return knee_of(self.rows)


class _WorkerProcess(ProcessProtocol):
    """One worker's pipes: JSON lines out of its stdout, commands into its stdin."""

    def __init__(self, index: int, pool: WorkerPool) -> None:
        self.index = index
        self.pool = pool
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self.pool.on_message(self.index, json.loads(line))

    def send(self, kind: str, body: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(json.dumps({"type": kind, **body}).encode() + b"\n")

    def processEnded(self, reason: Failure) -> None:
        self.pool.on_exit(self.index, getattr(reason.value, "exitCode", None))


class WorkerPool:
    """Runs ``count`` worker processes of one bot command; fires with their reports."""

    def __init__(
        self,
        reactor: Any,
        argv: Sequence[str],
        count: int,
        on_tick: Callable[[Tick], None],
        ramp: Ramp | None = None,
    ) -> None:
        self.reactor = reactor
        self.argv = list(argv)
        self.count = count
        self.on_tick = on_tick
        self.barrier = StepBarrier(count, ramp, self._send) if ramp is not None else None
        self.processes: list[_WorkerProcess] = []
        self.ready: set[int] = set()
        self.reports: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.exited: set[int] = set()
        self.done: Deferred[list[dict[str, Any]]] = Deferred()

    def start(self) -> Deferred[list[dict[str, Any]]]:
        """Spawn the workers; fires with their reports in worker order."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        for index in range(self.count):
            process = _WorkerProcess(index, self)
            self.processes.append(process)
            args = [sys.executable, "-m", "bot", *self.argv, "--worker", f"{index}/{self.count}"]
            self.reactor.spawnProcess(
                process, sys.executable, args, env=env, childFDs={0: "w", 1: "r", 2: 2}
            )
        return self.done

    def _send(self, index: int, kind: str, body: dict[str, Any]) -> None:
        self.processes[index].send(kind, body)

    def on_message(self, index: int, message: dict[str, Any]) -> None:
        """Handle one line from worker ``index``."""
        kind = message["type"]
        if kind == "ready":
            self.ready.add(index)
            if len(self.ready) == self.count:
                for i in range(self.count):
                    self._send(i, "go", {})
        elif kind == "progress":
            self.on_tick(Tick.from_json(message["tick"]))
        elif kind == "step" and self.barrier is not None:
            self.barrier.add(index, message)
        elif kind == "report":
            self.reports[index] = message["report"]
        elif kind == "failed":
            self._fail(f"worker {index}: {message['error']}")

    def on_exit(self, index: int, code: int | None) -> None:
        """Worker ``index`` exited with ``code``."""
        self.exited.add(index)
        if index not in self.reports and not self.errors:
            self._fail(f"worker {index} exited with code {code} before reporting")
        if self.barrier is not None:
            self.barrier.worker_gone(index)
        if len(self.exited) == self.count:
            if self.errors:
                self.done.errback(Failure(BotRunError("; ".join(self.errors))))
            else:
                self.done.callback([self.reports[i] for i in range(self.count)])

    def _fail(self, error: str) -> None:
        """Record the first failure and stop the other workers: the run is void."""
        self.errors.append(error)
        for i, process in enumerate(self.processes):
            if i not in self.exited and process.transport is not None:
                with contextlib.suppress(OSError):  # it exited meanwhile
                    process.transport.signalProcess("TERM")
