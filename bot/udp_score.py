"""Scores UDP broadcast delivery like a game engine would see it.

Per sending server (source address): datagrams received, lost (sequence numbers
skipped and never seen), reordered (arrived after a higher sequence number) and
duplicated (a sequence number seen twice), and the delay from the server's
timestamp to arrival. Chunked results are reassembled and counted as results, per
model, to compare with the requests the bot had answered over TCP.

Memory stays bounded on long soaks: only the gaps are remembered, not every
sequence number seen.
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
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


class UdpScorer(DatagramProtocol):
    """Listens for broadcast datagrams (protobuf or JSON) and scores them."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.wall_clock = wall_clock
        self.sources: dict[str, SequenceTracker] = {}
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
        tracker = self.sources.setdefault(source, SequenceTracker())
        if not tracker.see(seq):
            return
        record_us(self.delay, self.wall_clock() * 1e6 - ts_us)
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
        trackers = list(self.sources.values())
        results = sum(self.results.values())
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
        }
        if answered is not None:
            out["results_expected"] = answered
            out["results_missing"] = max(0, answered - results)
            # e.g. a server killed after broadcasting a result whose TCP reply was lost
            out["results_extra"] = max(0, results - answered)
        return out
