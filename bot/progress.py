"""The live progress line: elapsed, answer rate, p50/p99 of the last second, errors, lost.

A :class:`Tick` is what happened since the previous one (counts and an HDR
histogram of the latencies). In one process :class:`LocalTicks` takes it from the
runs in progress; a worker sends its ticks to the parent, which adds them up
exactly before showing them (bot/workers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.live import Live
from rich.text import Text

from bot.histogram import decode, encode, new_histogram
from bot.stats import LIVE_RUNS

_COUNTS = ("sent", "answered", "errors", "lost")


@dataclass
class Tick:
    """Counts and latencies since the previous tick."""

    sent: int = 0
    answered: int = 0
    errors: int = 0
    lost: int = 0
    histogram: HdrHistogram = field(default_factory=new_histogram)

    def add(self, other: Tick) -> None:
        """Add ``other`` into this tick."""
        for key in _COUNTS:
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.histogram.add(other.histogram)

    def to_json(self) -> dict[str, Any]:
        """For the worker pipe."""
        return {**{key: getattr(self, key) for key in _COUNTS}, "histogram": encode(self.histogram)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tick:
        """Inverse of :meth:`to_json`."""
        return cls(**{key: int(data[key]) for key in _COUNTS}, histogram=decode(data["histogram"]))


class LocalTicks:
    """Ticks taken from this process's runs in progress (bot.stats.LIVE_RUNS)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, int, int, int]] = {}

    def take(self) -> Tick:
        """Everything since the previous call."""
        tick = Tick()
        seen: dict[int, tuple[int, int, int, int]] = {}
        for stats in LIVE_RUNS:
            now = (stats.sent, stats.answered, stats.error_count, stats.lost)
            before = self._last.get(id(stats), (0, 0, 0, 0))
            tick.add(Tick(*(max(0, a - b) for a, b in zip(now, before, strict=True))))
            tick.histogram.add(stats.interval)
            stats.interval.reset()
            seen[id(stats)] = now
        self._last = seen
        return tick


class LiveLine:
    """One status line, redrawn in place on a terminal, printed line by line otherwise."""

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label
        self.total = Tick()
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(Text(""), console=console, auto_refresh=False, transient=False)
            self._live.start()

    def show(self, elapsed_s: float, tick: Tick, interval_s: float) -> None:
        """Show one tick (covering ``interval_s`` seconds)."""
        self.total.add(tick)
        text = self.render(elapsed_s, tick, interval_s)
        if self._live is not None:
            self._live.update(Text(text), refresh=True)
        else:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def render(self, elapsed_s: float, tick: Tick, interval_s: float) -> str:
        """The line's text."""
        rate = tick.answered / max(interval_s, 1e-9)
        if tick.histogram.get_total_count():
            p50 = tick.histogram.get_value_at_percentile(50) / 1000.0
            p99 = tick.histogram.get_value_at_percentile(99) / 1000.0
            latency = f"p50 {p50:6.2f} ms  p99 {p99:7.2f} ms"
        else:
            latency = "no replies this second"
        return (
            f"{self.label} {elapsed_s:6.1f}s {rate:8,.0f} req/s  {latency}  "
            f"errors {self.total.errors:,}  lost {self.total.lost:,}"
        )

    def close(self) -> None:
        """Leave the last line on screen."""
        if self._live is not None:
            self._live.stop()
            self._live = None
