"""Scores UDP broadcast delivery like a game engine would see it.

Per sending server (source address): datagrams received, lost (sequence numbers
skipped and never seen), reordered (arrived after a higher sequence number) and
duplicated (a sequence number seen twice), the delay from the server's timestamp
to arrival, and the interarrival jitter of RFC 3550 (section 6.4.1): with
``D = (R_j - R_i) - (S_j - S_i)`` for consecutive datagrams (R arrival, S the
server's timestamp), ``J += (|D| - J) / 16``. Every server is scored apart
(``per_source``) as well as in total, with a per-second series for the plot.
Chunked results are reassembled and counted as results, per model, to compare
with the requests the bot had answered over TCP.

Memory stays bounded on long soaks: only the gaps are remembered, not every
sequence number seen.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from hdrh.histogram import HdrHistogram
from twisted.internet.protocol import DatagramProtocol

from bot.histogram import new_histogram, record_us, summary_ms
from commonlib.wire import pb

MAX_GAP = 1_000_000  # a jump larger than this is counted lost without remembering each number
MAX_PARTIAL = 4096  # chunked results being reassembled at once, per scorer


@dataclass
class SequenceTracker:
    """Received / lost / reordered / duplicated from one source's sequence numbers."""

    highest: int = 0
    received: int = 0
    reordered: int = 0
    duplicates: int = 0
    missing: set[int] = field(default_factory=set)
    unrecoverable: int = 0  # skipped in jumps larger than MAX_GAP

    def see(self, seq: int) -> bool:
        """Score ``seq``; False when it is a duplicate."""
        self.received += 1
        if seq > self.highest:
            gap = seq - self.highest - 1
            if gap > MAX_GAP:
                self.unrecoverable += gap
            else:
                self.missing.update(range(self.highest + 1, seq))
            self.highest = seq
            return True
        if seq in self.missing:
            self.missing.discard(seq)
            self.reordered += 1
            return True
        self.duplicates += 1
        return False

    @property
    def lost(self) -> int:
        """Sequence numbers below the highest one never seen."""
        return len(self.missing) + self.unrecoverable


@dataclass
class SourceScore:
    """One sending server: its sequence tracker, delay, jitter and per-second series."""

    tracker: SequenceTracker = field(default_factory=SequenceTracker)
    delay: HdrHistogram = field(default_factory=new_histogram)
    jitter_us: float = 0.0  # RFC 3550 J, in microseconds
    jitter_max_us: float = 0.0
    _transit_us: float | None = None
    # second -> [received, lost (net: a gap adds, a late fill subtracts), jitter (ms) at its end]
    series: dict[int, list[float]] = field(default_factory=dict)

    def see(self, seq: int, transit_us: float, second: int) -> bool:
        """Score one datagram; False when it is a duplicate."""
        tracker = self.tracker
        lost_before = tracker.lost
        fresh = tracker.see(seq)
        row = self.series.setdefault(second, [0, 0, 0.0])
        row[0] += 1
        row[1] += tracker.lost - lost_before
        if fresh:
            record_us(self.delay, transit_us)
            if self._transit_us is not None:
                d = abs(transit_us - self._transit_us)
                self.jitter_us += (d - self.jitter_us) / 16.0
                self.jitter_max_us = max(self.jitter_max_us, self.jitter_us)
            self._transit_us = transit_us
        row[2] = self.jitter_us / 1000.0
        return fresh

    def report(self) -> dict[str, Any]:
        """This source's scores."""
        t = self.tracker
        return {
            "received": t.received,
            "lost": t.lost,
            "reordered": t.reordered,
            "duplicates": t.duplicates,
            "loss_rate": loss_rate(t.received - t.duplicates, t.lost),
            "jitter_ms": self.jitter_us / 1000.0,
            "jitter_max_ms": self.jitter_max_us / 1000.0,
            "delay": summary_ms(self.delay),
            "series": [
                {"t": second, "received": int(r), "lost": int(lost), "jitter_ms": jitter}
                for second, (r, lost, jitter) in sorted(self.series.items())
            ],
        }


def loss_rate(received: int, lost: int) -> float:
    """Lost datagrams over those sent (received once + lost)."""
    return lost / (received + lost) if received + lost else 0.0


def udp_loss_clause(udp: dict[str, Any], max_loss: float) -> tuple[bool, str]:
    """Whether the UDP loss rate (lost / sent datagrams) is within ``max_loss``, and the
    clause the verdict lists."""
    rate = loss_rate(udp["received"] - udp["duplicates"], udp["lost"])
    held = rate <= max_loss
    return held, (
        f"UDP loss {rate:.3%} {'<=' if held else '>'} {max_loss:.3%} ({udp['lost']:,} of "
        f"{udp['received'] - udp['duplicates'] + udp['lost']:,} datagrams)"
    )


def udp_loss_check(udp: dict[str, Any], max_loss: float | None) -> list[str]:
    """The broken clause when the UDP loss rate is above ``max_loss`` (a fraction)."""
    if max_loss is None:
        return []
    held, clause = udp_loss_clause(udp, max_loss)
    return [] if held else [clause]


RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


def ask_receive_buffer(transport: object, size: int = RECEIVE_BUFFER_BYTES) -> None:
    """Ask for a large UDP receive buffer: a busy bot reads late, and the kernel drops.

    The kernel caps it at net.core.rmem_max (4 MiB here; 208 KiB is the default,
    less than one tick's snapshot of 2,000 poses: 400 datagrams, 480 kB).
    """
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class UdpScorer(DatagramProtocol):
    """Listens for broadcast datagrams (protobuf or JSON) and scores them."""

    def startProtocol(self) -> None:
        """Ask for a large receive buffer (:func:`ask_receive_buffer`)."""
        ask_receive_buffer(self.transport)

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.wall_clock = wall_clock
        self.started = wall_clock()
        self.sources: dict[str, SourceScore] = {}
        self.undecodable = 0
        self.results: Counter[str] = Counter()
        self.incomplete = 0
        self.delay = new_histogram()
        self._partial: OrderedDict[tuple[str, int], dict[int, bytes]] = OrderedDict()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Score one datagram."""
        source = f"{addr[0]}:{addr[1]}"
        try:
            if datagram[:1] == b"{":
                message = json.loads(datagram)
                seq, ts_us = int(message["seq"]), int(message["ts_us"])
                index, count = int(message["chunk"]), int(message["chunks"])
                body = (
                    json.dumps(message["result"]).encode()
                    if "result" in message
                    else str(message["part"]).encode()
                )
            else:
                parsed = pb.Datagram.FromString(datagram)
                seq, ts_us = parsed.sequence, parsed.server_time_us
                index, count, body = parsed.chunk_index, parsed.chunk_count, parsed.payload
        except (ValueError, KeyError, TypeError, DecodeError):
            self.undecodable += 1
            return
        score = self.sources.setdefault(source, SourceScore())
        now = self.wall_clock()
        transit_us = now * 1e6 - ts_us
        if not score.see(seq, transit_us, int(now - self.started)):
            return
        record_us(self.delay, transit_us)
        self._collect(source, seq - index, index, max(1, count), body, datagram[:1] == b"{")

    def _collect(
        self, source: str, first: int, index: int, count: int, body: bytes, is_json: bool
    ) -> None:
        if count == 1:
            self._result(body, is_json)
            return
        key = (source, first)
        parts = self._partial.setdefault(key, {})
        parts[index] = body
        if len(parts) == count:
            del self._partial[key]
            self._result(b"".join(parts[i] for i in range(count)), is_json)
        elif len(self._partial) > MAX_PARTIAL:
            self._partial.popitem(last=False)
            self.incomplete += 1

    def _result(self, payload: bytes, is_json: bool) -> None:
        try:
            if is_json:
                model = str(json.loads(payload)["model"])
            else:
                model = pb.BroadcastResult.FromString(payload).result.model
        except (ValueError, KeyError, TypeError, DecodeError):
            self.undecodable += 1
            return
        self.results[model] += 1

    def report(self, answered: int | None = None) -> dict[str, Any]:
        """The scores; with ``answered`` (results the bot got over TCP), the missing results.

        ``results_missing`` is exact only when the bot is the server's only client
        (every answered request is broadcast once to each subscriber).
        """
        trackers = [score.tracker for score in self.sources.values()]
        results = sum(self.results.values())
        per_source = {source: score.report() for source, score in self.sources.items()}
        out: dict[str, Any] = {
            "sources": len(trackers),
            "received": sum(t.received for t in trackers),
            "lost": sum(t.lost for t in trackers),
            "reordered": sum(t.reordered for t in trackers),
            "duplicates": sum(t.duplicates for t in trackers),
            "undecodable": self.undecodable,
            "results": results,
            "results_by_model": dict(self.results),
            "incomplete_results": self.incomplete + len(self._partial),
            "delay": summary_ms(self.delay),
            "jitter_ms": max((p["jitter_ms"] for p in per_source.values()), default=0.0),
            "per_source": per_source,
        }
        if answered is not None:
            out["results_expected"] = answered
            out["results_missing"] = max(0, answered - results)
            # e.g. a server killed after broadcasting a result whose TCP reply was lost
            out["results_extra"] = max(0, results - answered)
        return out
