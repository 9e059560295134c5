"""What a bot run measured: counts, latency histograms and a per-second time series.

Latencies are HDR histograms in microseconds; histograms from several bot
processes merge exactly (encode in the worker, decode and add in the parent).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US, HIGHEST_US, DIGITS = 1, 120_000_000, 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
LIVE_RUNS: list[RunStats] = []  # the newest runs, for the live progress line


def new_histogram() -> HdrHistogram:
    """An empty latency histogram (1 µs .. 120 s, 3 significant digits)."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def merge_encoded(encoded: list[str]) -> HdrHistogram:
    """One histogram holding every value of the encoded ones (exact)."""
    merged = new_histogram()
    for text in encoded:
        if text:
            merged.add(HdrHistogram.decode(text))
    return merged


def summary_ms(histogram: HdrHistogram) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in milliseconds."""
    out = {f"p{p:g}_ms": histogram.get_value_at_percentile(p) / 1000.0 for p in PERCENTILES}
    out["max_ms"] = histogram.get_max_value() / 1000.0
    out["count"] = float(histogram.get_total_count())
    return out


@dataclass
class Second:
    """One second of a run."""

    t: int
    sent: int = 0
    answered: int = 0
    errors: int = 0
    histogram: HdrHistogram = field(default_factory=new_histogram)
    target_rate: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The second as JSON-able numbers."""
        s = summary_ms(self.histogram) if self.histogram.get_total_count() else {}
        return {
            "t": self.t,
            "sent": self.sent,
            "answered": self.answered,
            "errors": self.errors,
            "target_rate": self.target_rate,
            "p50_ms": s.get("p50_ms", 0.0),
            "p99_ms": s.get("p99_ms", 0.0),
        }


@dataclass
class RunStats:
    """Counters of one run. ``sent = answered + errors + lost`` once the run has ended."""

    started: float
    sent: int = 0
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    wrong: int = 0
    retried: int = 0
    duplicates: int = 0
    histogram: HdrHistogram = field(default_factory=new_histogram)
    seconds: dict[int, Second] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        LIVE_RUNS.append(self)
        del LIVE_RUNS[:-4]

    def second(self, now: float) -> Second:
        """The time-series bucket of ``now``."""
        t = int(now - self.started)
        bucket = self.seconds.get(t)
        if bucket is None:
            bucket = self.seconds[t] = Second(t)
        return bucket

    def on_sent(self, now: float) -> None:
        """Count one request sent."""
        self.sent += 1
        self.second(now).sent += 1

    def on_answer(self, now: float, latency_s: float) -> None:
        """Count one correct answer and its latency."""
        self.answered += 1
        micros = max(1, int(latency_s * 1_000_000))
        self.histogram.record_value(micros)
        bucket = self.second(now)
        bucket.answered += 1
        bucket.histogram.record_value(micros)

    def on_error(self, now: float, code: str) -> None:
        """Count one error reply (or a wrong answer, code 'WRONG_ANSWER')."""
        self.errors[code] += 1
        self.second(now).errors += 1

    @property
    def error_count(self) -> int:
        """All errors, wrong answers included."""
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        """Counts, percentiles, encoded histogram and the time series."""
        return {
            "sent": self.sent,
            "answered": self.answered,
            "errors": dict(self.errors),
            "error_count": self.error_count,
            "lost": self.lost,
            "wrong": self.wrong,
            "retried": self.retried,
            "duplicates": self.duplicates,
            "latency": summary_ms(self.histogram),
            "histogram": self.histogram.encode().decode(),
            "series": [self.seconds[t].to_json() for t in sorted(self.seconds)],
            "notes": self.notes,
        }


def merge_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the JSON of several workers' RunStats (histograms merged exactly)."""
    merged_hist = merge_encoded([p["histogram"] for p in parts])
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    series: dict[int, dict[str, Any]] = {}
    for part in parts:
        for row in part["series"]:
            slot = series.setdefault(
                row["t"],
                {
                    "t": row["t"],
                    "sent": 0,
                    "answered": 0,
                    "errors": 0,
                    "target_rate": 0.0,
                    "p50_ms": 0.0,
                    "p99_ms": 0.0,
                },
            )
            for key in ("sent", "answered", "errors", "target_rate"):
                slot[key] += row[key]
            # Per-second percentiles cannot be merged exactly from summaries: keep the worst.
            slot["p50_ms"] = max(slot["p50_ms"], row["p50_ms"])
            slot["p99_ms"] = max(slot["p99_ms"], row["p99_ms"])
    total = {
        key: sum(p[key] for p in parts)
        for key in ("sent", "answered", "lost", "wrong", "retried", "duplicates")
    }
    return {
        **total,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "latency": summary_ms(merged_hist),
        "histogram": merged_hist.encode().decode(),
        "series": [series[t] for t in sorted(series)],
        "notes": [n for p in parts for n in p.get("notes", [])],
    }
