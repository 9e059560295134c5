"""Cheap fixed-bucket histograms for the hot path, exported to Prometheus at scrape time.

``observe`` is one bisect and two additions (well under a microsecond), so
per-request latencies can be counted without prometheus_client's per-call lock;
aiServer/metrics.py turns snapshots into Prometheus histogram families.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

# Seconds: 0.1 ms .. 10 s, roughly x2.5 per step.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# observe_many sorts this many values or more (fewer: one bisection each is cheaper).
_SORT_FROM = 16
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class BucketHistogram:
    """Counts of observations per upper bound (``le``), plus their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Sequence[float]) -> None:
        """Count each of ``values`` (a batch's latencies: one call, not one per value).

        Many values are sorted once and each bucket's share found by one bisection
        of them (a batch's latencies span few buckets), not one bisection per value.
        """
        counts = self.counts
        n = len(values)
        if n < _SORT_FROM:
            bounds = self.bounds
            for value in values:
                counts[bisect_left(bounds, value)] += 1
            self.sum += sum(values)
            return
        ordered = sorted(values)
        below = 0  # values counted so far: those <= the previous bound
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(ordered, bound, below)
            if upto != below:
                counts[i] += upto - below
                below = upto
                if below == n:
                    break
        else:
            counts[-1] += n - below
        self.sum += sum(ordered)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, ending with +Inf, as Prometheus wants them."""
        out = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((format_bound(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self.counts)


def format_bound(bound: float) -> str:
    """A bucket bound as Prometheus prints it (1.0, 0.0025, ...)."""
    return repr(float(bound))
