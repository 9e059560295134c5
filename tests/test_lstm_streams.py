"""lstm_timeseries streams: T steps of a stream forecast what one T-value request does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commonlib.models.lstm_timeseries import LstmTimeseriesModel
from util.errors import InvalidInput


@pytest.fixture(scope="module")
def model() -> LstmTimeseriesModel:
    instance = LstmTimeseriesModel()
    instance.load()
    return instance


def _stream(
    model: LstmTimeseriesModel, series: np.ndarray, config: dict[str, float | int]
) -> np.ndarray:
    """Step one stream through ``series`` value by value (a batch of 3 identical streams)."""
    resolved = model.plan(config).config
    state = tuple(torch.from_numpy(np.stack([part] * 3)) for part in model.initial_state(resolved))
    key = model.stream_key(resolved)
    with torch.inference_mode():
        for value in series:
            obs = torch.full((3, 1), float(value))
            out, state = model.stream_step_for_key(key, obs, state)
    # Rows of a batch are independent (up to the matmul kernel's rounding by row position,
    # which the de-normalisation scales: 1.9e-6 apart was seen with norm_std near 20).
    scale = 1.0 + abs(float(config.get("norm_mean", 0.0))) + float(config.get("norm_std", 1.0))
    torch.testing.assert_close(out[0], out[2], rtol=1e-5, atol=1e-6 * scale)
    return out[0].numpy()


@settings(max_examples=40, deadline=None)
@given(
    series=st.lists(st.floats(-50, 50, width=32), min_size=2, max_size=48),
    mean=st.floats(-20, 20),
    std=st.floats(0.1, 20),
    steps=st.integers(1, 8),
)
def test_stepping_a_stream_forecasts_what_the_whole_window_does(
    model: LstmTimeseriesModel, series: list[float], mean: float, std: float, steps: int
) -> None:
    values = np.asarray(series, dtype=np.float32)
    config = {"forecast_steps": steps, "norm_mean": mean, "norm_std": std}
    window = {**config, "sequence_length": len(values)}
    stateless = model.forward([model.prepare(values, window)])[0].predictions
    streamed = _stream(model, values, config)
    np.testing.assert_allclose(streamed, stateless, rtol=1e-4, atol=1e-4 * (abs(mean) + std))


def test_fixed_normalisation_changes_the_stateless_forecast_and_unset_keeps_window_stats(
    model: LstmTimeseriesModel,
) -> None:
    values = np.linspace(10.0, 14.0, 12, dtype=np.float32)
    base = {"sequence_length": 12}
    own = model.forward([model.prepare(values, base)])[0].predictions
    unset = model.forward([model.prepare(values, {**base, "norm_mean": 5.0})])[0].predictions
    fixed = model.forward([model.prepare(values, {**base, "norm_mean": 5.0, "norm_std": 3.0})])
    assert np.array_equal(own, unset), "norm_std 0 (unset): each window's own statistics"
    assert not np.allclose(own, fixed[0].predictions)
    assert model.batch_key(model.plan({**base, "norm_std": 3.0}).config) != model.batch_key(
        model.plan(base).config
    )


def test_stream_spec_state_and_initial_state_checks(model: LstmTimeseriesModel) -> None:
    config = model.plan({"forecast_steps": 7, "norm_mean": 2.0}).config
    spec = model.stream_spec(config)
    assert (spec.input_width, spec.output_width, spec.state_width) == (1, 7, 130)
    h, c, norm = model.initial_state(config)
    assert not h.any() and not c.any() and norm.tolist() == [2.0, 1.0]
    with pytest.raises(InvalidInput, match="deviation"):
        model.check_initial_state(config, (h, c, np.array([0.0, 0.0], np.float32)))
