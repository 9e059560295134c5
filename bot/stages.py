"""``--stages 10s:1000,30s:5000,10s:0``: an open-loop rate that ramps between targets.

As k6's ramping-arrival-rate: the rate starts at 0 and moves linearly to each
stage's target over the stage's duration (``10s:1000,30s:5000,10s:0`` ramps to
1,000 req/s in 10 s, to 5,000 over the next 30 s, down to 0 in the last 10; a
stage whose target equals the previous one holds it). Requests are scheduled
exactly: request *n* leaves when the integral of the rate reaches *n*, and its
latency is measured from that time, as for a constant rate.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

_STAGE = re.compile(r"^(?P<seconds>\d+(?:\.\d+)?)(?P<unit>ms|s|m)?:(?P<rate>\d+(?:\.\d+)?)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


@dataclass(frozen=True)
class Stages:
    """Stages of (seconds, target rate); the rate starts at ``start_rate``."""

    stages: tuple[tuple[float, float], ...]
    start_rate: float = 0.0

    @property
    def duration_s(self) -> float:
        """The stages' total length."""
        return sum(seconds for seconds, _ in self.stages)

    def scaled(self, factor: float) -> Stages:
        """The same shape with every rate times ``factor`` (a worker's share)."""
        return Stages(tuple((s, r * factor) for s, r in self.stages), self.start_rate * factor)

    def to_json(self) -> list[dict[str, float]]:
        """The stages as given (for the report's parameters)."""
        return [{"seconds": s, "target_rate": r} for s, r in self.stages]

    def _segments(self) -> list[tuple[float, float, float, float]]:
        """(start time, length, rate at start, rate at end) of each stage."""
        out, t, rate = [], 0.0, self.start_rate
        for seconds, target in self.stages:
            out.append((t, seconds, rate, target))
            t, rate = t + seconds, target
        return out

    def rate(self, t: float) -> float:
        """The target rate at ``t`` seconds into the load."""
        for start, length, r0, r1 in self._segments():
            if t < start + length:
                return r0 + (r1 - r0) * max(0.0, t - start) / length
        return self.stages[-1][1] if self.stages else self.start_rate

    def total(self, t: float) -> float:
        """Requests due by ``t``: the integral of the rate from 0."""
        count = 0.0
        for start, length, r0, r1 in self._segments():
            x = min(max(0.0, t - start), length)
            count += r0 * x + (r1 - r0) * x * x / (2 * length)
            if t < start + length:
                break
        return count

    def time_of(self, n: float) -> float:
        """When request ``n`` (0-based) is due: the first t with total(t) >= n."""
        done = 0.0
        for start, length, r0, r1 in self._segments():
            area = (r0 + r1) / 2 * length
            if n <= done + area and area > 0:
                left = n - done
                a = (r1 - r0) / (2 * length)
                # r0 x + a x^2 = left, the smaller root, written to stay exact when a = 0;
                # on a rising ramp 4 a left is taken as (2 sqrt(a) sqrt(left))^2, which
                # does not underflow to 0 for a tiny left (x would come out past the stage).
                if a >= 0:
                    root = math.hypot(r0, 2 * math.sqrt(a) * math.sqrt(left))
                else:
                    root = math.sqrt(max(0.0, r0 * r0 + 4 * a * left))
                x = 2 * left / (r0 + root) if r0 + root > 0 else 0.0
                return start + min(x, length)
            done += area
        return self.duration_s


def parse_stages(text: str) -> Stages:
    """``10s:1000,30s:5000,10s:0`` -> Stages; argparse.ArgumentTypeError when malformed."""
    stages = []
    for item in text.split(","):
        match = _STAGE.match(item.strip())
        if match is None:
            raise argparse.ArgumentTypeError(
                f"bad stage {item.strip()!r}: expected DURATION:RATE, e.g. 10s:1000 "
                "(DURATION in ms, s or m; s when no unit)"
            )
        seconds = float(match["seconds"]) * _UNIT_S[match["unit"]]
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"bad stage {item.strip()!r}: a duration > 0")
        stages.append((seconds, float(match["rate"])))
    return Stages(tuple(stages))
