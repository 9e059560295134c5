"""What a bot run measured: counts, latency histograms and a per-second time series.

Latencies are HDR histograms in microseconds (bot/histogram.py). A worker's report
carries its histograms encoded, the per-second ones included, so the parent merges
the totals *and* the time series exactly (:func:`merge_reports`).

Warm-up: answers to requests sent in the first ``warmup_s`` seconds of the load go
to a histogram of their own, so the run's latency figures (and the SLO) describe
the steady state; they are still counted. Every time-series row says how much of
its second the load covered (``span_s``): the first and last seconds of a run are
partial (``partial: true``), and a handful of replies in a partial second must not
read as that second's latency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from bot.histogram import (
    PERCENTILES,
    decode,
    encode,
    merge_encoded,
    new_histogram,
    record_seconds,
    summary_ms,
)
from bot.model_stats import ModelStats, merge_models
from commonlib.wire import pb

__all__ = [
    "LIVE_RUNS",
    "PERCENTILES",
    "RunStats",
    "Second",
    "merge_encoded",
    "merge_reports",
    "new_histogram",
    "series_row",
    "summary_ms",
]

LIVE_RUNS: list[RunStats] = []  # the runs in progress, for the live progress line
_LIVE_KEEP = 8
SEAL_AFTER_S = 2  # replies land in the current second; sent counts may be a tick late


def window_flags(
    t: int, load_from: float | None, load_to: float | None, warmup_s: float
) -> dict[str, Any]:
    """How second ``t`` (run-relative) sits in the load window [load_from, load_to].

    ``span_s``: the part of the second the load covered; ``partial`` when below one
    second; ``warmup`` when it overlaps the warm-up. Without a window the second
    counts as whole.
    """
    if load_from is None or load_to is None:
        return {"span_s": 1.0, "partial": False, "warmup": False}
    span = max(0.0, min(t + 1.0, load_to) - max(float(t), load_from))
    return {
        "span_s": round(span, 6),
        "partial": span < 1.0 - 1e-9,
        "warmup": warmup_s > 0 and t < load_from + warmup_s,
    }


def series_row(t: int, histogram: HdrHistogram, **counts: float) -> dict[str, Any]:
    """One time-series row: the counts and the second's latency percentiles."""
    s = summary_ms(histogram) if histogram.get_total_count() else {}
    row: dict[str, Any] = {"t": t, **counts}
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        row[key] = s.get(key, 0.0)
    return row


@dataclass
class Second:
    """One second of a run.

    A live HDR histogram of this range holds 18,432 counters (144 KiB), so a second
    that is over is *sealed*: its histogram is kept encoded (a few hundred bytes) and
    decoded only if a value still arrives for it. A ten-minute soak stays small.
    """

    t: int
    sent: int = 0
    answered: int = 0
    errors: int = 0
    target_rate: float = 0.0
    _histogram: HdrHistogram | None = field(default_factory=new_histogram, repr=False)
    _encoded: str = field(default="", repr=False)

    @property
    def histogram(self) -> HdrHistogram:
        """The second's latencies (decoded again if it was sealed)."""
        if self._histogram is None:
            self._histogram = decode(self._encoded)
            self._encoded = ""
        return self._histogram

    @property
    def sealed(self) -> bool:
        """Whether the histogram is held encoded."""
        return self._histogram is None

    def seal(self) -> None:
        """Keep the histogram encoded only."""
        if self._histogram is not None:
            self._encoded = encode(self._histogram)
            self._histogram = None

    def encoded(self) -> str:
        """The encoded histogram."""
        return self._encoded if self._histogram is None else encode(self._histogram)

    def to_json(self, with_histogram: bool = False) -> dict[str, Any]:
        """The second as JSON-able numbers (and its encoded histogram, for merging)."""
        histogram = self._histogram if self._histogram is not None else decode(self._encoded)
        row = series_row(
            self.t,
            histogram,
            sent=self.sent,
            answered=self.answered,
            errors=self.errors,
            target_rate=self.target_rate,
        )
        if with_histogram:
            row["histogram"] = self.encoded()
        return row


@dataclass
class RunStats:
    """Counters of one run. ``sent = answered + errors + lost`` once the run has ended.

    ``unexpected`` counts replies whose request id matched no outstanding request
    (a second answer, or an id never sent): the server must answer each request
    exactly once, so any of them fails the run like a wrong answer.
    """

    started: float
    live: bool = True  # shown on the live progress line
    warmup_s: float = 0.0
    load_from: float | None = None  # the load window, seconds after ``started``
    load_to: float | None = None
    sent: int = 0
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    wrong: int = 0
    retried: int = 0
    duplicates: int = 0
    unexpected: int = 0
    histogram: HdrHistogram = field(default_factory=new_histogram)  # after the warm-up
    warmup_histogram: HdrHistogram = field(default_factory=new_histogram)
    interval: HdrHistogram = field(default_factory=new_histogram)  # since the last progress tick
    seconds: dict[int, Second] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    models: dict[str, ModelStats] = field(default_factory=dict)  # per model of the mix
    _open: set[int] = field(default_factory=set, repr=False)  # seconds not sealed yet

    def __post_init__(self) -> None:
        if self.live:
            LIVE_RUNS.append(self)
            del LIVE_RUNS[:-_LIVE_KEEP]

    def second(self, now: float) -> Second:
        """The time-series bucket of ``now`` (opening one seals those 2 s older)."""
        t = int(now - self.started)
        bucket = self.seconds.get(t)
        if bucket is None:
            bucket = self.seconds[t] = Second(t)
            for old in [k for k in self._open if k <= t - SEAL_AFTER_S]:
                self.seconds[old].seal()
                self._open.discard(old)
            self._open.add(t)
        return bucket

    def load_started(self, now: float) -> None:
        """The load begins (connections are up): the window and the warm-up start."""
        self.load_from = now - self.started

    def load_ended(self, now: float) -> None:
        """The load ends (no new requests; replies may still come)."""
        self.load_to = now - self.started

    def in_warmup(self, sent_at: float) -> bool:
        """Whether a request sent at ``sent_at`` belongs to the warm-up."""
        if self.warmup_s <= 0:
            return False
        start = self.load_from if self.load_from is not None else 0.0
        return sent_at - self.started < start + self.warmup_s

    def model(self, name: str) -> ModelStats:
        """The figures of model ``name``."""
        stats = self.models.get(name)
        if stats is None:
            stats = self.models[name] = ModelStats()
        return stats

    def on_sent(self, now: float, model: str | None = None) -> None:
        """Count one request sent (``now`` is its scheduled time in the open loop)."""
        self.sent += 1
        self.second(now).sent += 1
        if model is not None:
            self.model(model).sent += 1

    def on_answer(
        self,
        now: float,
        latency_s: float,
        model: str | None = None,
        timings: pb.Timings | None = None,
    ) -> None:
        """Count one correct answer, its latency and (per model) the server's timings."""
        self.answered += 1
        bucket = self.second(now)
        bucket.answered += 1
        warmup = self.in_warmup(now - latency_s)
        total = self.warmup_histogram if warmup else self.histogram
        for histogram in (total, self.interval, bucket.histogram):
            record_seconds(histogram, latency_s)
        if model is not None:
            self.model(model).on_answer(latency_s, timings, steady=not warmup)

    def on_error(self, now: float, code: str, model: str | None = None) -> None:
        """Count one error reply (or a wrong answer, code 'WRONG_ANSWER')."""
        self.errors[code] += 1
        self.second(now).errors += 1
        if model is not None:
            self.model(model).errors[code] += 1

    @property
    def error_count(self) -> int:
        """All errors, wrong answers included."""
        return sum(self.errors.values())

    def absorb(self, other: RunStats) -> None:
        """Add ``other`` (a later part of the same run, e.g. a stress step) into this one."""
        self.sent += other.sent
        self.answered += other.answered
        self.errors.update(other.errors)
        self.lost += other.lost
        self.wrong += other.wrong
        self.retried += other.retried
        self.duplicates += other.duplicates
        self.unexpected += other.unexpected
        self.histogram.add(other.histogram)
        self.warmup_histogram.add(other.warmup_histogram)
        self.notes.extend(other.notes)
        for name, model in other.models.items():
            self.model(name).add(model)
        for mark, pick in (("load_from", min), ("load_to", max)):
            theirs = getattr(other, mark)
            if theirs is not None:
                theirs += other.started - self.started
                mine = getattr(self, mark)
                setattr(self, mark, theirs if mine is None else pick(mine, theirs))
        for t, second in other.seconds.items():
            mine = self.second(other.started + t)
            mine.sent += second.sent
            mine.answered += second.answered
            mine.errors += second.errors
            mine.target_rate = max(mine.target_rate, second.target_rate)
            mine.histogram.add(second.histogram)

    def to_json(self, with_histograms: bool = True) -> dict[str, Any]:
        """Counts, percentiles, the encoded histogram and the time series.

        ``with_histograms`` also encodes every second's histogram (worker reports,
        so that the parent merges the time series exactly).
        """
        return {
            "sent": self.sent,
            "answered": self.answered,
            "errors": dict(self.errors),
            "error_count": self.error_count,
            "lost": self.lost,
            "wrong": self.wrong,
            "retried": self.retried,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "latency": summary_ms(self.histogram),
            "histogram": encode(self.histogram),
            "warmup_s": self.warmup_s,
            "warmup_latency": summary_ms(self.warmup_histogram),
            "warmup_histogram": encode(self.warmup_histogram),
            "series": [
                {
                    **self.seconds[t].to_json(with_histograms),
                    **window_flags(t, self.load_from, self.load_to, self.warmup_s),
                }
                for t in sorted(self.seconds)
            ],
            "notes": self.notes,
            "models": {name: model.to_json() for name, model in sorted(self.models.items())},
        }


_COUNTS = ("sent", "answered", "lost", "wrong", "retried", "duplicates", "unexpected")


def merge_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the JSON of several workers' RunStats (histograms merged exactly).

    Time-series rows that carry their encoded histogram merge exactly; rows
    without one (old reports) keep the worst p50/p99 of the parts.
    """
    merged_hist = merge_encoded(p["histogram"] for p in parts)
    warmup_hist = merge_encoded(p.get("warmup_histogram", "") for p in parts)
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    total = {key: sum(int(p.get(key, 0)) for p in parts) for key in _COUNTS}
    return {
        **total,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "latency": summary_ms(merged_hist),
        "histogram": encode(merged_hist),
        "warmup_s": max(float(p.get("warmup_s", 0.0)) for p in parts),
        "warmup_latency": summary_ms(warmup_hist),
        "warmup_histogram": encode(warmup_hist),
        "series": merge_series(p["series"] for p in parts),
        "notes": [n for p in parts for n in p.get("notes", [])],
        "models": merge_models(parts),
    }


def merge_series(serieses: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge time series second by second (exactly where rows carry histograms)."""
    rows: dict[int, list[dict[str, Any]]] = {}
    for series in serieses:
        for row in series:
            rows.setdefault(int(row["t"]), []).append(row)
    out = []
    for t in sorted(rows):
        group = rows[t]
        counts = {
            key: sum(r.get(key, 0) for r in group)
            for key in ("sent", "answered", "errors", "target_rate")
        }
        if all("histogram" in r for r in group):
            histogram = merge_encoded(r["histogram"] for r in group)
            row = series_row(t, histogram, **counts)
            row["histogram"] = encode(histogram)
        else:
            row = {"t": t, **counts}
            for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
                row[key] = max(r.get(key, 0.0) for r in group)
        # Workers start a few ms apart: a second partial or warm-up for one is so for all.
        row["span_s"] = min(float(r.get("span_s", 1.0)) for r in group)
        row["partial"] = any(r.get("partial", False) for r in group)
        row["warmup"] = any(r.get("warmup", False) for r in group)
        out.append(row)
    return out


def strip_histograms(report: dict[str, Any]) -> dict[str, Any]:
    """The report without per-second encoded histograms (the file a person reads)."""
    out = dict(report)
    if "series" in out:
        out["series"] = [
            {k: v for k, v in row.items() if k != "histogram"} for row in out["series"]
        ]
    return out
