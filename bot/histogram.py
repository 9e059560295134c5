"""HDR latency histograms in microseconds, and their exact merge across bot processes.

A worker process encodes its histograms (HdrHistogram's compressed base64 text);
the parent decodes and adds them. Histograms with the same range and precision add
bucket by bucket, so the merge is exact: the merged histogram holds the same counts
in the same buckets as one histogram that recorded every value itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

LOWEST_US, HIGHEST_US, DIGITS = 1, 120_000_000, 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    """An empty latency histogram (1 µs .. 120 s, 3 significant digits)."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def record_us(histogram: HdrHistogram, micros: float) -> None:
    """Record one value in microseconds, clamped into the histogram's range."""
    histogram.record_value(min(HIGHEST_US, max(LOWEST_US, int(micros))))


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    """Record one latency given in seconds."""
    record_us(histogram, seconds * 1_000_000)


def encode(histogram: HdrHistogram) -> str:
    """The histogram as compact text (for JSON and for the worker pipe)."""
    text: bytes = histogram.encode()
    return text.decode()


def decode(text: str) -> HdrHistogram:
    """The histogram encoded by :func:`encode` ("" is an empty one)."""
    if not text:
        return new_histogram()
    merged = new_histogram()
    merged.add(HdrHistogram.decode(text))
    return merged


def merge_encoded(encoded: Iterable[str]) -> HdrHistogram:
    """One histogram holding every value of the encoded ones (exact)."""
    merged = new_histogram()
    for text in encoded:
        if text:
            merged.add(HdrHistogram.decode(text))
    return merged


def summary_ms(histogram: HdrHistogram) -> dict[str, float]:
    """p50/p90/p99/p99.9/max and the mean in milliseconds, and the count."""
    out = {f"p{p:g}_ms": histogram.get_value_at_percentile(p) / 1000.0 for p in PERCENTILES}
    out["max_ms"] = histogram.get_max_value() / 1000.0
    count = histogram.get_total_count()
    out["mean_ms"] = histogram.get_mean_value() / 1000.0 if count else 0.0
    out["count"] = float(count)
    return out
