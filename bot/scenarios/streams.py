"""streams: N characters driven as game engines drive them, one Tick per connection per frame.

The characters are spread over the connections; each connection opens its
characters' streams, then sends every frame (``hz``) one Tick holding a new
observation for each of them. Frames are phase-aligned on the server's tick:
StreamOpened gives the tick rate and the time of the next tick, and the bot sends
``lead_s`` before each tick, as netcode clients do, so that an observation waits
as little as possible before a tick steps it.

Scoring (bot/stream_score.py): an observation is on time when an output holding it
(or a newer observation of that character) arrives within two server tick periods
of its sending; over UDP (``udp_listen``) the snapshot parts count, over TCP the
TickResults. The report adds the send lead the server saw (tick time minus the
client time of the Tick it consumed), the server's own tick lag and step time from
the TickResults, UDP loss and reordering, and, with a metrics URL, the server's
missed ticks and coalesced observations.

``find_max`` searches the most characters that keep the on-time ratio (and p99):
doubling until a step breaks, then bisecting between the last good and first bad.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    FirstError,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.threads import deferToThreadPool

from bot.errors import BotRunError
from bot.histogram import encode, new_histogram, record_us, summary_ms
from bot.server_status import fetch_text
from bot.stats import RunStats
from bot.stream_client import ObservationBank, StreamConnection, StreamOpenError
from bot.stream_score import (
    ConnectionLedger,
    ServedCounts,
    SnapshotMatcher,
    StreamScore,
    character_ranges,
    record_many,
    summary,
)
from bot.udp_score import SequenceTracker, ask_receive_buffer
from bot.udp_subscription import UdpSubscriptions
from commonlib.wire import pb
from factory.tick_codec import unpack_ids, unpack_rows

TAIL_TICKS = 6  # after the last frame, server ticks to wait for the last results
ADAPT_EVERY_S = 0.25  # how often the send lead may grow
SERVER_COUNTERS = {
    "ticks_stepped": "inference_stream_ticks",
    "ticks_missed": "inference_stream_ticks_missed",
    "coalesced": "inference_stream_observations_coalesced",
}


class StreamsRefusedError(BotRunError):
    """The server refused to open the characters' streams (e.g. TOO_MANY_STREAMS)."""


@dataclass(frozen=True)
class StreamPlan:
    """Where and how hard: this process's characters, connections, frame rate and phase."""

    host: str
    port: int
    model: str
    characters: int
    connections: int
    hz: float = 60.0
    duration_s: float = 10.0
    warmup_s: float = 1.0  # frames sent before the scored duration, never scored
    lead_s: float = 0.002
    align: bool = True
    adapt_lead: bool = True
    first_id: int = 1
    udp_listen: int | None = None
    udp_host: str = "127.0.0.1"
    udp_datagram_bytes: int = 0  # the snapshot datagrams' size asked for; 0: the server's
    metrics_url: str | None = None


class SnapshotReceiver(DatagramProtocol):
    """UDP snapshot datagrams: sequence scoring per sender, whole ticks to the matcher.

    An engine applies a server tick when all ``chunk_count`` parts of its snapshot
    have come (docs/streams.md), so the parts of a tick are gathered and scored
    together when the last one arrives, at that time: one numpy pass per tick instead
    of one per datagram (a tick of 2,000 poses is 400 datagrams of 1,200 bytes). A
    tick with a lost part is scored with the parts that came when a newer tick of the
    same sender completes (or at the end of the run).
    """

    def __init__(self, run: StreamRun) -> None:
        self.run = run
        self.sources: dict[str, SequenceTracker] = {}
        self.undecodable = 0
        self.parts = 0  # snapshot datagrams of the model
        self.delay = new_histogram()
        # (sender, server tick) -> the parts' ids and outputs bytes, their output width
        # (the widest, so a part of the wrong width is caught), the last arrival.
        self._ticks: dict[tuple[str, int], tuple[list[bytes], list[bytes], int, float]] = {}

    def startProtocol(self) -> None:
        """Ask for a large receive buffer: one tick's snapshot can exceed the default."""
        ask_receive_buffer(self.transport)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        now = self.run.reactor.seconds()
        try:
            message = pb.Datagram.FromString(datagram)
        except Exception:
            self.undecodable += 1
            return
        source = f"{addr[0]}:{addr[1]}"
        tracker = self.sources.setdefault(source, SequenceTracker())
        if not tracker.see(message.sequence) or not message.HasField("snapshot"):
            return
        snapshot = message.snapshot
        if snapshot.model != self.run.plan.model:
            return
        record_us(self.delay, now * 1e6 - message.server_time_us)
        self.parts += 1
        key = (source, snapshot.server_tick)
        ids, outputs, width, _ = self._ticks.get(key) or ([], [], 1, now)
        ids.append(snapshot.ids)
        outputs.append(snapshot.outputs)
        self._ticks[key] = (ids, outputs, max(width, snapshot.output_width), now)
        if len(ids) >= max(1, message.chunk_count):
            for older in [k for k in self._ticks if k[0] == source and k[1] < key[1]]:
                self._apply(older)
            self._apply(key)

    def _apply(self, key: tuple[str, int]) -> None:
        ids_parts, output_parts, width, arrived = self._ticks.pop(key)
        ids = unpack_ids(b"".join(ids_parts))
        rows = unpack_rows(b"".join(output_parts), width)
        self.run.score.check_rows(rows, self.run.output_width)
        self.run.matcher.snapshot(key[1], ids, arrived)

    def flush(self) -> None:
        """Score the ticks still missing a part (the run is over)."""
        for key in list(self._ticks):
            self._apply(key)

    def report(self) -> dict[str, Any]:
        """Loss, reordering and duplicates over every sender; the delay distribution."""
        trackers = self.sources.values()
        return {
            "sources": len(self.sources),
            "received": sum(t.received for t in trackers),
            "lost": sum(t.lost for t in trackers),
            "reordered": sum(t.reordered for t in trackers),
            "duplicates": sum(t.duplicates for t in trackers),
            "undecodable": self.undecodable,
            "delay": summary_ms(self.delay),
            "delay_histogram": encode(self.delay),
        }


class StreamRun:
    """One run of a StreamPlan; :meth:`start` fires with its report."""

    def __init__(self, reactor: Any, plan: StreamPlan, bank: ObservationBank) -> None:
        self.reactor = reactor
        self.plan = plan
        self.bank = bank
        self.stats = RunStats(started=reactor.seconds(), warmup_s=plan.warmup_s)
        self.warmup_frames = round(plan.warmup_s * plan.hz)
        self.ranges = character_ranges(plan.characters, plan.connections, plan.first_id)
        self.connections: list[StreamConnection] = []
        self.score = StreamScore([])
        self.matcher = SnapshotMatcher(self.score)
        self.receiver: SnapshotReceiver | None = None
        self.output_width = 0
        self.tick_hz = plan.hz
        self.send_lag = new_histogram()  # how late the bot sent each frame (its own health)
        self.tick_lag = new_histogram()  # from TickResult: the server tick's start lag
        self.step_time = new_histogram()  # from TickResult: the server's step wall time
        self.leads_us: list[int] = []  # tick_time_us - client_time_us of each consumed Tick
        self.results = 0
        self.frames = 0
        self.lead_s = plan.lead_s
        self.lead_changes: list[tuple[float, float]] = []  # (seconds into the run, lead ms)
        self.missed_tick = 0  # Ticks that reached the server after the tick they were sent for
        self.ticks_judged = 0  # Ticks the TickResults accounted for (consumed or replaced)
        self._last_consumed: dict[int, int] = {}  # connection -> newest frame consumed
        self._window = [0, 0]  # this quarter second's (Ticks judged, missed their tick)

    # -- the run -------------------------------------------------------------------------
    @inlineCallbacks
    def start(self) -> Any:
        """Connect, open, send frames for the duration, wait for the tail; the report."""
        udp_port = subscriptions = None
        before = yield self._server_counters()
        try:
            if self.plan.udp_listen is not None:
                self.receiver = SnapshotReceiver(self)
                local = self.plan.udp_host in ("127.0.0.1", "localhost")
                try:
                    udp_port = self.reactor.listenUDP(
                        self.plan.udp_listen,
                        self.receiver,
                        interface="127.0.0.1" if local else "0.0.0.0",
                    )
                except CannotListenError as exc:
                    raise BotRunError(
                        f"cannot listen on UDP port {self.plan.udp_listen}: {exc}"
                    ) from None
                subscriptions = UdpSubscriptions(
                    self.reactor,
                    [(self.plan.host, self.plan.port)],
                    self.plan.udp_host,
                    self.plan.udp_listen,
                    max_datagram_bytes=self.plan.udp_datagram_bytes,
                )
                yield subscriptions.start()
            opened = yield self._open()
            yield self._drive(opened)
        finally:
            for connection in self.connections:
                if connection.transport is not None:
                    connection.transport.loseConnection()
            # Closed before the next find-max step opens its own (the server frees a
            # connection's streams when it goes).
            yield DeferredList([connection.lost for connection in self.connections])
            if subscriptions is not None:
                yield subscriptions.stop()
            if udp_port is not None:
                yield udp_port.stopListening()
        after = yield self._server_counters()
        return self._report(before, after)

    @inlineCallbacks
    def _open(self) -> Any:
        """Connect every connection and open its characters' streams; the last StreamOpened."""
        endpoint = TCP4ClientEndpoint(self.reactor, self.plan.host, self.plan.port, timeout=10)
        try:
            for index in range(self.plan.connections):
                connection = StreamConnection(index, self.reactor, self._result)
                yield connectProtocol(endpoint, connection)
                self.connections.append(connection)
        except Exception as exc:
            where = f"{self.plan.host}:{self.plan.port}"
            raise BotRunError(f"cannot connect to {where}: {exc}") from None
        try:
            replies = yield _gather(
                [
                    connection.open_streams(self.plan.model, first, count)
                    for connection, (first, count) in zip(
                        self.connections, self.ranges, strict=True
                    )
                ]
            )
        except StreamOpenError as exc:
            raise StreamsRefusedError(f"StreamOpen {self.plan.model!r} refused: {exc}") from None
        last: pb.StreamOpened = replies[-1][-1]
        self.output_width = last.output_width
        self.tick_hz = last.tick_hz or self.plan.hz
        deadline_s = 2.0 / self.tick_hz
        scored_from = self.warmup_frames + 1
        ledgers = [
            ConnectionLedger(first, count, deadline_s, scored_from) for first, count in self.ranges
        ]
        self.score = StreamScore(ledgers, on_served=self._served)
        self.matcher = SnapshotMatcher(self.score)
        return last

    def _served(self, now: float, counts: ServedCounts, latency_s: float) -> None:
        """Feed the run's counters, histograms and time series (the live line reads them)."""
        stats = self.stats
        stats.answered += counts.observations
        bucket = stats.second(now)
        bucket.answered += counts.observations
        for histogram in (stats.histogram, stats.interval, bucket.histogram):
            record_many(histogram, latency_s, counts.characters)

    def _drive(self, opened: pb.StreamOpened) -> Deferred[None]:
        """Send one frame per period, phase-aligned on the server's tick, then the tail."""
        # As the daemon does after loading its models: what exists now (the observation
        # bank, the connections) is never scanned again, which took one 29 ms full
        # collection, a missed frame for every character, out of a 2,000-character run.
        gc.collect()
        gc.freeze()
        period = 1.0 / self.plan.hz
        now = self.reactor.seconds()
        if self.plan.align:
            # Frame k goes lead_s before server tick time base + k periods.
            base = opened.next_tick_time_us / 1e6
            base += max(0, int((now + self.lead_s - base) // period) + 1) * period
        else:
            base, self.lead_s = now, 0.0
        self.stats.load_started(base - self.lead_s)
        end = base - self.lead_s + self.plan.warmup_s + self.plan.duration_s
        done: Deferred[None] = Deferred()

        def frame(index: int) -> None:
            target = base + index * period - self.lead_s
            now = self.reactor.seconds()
            if target >= end:
                self.stats.load_ended(now)
                tail = TAIL_TICKS / self.tick_hz + 0.2
                self.reactor.callLater(tail, done.callback, None)
                return
            record_us(self.send_lag, (now - target) * 1e6)
            self._send_frame(now)
            if index and index % max(1, round(self.plan.hz * ADAPT_EVERY_S)) == 0:
                self._adapt_lead(now, period)
            # An engine that fell behind sends its next frame at once, never a burst.
            upcoming = base + (index + 1) * period - self.lead_s
            self.reactor.callLater(max(0.0, upcoming - now), frame, index + 1)

        self.reactor.callLater(max(0.0, base - self.lead_s - now), frame, 0)
        return done

    def _adapt_lead(self, now: float, period: float) -> None:
        """Every quarter second: send 1 ms earlier when over 2 % of Ticks missed their tick.

        A Tick that reaches the server after the tick it was sent for waits a whole
        period for the next one; a netcode client moves its sends earlier until its
        packets arrive in time. The lead only grows (at most 3/4 of a period).
        """
        judged, missed = self._window
        self._window = [0, 0]
        if not (self.plan.align and self.plan.adapt_lead) or judged < 4:
            return
        if missed > 0.02 * judged and self.lead_s + 0.001 <= period * 0.75:
            self.lead_s += 0.001
            self.lead_changes.append((now - self.stats.started, self.lead_s * 1000))

    def _send_frame(self, now: float) -> None:
        time_us = int(now * 1_000_000)
        for connection, ledger in zip(self.connections, self.score.ledgers, strict=True):
            number = ledger.sent(now)
            rows = self.bank.rows(ledger.first_id, ledger.characters, number)
            connection.send_tick(self.plan.model, number, time_us, rows)
        self.frames += 1
        if self.frames > self.warmup_frames:
            self.stats.sent += self.plan.characters
            self.stats.second(now).sent += self.plan.characters

    def _result(self, connection: StreamConnection, result: pb.TickResult, now: float) -> None:
        self.results += 1
        record_us(self.tick_lag, max(0.0, result.tick_lag_ms) * 1000)
        record_us(self.step_time, result.step_ms * 1000)
        lead_us = result.tick_time_us - result.client_time_us
        self.leads_us.append(lead_us)
        if self.plan.align:
            self._judge_ticks(connection.index, result.client_tick, lead_us)
        ids = unpack_ids(result.ids)
        width = max(1, result.output_width)
        self.score.check_rows(unpack_rows(result.outputs, width), self.output_width)
        if self.receiver is not None:
            self.matcher.tick_result(connection.index, result.server_tick, result.client_tick)
        else:
            self.score.serve(connection.index, ids, result.client_tick, now)

    def _judge_ticks(self, index: int, frame: int, lead_us: int) -> None:
        """Count the connection's Ticks up to ``frame`` that missed the tick they were sent for.

        Sent lead_s before a tick, a Tick consumed half a period later or more came in
        after it; a frame skipped since the previous TickResult came in after its tick
        too, and was replaced by the next one before a tick consumed it (coalesced).
        """
        last = self._last_consumed.get(index, frame - 1)
        if frame <= last:
            return
        self._last_consumed[index] = frame
        late = lead_us > (self.lead_s + 0.5 / self.plan.hz) * 1e6
        missed = (frame - last - 1) + int(late)
        self.ticks_judged += frame - last
        self.missed_tick += missed
        self._window[0] += frame - last
        self._window[1] += missed

    # -- the report ----------------------------------------------------------------------
    def _report(self, before: dict[str, float] | None, after: dict[str, float] | None) -> Any:
        if self.receiver is not None:
            self.receiver.flush()
        self.matcher.finish()
        counts = summary(self.score)
        stats = self.stats
        stats.lost = counts["unserved"]
        errors: dict[str, int] = {}
        for connection in self.connections:
            for code, count in connection.errors.items():
                errors[code] = errors.get(code, 0) + count
            stats.unexpected += connection.unexpected
        stats.wrong = counts["wrong_rows"]
        leads = np.asarray(self.leads_us or [0], dtype=np.float64) / 1000.0
        report: dict[str, Any] = {
            "scenario": "streams",
            **stats.to_json(),
            "model": self.plan.model,
            "characters": self.plan.characters,
            "connections": self.plan.connections,
            "hz": self.plan.hz,
            "server_tick_hz": self.tick_hz,
            "deadline_ms": 2000.0 / self.tick_hz,
            "aligned": self.plan.align,
            "lead_ms": self.plan.lead_s * 1000 if self.plan.align else None,
            "final_lead_ms": self.lead_s * 1000 if self.plan.align else None,
            "lead_changes": self.lead_changes,
            "ticks_missing_their_tick": self.missed_tick,
            "ticks_judged": self.ticks_judged,
            "frames": self.frames,
            "warmup_frames": min(self.frames, self.warmup_frames),
            "tick_results": self.results,
            **counts,
            "stream_errors": errors,
            "closed_by_server": sum(c.closed_by_server for c in self.connections),
            "seen_lead_ms": {
                "p10": float(np.percentile(leads, 10)),
                "p50": float(np.percentile(leads, 50)),
                "p90": float(np.percentile(leads, 90)),
            },
            "send_lag": summary_ms(self.send_lag),
            "send_lag_histogram": encode(self.send_lag),
            "server_tick_lag": summary_ms(self.tick_lag),
            "server_tick_lag_histogram": encode(self.tick_lag),
            "server_step": summary_ms(self.step_time),
            "server_step_histogram": encode(self.step_time),
            "server_counters": (
                {key: after[key] - before.get(key, 0.0) for key in after}
                if before is not None and after is not None
                else None
            ),
        }
        if self.receiver is not None:
            report["udp"] = {
                **self.receiver.report(),
                "snapshot_parts": self.receiver.parts,
                "snapshot_ticks": self.matcher.parts,
                "ticks_unmatched": self.matcher.unmatched,
            }
        return report

    @inlineCallbacks
    def _server_counters(self) -> Any:
        """The server's stream counters for the model (None without a metrics URL)."""
        if self.plan.metrics_url is None:
            return None
        url, model = self.plan.metrics_url, self.plan.model
        pool = self.reactor.getThreadPool()
        try:
            text = yield deferToThreadPool(self.reactor, pool, fetch_text, url, 10.0)
        except OSError as exc:
            raise BotRunError(f"cannot read {url}: {exc}") from None
        return parse_counters(text, model)


def parse_counters(text: str, model: str) -> dict[str, float]:
    """The stream counters of ``model`` in a Prometheus text page (``_total`` or not)."""
    out: dict[str, float] = {}
    for key, name in SERVER_COUNTERS.items():
        pattern = re.compile(
            rf'^{name}(?:_total)?\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$'
        )
        for line in text.splitlines():
            match = pattern.match(line)
            if match:
                out[key] = float(match.group(1))
    return out


def _gather(waits: Sequence[Deferred[Any]]) -> Deferred[list[Any]]:
    """Every result, or the first failure itself (not wrapped in FirstError)."""
    d: Deferred[list[Any]] = gatherResults(list(waits), consumeErrors=True)

    def unwrap(failure: Any) -> Any:
        while failure.check(FirstError):  # gathers of gathers nest them
            failure = failure.value.subFailure
        return failure

    return d.addErrback(unwrap)


# -- verdicts, the search, the merge ------------------------------------------------------


def held(report: dict[str, Any], min_on_time: float, slo_p99_ms: float | None) -> bool:
    """Whether a run kept ``min_on_time`` (a fraction) on time and p99 within the SLO."""
    if report["on_time_ratio"] < min_on_time:
        return False
    return slo_p99_ms is None or report["latency"]["p99_ms"] <= slo_p99_ms


def step_row(report: dict[str, Any], ok: bool) -> dict[str, Any]:
    """One find-max step's line."""
    return {
        "characters": report["characters"],
        "on_time_ratio": report["on_time_ratio"],
        "p50_ms": report["latency"]["p50_ms"],
        "p99_ms": report["latency"]["p99_ms"],
        "send_lag_p99_ms": report["send_lag"]["p99_ms"],
        "server_tick_lag_p99_ms": report["server_tick_lag"]["p99_ms"],
        "server_step_p99_ms": report["server_step"]["p99_ms"],
        "held": ok,
    }


def next_size(good: int, bad: int | None, current: int, floor: int) -> int | None:
    """The next N to try: double until a step breaks, then bisect; None when done.

    Done when the bracket [good, bad] is narrower than 5 % of ``good`` (at least
    ``floor``, the connections: every connection holds one character or more).
    """
    if bad is None:
        return current * 2
    if bad - good <= max(floor, good // 20):
        return None
    middle = (good + bad) // 2
    return middle if middle >= floor and middle != good else None


@inlineCallbacks
def find_max(
    reactor: Any,
    plan: StreamPlan,
    bank: ObservationBank,
    min_on_time: float,
    slo_p99_ms: float | None,
    max_steps: int,
) -> Any:
    """The most characters that hold the SLO; the report of that step, with every step."""
    steps: list[dict[str, Any]] = []
    good, bad, best = 0, None, None
    size: int | None = plan.characters
    while size is not None and len(steps) < max_steps:
        try:
            report = yield StreamRun(reactor, replace(plan, characters=size), bank).start()
        except StreamsRefusedError as exc:  # too many streams for the server: not held
            steps.append({"characters": size, "held": False, "refused": str(exc)})
            bad = size if bad is None else min(bad, size)
            size = next_size(good, bad, size, plan.connections)
            continue
        ok = held(report, min_on_time, slo_p99_ms)
        steps.append(step_row(report, ok))
        if ok:
            good, best = size, report
        else:
            bad = size if bad is None else min(bad, size)
            best = best or report
        size = next_size(good, bad, size, plan.connections)
    if best is None:
        raise BotRunError(f"find-max: every step was refused ({steps[-1]['refused']})")
    return {**best, "steps": steps, "max_characters": good}


def run_streams(
    reactor: Any,
    plan: StreamPlan,
    min_on_time: float = 0.999,
    slo_p99_ms: float | None = None,
    search: bool = False,
    max_steps: int = 12,
) -> Deferred[dict[str, Any]]:
    """Run the streams scenario (``search``: find-max); fires with the report."""
    bank = ObservationBank(plan.model)
    if search:
        d: Deferred[dict[str, Any]] = find_max(
            reactor, plan, bank, min_on_time, slo_p99_ms, max_steps
        )
        return d
    return StreamRun(reactor, plan, bank).start()
