"""moving_average: the seed request, the maths, validation, batched == one by one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commonlib.models.base import ModelOutput
from commonlib.models.moving_average import MovingAverageModel
from util.errors import InvalidInput

SEED = [1.2, 2.3, 3.1, 2.8, 3.5, 4.2]


def run_one(values: list[float], **config: object) -> np.ndarray:
    model = MovingAverageModel()
    prepared = model.prepare(values, config)  # type: ignore[arg-type]
    return model.forward([prepared])[0].predictions


def test_seed_request_gives_five_trend_forecasts() -> None:
    out = run_one(SEED, forecast_steps=5, window_size=5, include_trend=True)
    window = np.array(SEED[-5:])
    slope = np.polyfit(np.arange(5), window, 1)[0]
    expected = window.mean() + slope * (2 + np.arange(1, 6))
    assert out.shape == (5,)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert out[0] > window.mean()  # the series rises, so does the forecast


def test_without_trend_the_forecast_is_the_window_mean() -> None:
    out = run_one(SEED, forecast_steps=3, window_size=4)
    np.testing.assert_allclose(out, [np.mean(SEED[-4:])] * 3, rtol=1e-6)


@pytest.mark.parametrize(
    ("values", "config", "message"),
    [
        ([], {}, "at least 1"),
        (SEED, {"forecast_steps": 10**9}, "above the maximum"),
        (SEED, {"forecast_steps": 0}, "below the minimum"),
        (SEED, {"forecast_steps": 2.5}, "must be an int"),
        (SEED, {"include_trend": 1}, "must be a bool"),
        (SEED, {"window": 3}, "unknown config key 'window'"),
        (SEED, {"window_size": 7}, "window_size is 7"),
        ([0.0] * 5000, {}, "at most 4096"),
    ],
)
def test_invalid_input_is_explained(
    values: list[float], config: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        MovingAverageModel().prepare(values, config)  # type: ignore[arg-type]


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(
    series=st.lists(st.lists(finite, min_size=8, max_size=40), min_size=1, max_size=12),
    window=st.integers(1, 8),
    steps=st.integers(1, 6),
    trend=st.booleans(),
)
def test_batched_equals_one_by_one(
    series: list[list[float]], window: int, steps: int, trend: bool
) -> None:
    model = MovingAverageModel()
    config = {"window_size": window, "forecast_steps": steps, "include_trend": trend}
    prepared = [model.prepare(s, config) for s in series]
    batched = model.forward(prepared)
    for item, out in zip(prepared, batched, strict=True):
        alone = model.forward([item])[0]
        np.testing.assert_allclose(out.predictions, alone.predictions, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_request_fails_alone_and_the_rest_run_as_if_alone(bad: float) -> None:
    model = MovingAverageModel()
    config = {"window_size": 3, "include_trend": True}
    clean = [model.prepare([1.0 + k, 2.0, 4.0, 3.0, 5.0 * k], config) for k in range(4)]
    poisoned = model.prepare([1.0, bad, 2.0, 3.0, 4.0], config)
    results = model.run_batch([clean[0], clean[1], poisoned, clean[2], clean[3]])
    assert isinstance(results[2], InvalidInput)
    assert "NaN or infinite" in results[2].message
    for item, result in zip(clean, [*results[:2], *results[3:]], strict=True):
        assert isinstance(result, ModelOutput)
        np.testing.assert_array_equal(result.predictions, model.forward([item])[0].predictions)
    all_bad = model.run_batch([poisoned])
    assert isinstance(all_bad[0], InvalidInput)
