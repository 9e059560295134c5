"""Scoring character streams: was each observation's output back within two tick periods?

Every frame, each bot connection sends one Tick holding a new observation for each
of its characters (client_tick = the frame number, 1, 2, ...). An observation is
*served* by the first result (TickResult over TCP, or snapshot part over UDP) that
holds an output stepped from it or from a newer observation of the same character:
an engine interpolates from the newest output it has. Its latency is the result's
arrival time minus the observation's send time, and it is **on time** when that is
within ``deadline_s`` (two server tick periods: the interpolation buffer engines
keep). An observation replaced by a newer one before a server tick consumed it is
also counted as *coalesced* (the server's latest-wins rule).

The first frames of a run are its warm-up (``scored_from``): sent and served like
the others while the send lead settles on the server's tick, never scored.

Per connection, a :class:`ConnectionLedger` keeps only the send time of each frame
and, per character, the oldest frame not served yet: a result for frame ``c``
serves frames ``oldest .. c`` of the characters it holds, all counted with a few
numpy operations per result, never a Python object per character.

UDP snapshots carry the server tick, not the client's frame: :class:`SnapshotMatcher`
learns from each connection's TickResults which frame every server tick consumed,
and holds a snapshot part until it knows.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

from bot.histogram import HIGHEST_US, LOWEST_US, new_histogram

IdArray = npt.NDArray[np.uint32]
KEEP_TICKS = 600  # server-tick -> frame mappings kept per connection (10 s at 60 Hz)


@dataclass
class ServedCounts:
    """What one result (or a whole run) served."""

    observations: int = 0  # observations served (each character x frame)
    on_time: int = 0
    coalesced: int = 0  # served by a newer observation of the same character
    characters: int = 0  # character rows the result held (stale rows not counted)

    def add(self, other: ServedCounts) -> None:
        """Add ``other`` into these counts."""
        self.observations += other.observations
        self.on_time += other.on_time
        self.coalesced += other.coalesced
        self.characters += other.characters


def record_many(histogram: HdrHistogram, seconds: float, count: int) -> None:
    """Record ``count`` equal latencies given in seconds (clamped into range)."""
    if count > 0:
        micros = min(HIGHEST_US, max(LOWEST_US, int(seconds * 1_000_000)))
        histogram.record_value(micros, count)


class ConnectionLedger:
    """One connection's characters: frame send times and the oldest unserved frame each."""

    def __init__(
        self, first_id: int, characters: int, deadline_s: float, scored_from: int = 1
    ) -> None:
        self.first_id = first_id
        self.characters = characters
        self.deadline_s = deadline_s
        # Frames before this one are the warm-up: sent and served, never scored.
        self.scored_from = scored_from
        self.send_times: list[float] = []  # index k: frame k + 1
        self.oldest = np.ones(characters, dtype=np.int64)  # per character, 1-based frame

    @property
    def frames(self) -> int:
        """Frames sent so far."""
        return len(self.send_times)

    @property
    def scored_frames(self) -> int:
        """Frames sent so far after the warm-up."""
        return max(0, self.frames - self.scored_from + 1)

    def sent(self, now: float) -> int:
        """One frame sent at ``now``: its number (the Tick's client_tick)."""
        self.send_times.append(now)
        return len(self.send_times)

    def serve(
        self, local: npt.NDArray[np.int64], frame: int, now: float, histogram: HdrHistogram
    ) -> ServedCounts:
        """Characters ``local`` (indices into this connection) got frame ``frame``'s output.

        Records the latency of the observation each holds (``frame``'s) in
        ``histogram``, once per character served by it.
        """
        if not 1 <= frame <= self.frames or not len(local):
            return ServedCounts()
        oldest = self.oldest[local]
        fresh = oldest <= frame
        if not fresh.all():  # a result older than one already seen (UDP reordering)
            local, oldest = local[fresh], oldest[fresh]
        if not len(local):
            return ServedCounts()
        self.oldest[local] = frame + 1
        if frame < self.scored_from:
            return ServedCounts()
        scored = np.maximum(oldest, self.scored_from)
        # Frames sent at or after this time are still within the deadline.
        first_on_time = bisect.bisect_left(self.send_times, now - self.deadline_s) + 1
        covered = frame - scored + 1
        on_time = np.clip(frame - np.maximum(scored, first_on_time) + 1, 0, None)
        record_many(histogram, now - self.send_times[frame - 1], len(local))
        return ServedCounts(
            observations=int(covered.sum()),
            on_time=int(on_time.sum()),
            coalesced=int((covered - 1).sum()),
            characters=len(local),
        )

    def unserved(self) -> int:
        """Observations sent after the warm-up and never served."""
        first = np.maximum(self.oldest, self.scored_from)
        return int(np.clip(self.frames - first + 1, 0, None).sum())


@dataclass
class StreamScore:
    """Every connection's ledger, the run's served counts and latency histogram."""

    ledgers: list[ConnectionLedger]
    histogram: HdrHistogram = field(default_factory=new_histogram)
    served: ServedCounts = field(default_factory=ServedCounts)
    wrong: int = 0  # output rows of the wrong width or not finite
    unknown_rows: int = 0  # TickResult rows for characters the connection does not own
    foreign_rows: int = 0  # snapshot rows of other clients' characters (not scored)
    # Told of every result that served something: (arrival, counts, latency in seconds).
    on_served: Callable[[float, ServedCounts, float], None] | None = None

    def __post_init__(self) -> None:
        self.first_ids = np.array([ledger.first_id for ledger in self.ledgers], dtype=np.int64)

    def sent(self) -> int:
        """Observations sent by every connection after the warm-up."""
        return sum(ledger.scored_frames * ledger.characters for ledger in self.ledgers)

    def unserved(self) -> int:
        """Observations never served."""
        return sum(ledger.unserved() for ledger in self.ledgers)

    def serve(self, index: int, ids: IdArray, frame: int, now: float) -> ServedCounts:
        """Connection ``index``'s characters ``ids`` got frame ``frame``'s output at ``now``."""
        ledger = self.ledgers[index]
        local = ids.astype(np.int64) - ledger.first_id
        inside = (local >= 0) & (local < ledger.characters)
        if not inside.all():
            self.unknown_rows += int((~inside).sum())
            local = local[inside]
        counts = ledger.serve(local, frame, now, self.histogram)
        self.served.add(counts)
        if counts.characters and self.on_served is not None:
            self.on_served(now, counts, now - ledger.send_times[frame - 1])
        return counts

    def split(self, ids: IdArray) -> list[tuple[int, IdArray]]:
        """``ids`` of a snapshot grouped by owning connection, other clients' left out.

        A snapshot holds every character the tick stepped: those of the other bot
        processes and of any other client too.
        """
        wide = ids.astype(np.int64)
        owner = np.searchsorted(self.first_ids, wide, side="right") - 1
        known = owner >= 0
        if len(self.ledgers):
            last = self.ledgers[-1]
            known &= wide < last.first_id + last.characters
        if not known.all():
            self.foreign_rows += int((~known).sum())
            ids, owner = ids[known], owner[known]
        if not len(ids):
            return []
        order = np.argsort(owner, kind="stable")
        owner, ids = owner[order], ids[order]
        bounds = np.flatnonzero(owner[1:] != owner[:-1]) + 1
        return [
            (int(group_owner[0]), group_ids)
            for group_owner, group_ids in zip(
                np.split(owner, bounds), np.split(ids, bounds), strict=True
            )
        ]

    def check_rows(self, rows: npt.NDArray[np.float32], width: int) -> None:
        """Count output rows that are not ``width`` finite floats as wrong."""
        if rows.ndim != 2 or rows.shape[1] != width:
            self.wrong += len(rows)
            return
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            self.wrong += int(bad.sum())


class SnapshotMatcher:
    """Matches UDP snapshot parts to frames through the TickResults' (server tick, frame)."""

    def __init__(self, score: StreamScore) -> None:
        self.score = score
        self.frame_of: list[dict[int, int]] = [{} for _ in score.ledgers]
        self.waiting: dict[tuple[int, int], list[tuple[IdArray, float]]] = {}
        self.parts = 0
        self.unmatched = 0  # parts whose server tick no TickResult ever named

    def tick_result(self, index: int, server_tick: int, frame: int) -> None:
        """Connection ``index``'s TickResult: server tick ``server_tick`` consumed ``frame``."""
        known = self.frame_of[index]
        known[server_tick] = frame
        if len(known) > KEEP_TICKS:
            for old in [tick for tick in known if tick < server_tick - KEEP_TICKS]:
                del known[old]
        for ids, arrived in self.waiting.pop((index, server_tick), []):
            self.score.serve(index, ids, frame, arrived)

    def snapshot(self, server_tick: int, ids: IdArray, now: float) -> None:
        """Snapshot rows of ``server_tick`` (its parts gathered) holding ``ids``, at ``now``."""
        self.parts += 1
        for index, owned in self.score.split(ids):
            frame = self.frame_of[index].get(server_tick)
            if frame is None:
                self.waiting.setdefault((index, server_tick), []).append((owned, now))
            else:
                self.score.serve(index, owned, frame, now)

    def finish(self) -> None:
        """Parts still waiting never learned their frame."""
        self.unmatched += sum(len(parts) for parts in self.waiting.values())
        self.waiting.clear()


def character_ranges(characters: int, connections: int, first_id: int = 1) -> list[tuple[int, int]]:
    """(first id, count) of each connection: ``characters`` spread as evenly as possible."""
    base, extra = divmod(characters, connections)
    out = []
    next_id = first_id
    for i in range(connections):
        count = base + (1 if i < extra else 0)
        out.append((next_id, count))
        next_id += count
    return out


def summary(score: StreamScore) -> dict[str, Any]:
    """The score's counts as JSON-able numbers."""
    sent = score.sent()
    served = score.served
    return {
        "observations_sent": sent,
        "observations_served": served.observations,
        "on_time": served.on_time,
        "on_time_ratio": served.on_time / sent if sent else 0.0,
        "late": served.observations - served.on_time,
        "unserved": score.unserved(),
        "coalesced": served.coalesced,
        "wrong_rows": score.wrong,
        "unknown_rows": score.unknown_rows,
        "foreign_rows": score.foreign_rows,
    }
