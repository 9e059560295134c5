"""Per-model figures of a model mix, with the server-side timings of every reply.

Every ``InferResponse`` carries ``Timings`` (proto/inference.proto): the queue wait,
the batch size and the forward pass's wall time of the batch that ran it, and the
server's arrival-to-reply total. Beside the client latency they say where the time
went, perf_analyzer-style: client latency = server total + client overhead (the
bot's own send and receive work, the kernel and the network; in the open loop also
any lag of the bot's send behind the schedule), and server total = queue wait +
inference + the rest (decoding, batching, encoding, the reactor's turns).

Like the run's latency, the timings of answers to warm-up requests are left out;
counts cover the whole run. Histograms are HDR (bot/histogram.py) and encoded in
the JSON, so workers' figures merge exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from bot.histogram import decode, encode, new_histogram, record_us, summary_ms
from commonlib.wire import pb

PARTS = ("latency", "queue_wait", "inference", "server_total", "client_overhead", "batch_size")


def _histograms() -> dict[str, HdrHistogram]:
    return {part: new_histogram() for part in PARTS}


@dataclass
class ModelStats:
    """One model's counts and histograms (client latency, the server's timings)."""

    sent: int = 0
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    histograms: dict[str, HdrHistogram] = field(default_factory=_histograms)

    def on_answer(self, latency_s: float, timings: pb.Timings | None, steady: bool) -> None:
        """Count an answer; record its latency and timings when it is past the warm-up."""
        self.answered += 1
        if not steady:
            return
        h = self.histograms
        latency_us = latency_s * 1_000_000
        record_us(h["latency"], latency_us)
        if timings is None or not timings.total_ms:
            return
        total_us = timings.total_ms * 1000.0
        record_us(h["queue_wait"], timings.queue_wait_ms * 1000.0)
        record_us(h["inference"], timings.inference_ms * 1000.0)
        record_us(h["server_total"], total_us)
        record_us(h["client_overhead"], latency_us - total_us)
        h["batch_size"].record_value(max(1, timings.batch_size))

    def add(self, other: ModelStats) -> None:
        """Add ``other`` (another worker's, or a later step's) into this one (exact)."""
        self.sent += other.sent
        self.answered += other.answered
        self.errors.update(other.errors)
        for part in PARTS:
            self.histograms[part].add(other.histograms[part])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelStats:
        """The ModelStats that :meth:`to_json` described (histograms decoded)."""
        return cls(
            sent=int(data["sent"]),
            answered=int(data["answered"]),
            errors=Counter(data["errors"]),
            histograms={part: decode(data["histograms"][part]) for part in PARTS},
        )

    def to_json(self) -> dict[str, Any]:
        """Counts, summaries, where the time went, and the encoded histograms."""
        h = self.histograms
        errors = sum(self.errors.values())
        batch = h["batch_size"]
        server = {part: summary_ms(h[part]) for part in PARTS[1:5]}
        server["batch_size"] = {
            "mean": batch.get_mean_value() if batch.get_total_count() else 0.0,
            "p50": float(batch.get_value_at_percentile(50)),
            "p99": float(batch.get_value_at_percentile(99)),
            "max": float(batch.get_max_value()),
        }
        server["where_the_time_went"] = where_the_time_went(server)
        return {
            "sent": self.sent,
            "answered": self.answered,
            "errors": dict(self.errors),
            "error_count": errors,
            "lost": max(0, self.sent - self.answered - errors),
            "latency": summary_ms(h["latency"]),
            "server": server,
            "histograms": {part: encode(h[part]) for part in PARTS},
        }


def where_the_time_went(server: dict[str, Any]) -> dict[str, float]:
    """Mean milliseconds per part of an answer (means add up; percentiles do not)."""
    total = server["server_total"]
    if not total["count"]:
        return {}
    queue, infer = server["queue_wait"]["mean_ms"], server["inference"]["mean_ms"]
    return {
        "queue_wait_ms": queue,
        "inference_ms": infer,
        "other_server_ms": max(0.0, total["mean_ms"] - queue - infer),
        "client_overhead_ms": server["client_overhead"]["mean_ms"],
    }


def merge_models(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``models`` of several reports, added model by model (exact)."""
    merged: dict[str, ModelStats] = {}
    for part in parts:
        for name, data in (part.get("models") or {}).items():
            merged.setdefault(name, ModelStats()).add(ModelStats.from_json(data))
    return {name: stats.to_json() for name, stats in sorted(merged.items())}
