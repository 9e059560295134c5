"""GridTicker: ticks on the clock's grid of multiples of the interval, skips when late."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from commonlib.tick_clock import GridTicker
from tests.conftest import ErrorRecorder


def _ticker(clock: Clock, calls: list[tuple[float, int]], interval: float = 0.5) -> GridTicker:
    return GridTicker(clock, interval, lambda count: calls.append((clock.seconds(), count)), "t")


def test_ticks_fall_on_multiples_of_the_interval_whenever_the_ticker_started() -> None:
    clock = Clock()
    clock.advance(10.3)
    calls: list[tuple[float, int]] = []
    ticker = _ticker(clock, calls)
    ticker.start()
    assert ticker.next_tick(clock.seconds()) == 1 and ticker.tick_time(1) == 10.5
    clock.advance(0.2)
    clock.advance(0.5)
    assert calls == [(10.5, 1), (11.0, 1)]


def test_two_tickers_started_apart_tick_in_the_same_phase() -> None:
    clock = Clock()
    first: list[tuple[float, int]] = []
    second: list[tuple[float, int]] = []
    clock.advance(3.125)
    _ticker(clock, first).start()
    clock.advance(0.25)  # 3.375: another process starting half a period later
    _ticker(clock, second).start()
    clock.advance(0.125)
    for _ in range(3):
        clock.advance(0.5)
    assert first == second == [(3.5, 1), (4.0, 1), (4.5, 1), (5.0, 1)]


def test_a_late_call_counts_the_ticks_it_slept_through_and_never_runs_them() -> None:
    clock = Clock()
    calls: list[tuple[float, int]] = []
    ticker = _ticker(clock, calls)
    ticker.start()
    clock.advance(0.5)
    clock.advance(1.7)  # due at 1.0; the process ran again at 2.2: ticks 2, 3, 4 passed
    assert calls == [(0.5, 1), (2.2, 3)]
    assert ticker.last == 4 and ticker.next_tick(clock.seconds()) == 5
    clock.advance(0.3)  # the next call is on the grid again, not 0.5 s after the late one
    assert calls[-1] == (2.5, 1)


@pytest.mark.allow_logged_errors
def test_a_failing_tick_is_logged_and_the_ticker_keeps_ticking(
    logged_errors: ErrorRecorder,
) -> None:
    clock = Clock()
    counts: list[int] = []

    def on_tick(count: int) -> None:
        counts.append(count)
        if len(counts) == 1:
            raise RuntimeError("a broken tick")

    ticker = GridTicker(clock, 0.5, on_tick, "t")
    ticker.start()
    clock.advance(0.5)
    clock.advance(0.5)
    assert counts == [1, 1]
    assert "tick 1 of t failed" in logged_errors.text() and "a broken tick" in logged_errors.text()


def test_stop_cancels_the_next_tick() -> None:
    clock = Clock()
    calls: list[tuple[float, int]] = []
    ticker = _ticker(clock, calls)
    ticker.start()
    clock.advance(0.5)
    ticker.stop()
    assert not ticker.running and not clock.getDelayedCalls()
    clock.advance(5)
    assert calls == [(0.5, 1)]
    with pytest.raises(ValueError):
        GridTicker(clock, 0.0, lambda count: None, "t")
