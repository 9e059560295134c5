"""The lstm_timeseries C kernel (commonlib/models/_lstmkernel.c) against TorchScript."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import commonlib.models.lstm_timeseries as lstm_module
from commonlib.models.lstm_timeseries import FastRollout, LstmForecaster, LstmTimeseriesModel
from util.native import PURE_PYTHON_ENV

kernel: Any = lstm_module._lstmkernel
pytestmark = pytest.mark.skipif(
    kernel is None, reason=f"the C kernel is not built (make native) or {PURE_PYTHON_ENV} is set"
)
needs_avx2 = pytest.mark.skipif(
    kernel is None or not kernel.AVX2, reason="this CPU has no AVX2 and FMA"
)

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 2e-5
"""Kernel against TorchScript: |difference| <= TOLERANCE * (sigma + |forecast|) per value.

sigma is the row's normalisation scale, so this is 2e-5 in the network's normalised
units (float32 rounding through up to 40 + 8 cell steps; the largest seen over 300
random batches of this file's kind was 6.3e-6), and a relative 2e-5 for a forecast far
from the window's mean. A plain relative bound cannot hold where the de-normalised
forecast cancels to near zero.
"""

Norm = tuple[float, float] | None


@pytest.fixture(scope="module")
def shipped() -> LstmForecaster:
    model = LstmTimeseriesModel()
    model.load()
    assert model._net is not None
    return model._net


def _windows(
    rng: np.random.Generator, batch: int, length: int, centre: float, scale: float
) -> npt.NDArray[np.float32]:
    return (centre + scale * rng.normal(size=(batch, length))).astype(np.float32)


def _sigma(windows: npt.NDArray[np.float32], norm: Norm) -> npt.NDArray[np.float64]:
    if norm is None:
        return lstm_module.window_stats(windows)[1]
    return np.full((len(windows), 1), norm[1])


def _norm_args(norm: Norm) -> tuple[float, float]:
    return norm if norm is not None else (0.0, 0.0)


def _assert_matches_torchscript(
    net: LstmForecaster,
    windows: npt.NDArray[np.float32],
    steps: int,
    norm: Norm,
    portable: bool,
) -> None:
    with torch.inference_mode():
        expected = (
            FastRollout(net, native=False)
            .forecast(torch.from_numpy(windows), steps, *_norm_args(norm))
            .numpy()
        )
    got = FastRollout(net, native=True).forecast_array(
        windows, steps, *_norm_args(norm), portable=portable
    )
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(windows), steps)
    bound = TOLERANCE * (_sigma(windows, norm) + np.abs(expected))
    excess = np.abs(got.astype(np.float64) - expected) - bound
    assert excess.max() <= 0, (np.abs(got - expected).max(), got, expected)


norms = st.one_of(st.none(), st.tuples(st.floats(-100.0, 100.0), st.floats(0.01, 100.0)))


@settings(max_examples=80, deadline=None)
@given(
    batch=st.integers(1, 130),
    length=st.integers(1, 40),
    steps=st.integers(1, 8),
    centre=st.floats(-1e4, 1e4),
    scale=st.sampled_from([0.0, 1e-4, 1.0, 50.0]),
    norm=norms,
    portable=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_torchscript(
    shipped: LstmForecaster,
    batch: int,
    length: int,
    steps: int,
    centre: float,
    scale: float,
    norm: Norm,
    portable: bool,
    seed: int,
) -> None:
    # scale 0 gives flat windows (the floored deviation); norm the fixed normalisation.
    windows = _windows(np.random.default_rng(seed), batch, length, centre, scale)
    _assert_matches_torchscript(shipped, windows, steps, norm, portable)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize(
    ("hidden", "batch", "length", "steps"),
    [(1, 1, 2, 1), (3, 4, 5, 3), (7, 3, 5, 8), (8, 5, 3, 2), (33, 65, 12, 4), (128, 9, 12, 6)],
)
def test_kernel_matches_torchscript_any_hidden_size(
    hidden: int, batch: int, length: int, steps: int, portable: bool
) -> None:
    # Odd sizes take the kernel's scalar column tail and its padded lanes.
    torch.manual_seed(hidden)
    net = LstmForecaster(hidden).eval()
    windows = _windows(np.random.default_rng(hidden), batch, length, 3.0, 2.0)
    for norm in (None, (1.0, 4.0)):
        _assert_matches_torchscript(net, windows, steps, norm, portable)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 130),
    length=st.integers(1, 24),
    steps=st.integers(1, 6),
    norm=norms,
    portable=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batched_is_one_by_one_bit_for_bit(
    shipped: LstmForecaster,
    batch: int,
    length: int,
    steps: int,
    norm: Norm,
    portable: bool,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    windows = _windows(rng, batch, length, float(rng.normal(0.0, 100.0)), 5.0)
    fast = FastRollout(shipped, native=True)
    batched = fast.forecast_array(windows, steps, *_norm_args(norm), portable=portable)
    alone = np.concatenate(
        [
            fast.forecast_array(row[None], steps, *_norm_args(norm), portable=portable)
            for row in windows
        ]
    )
    np.testing.assert_array_equal(batched, alone)
    # In another order (each row at another place in its register tiles): the same bits.
    order = rng.permutation(batch)
    shuffled = fast.forecast_array(windows[order], steps, *_norm_args(norm), portable=portable)
    np.testing.assert_array_equal(shuffled, batched[order])


@needs_avx2
@pytest.mark.parametrize("hidden", [5, 64])
def test_portable_path_agrees_with_avx2(shipped: LstmForecaster, hidden: int) -> None:
    torch.manual_seed(hidden)
    net = shipped if hidden == 64 else LstmForecaster(hidden).eval()
    fast = FastRollout(net, native=True)
    rng = np.random.default_rng(hidden)
    differ = []
    for batch, length, steps in [(1, 10, 5), (7, 3, 1), (64, 40, 8)]:
        windows = _windows(rng, batch, length, 50.0, 10.0)
        avx2 = fast.forecast_array(windows, steps)
        portable = fast.forecast_array(windows, steps, portable=True)
        sigma = _sigma(windows, None)
        assert np.abs(avx2 - portable).max() <= TOLERANCE * (sigma + np.abs(avx2)).min()
        differ.append(not np.array_equal(avx2, portable))
    # fma against separate multiply and add: float32 rounding apart, not equal throughout
    # (so the switch really selects another path).
    assert any(differ)


def _state(
    rng: np.random.Generator, batch: int, hidden: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Normalised inputs and a carried (h, c) of the sizes a stream reaches."""
    x = rng.normal(size=batch).astype(np.float32)
    h = rng.uniform(-0.9, 0.9, (batch, hidden)).astype(np.float32)
    c = rng.normal(0.0, 2.0, (batch, hidden)).astype(np.float32)
    return x, h, c


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize(("hidden", "batch", "steps"), [(64, 1, 1), (64, 70, 5), (7, 5, 3)])
def test_stream_step_matches_torch(
    shipped: LstmForecaster, hidden: int, batch: int, steps: int, portable: bool
) -> None:
    torch.manual_seed(hidden)
    net = shipped if hidden == 64 else LstmForecaster(hidden).eval()
    x, h, c = _state(np.random.default_rng(batch), batch, hidden)
    with torch.inference_mode():
        expected = FastRollout(net, native=False).step(
            torch.from_numpy(x)[:, None], torch.from_numpy(h), torch.from_numpy(c), steps
        )
    got = FastRollout(net, native=True).step_arrays(x, h, c, steps, portable=portable)
    for name, mine, theirs in zip(("forecasts", "h", "c"), got, expected, strict=True):
        assert mine.shape == tuple(theirs.shape), name
        # Normalised units: float32 rounding through 1 + steps - 1 cell steps.
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=TOLERANCE, atol=TOLERANCE)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 70), steps=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_stream_step_batched_is_one_by_one_bit_for_bit(
    shipped: LstmForecaster, batch: int, steps: int, seed: int
) -> None:
    fast = FastRollout(shipped, native=True)
    x, h, c = _state(np.random.default_rng(seed), batch, 64)
    for portable in (False, True):
        batched = fast.step_arrays(x, h, c, steps, portable=portable)
        alone = [
            fast.step_arrays(x[i : i + 1], h[i : i + 1], c[i : i + 1], steps, portable=portable)
            for i in range(batch)
        ]
        for part, together in enumerate(batched):
            np.testing.assert_array_equal(together, np.concatenate([a[part] for a in alone]))


def test_stream_step_bad_shapes_raise_value_error(shipped: LstmForecaster) -> None:
    fast = FastRollout(shipped, native=True)
    x, h, c = _state(np.random.default_rng(0), 3, 64)
    with pytest.raises(ValueError, match="h, c, new_h and new_c must be"):
        fast.step_arrays(x, h[:2], c, 2)
    with pytest.raises(ValueError, match="h, c, new_h and new_c must be"):
        fast.step_arrays(x, h, c[:, :60], 2)
    with pytest.raises(ValueError, match="one step"):
        fast.step_arrays(x, h, c, 0)
    with pytest.raises(ValueError, match="x must have 1 dimension"):
        fast.step_arrays(x[:, None], h, c, 2)


def test_non_finite_window_stays_in_its_row(shipped: LstmForecaster) -> None:
    fast = FastRollout(shipped, native=True)
    windows = _windows(np.random.default_rng(3), 5, 10, 0.0, 1.0)
    for bad in (np.nan, np.inf):
        dirty = windows.copy()
        dirty[2, 4] = bad
        for portable in (False, True):
            clean = fast.forecast_array(windows, 4, portable=portable)
            got = fast.forecast_array(dirty, 4, portable=portable)
            assert np.isnan(got[2]).all()
            np.testing.assert_array_equal(np.delete(got, 2, 0), np.delete(clean, 2, 0))


def _arguments(hidden: int = 4, batch: int = 3, length: int = 5, steps: int = 2) -> dict[str, Any]:
    gates = 4 * hidden
    f32 = np.float32
    return {
        "windows": np.zeros((batch, length), f32),
        "out": np.zeros((batch, steps), f32),
        "norm_mean": 0.0,
        "norm_std": 0.0,
        "sigma_floor": 1e-3,
        "input_weight": np.zeros(gates, f32),
        "input_bias": np.zeros(gates, f32),
        "recurrent": np.zeros((hidden, gates), f32),
        "feedback": np.zeros((hidden, gates), f32),
        "feedback_bias": np.zeros(gates, f32),
        "head_weight": np.zeros(hidden, f32),
        "head_bias": 0.0,
    }


def _read_only(array: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    array.flags.writeable = False
    return array


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("windows", np.zeros((3, 5), np.float64), "windows must be float32"),
        ("windows", np.zeros((3, 10), np.float32)[:, ::2], "windows must be C-contiguous"),
        ("windows", np.zeros(15, np.float32), "windows must have 2 dimensions"),
        ("windows", np.zeros((3, 0), np.float32), "at least one input value"),
        ("out", np.zeros((3, 0), np.float32), "one step"),
        ("out", np.zeros((4, 2), np.float32), "one row per window"),
        ("out", _read_only(np.zeros((3, 2), np.float32)), "out must be writable"),
        ("out", np.zeros((3, 2), np.int32), "out must be float32"),
        ("recurrent", np.zeros((4, 12), np.float32), r"recurrent must be \[H, 4H\]"),
        ("recurrent", np.zeros((0, 0), np.float32), r"recurrent must be \[H, 4H\]"),
        ("feedback", np.zeros((4, 15), np.float32), "feedback must have recurrent's shape"),
        ("input_bias", np.zeros(15, np.float32), "must have 4H values"),
        ("feedback_bias", np.zeros((16, 1), np.float32), "feedback_bias must have 1 dimension"),
        ("head_weight", np.zeros(5, np.float32), "head_weight must have H values"),
    ],
)
def test_bad_buffers_raise_value_error(name: str, value: Any, message: str) -> None:
    arguments = _arguments()
    kernel.forecast(**arguments)  # the unchanged arguments are good
    arguments[name] = value
    with pytest.raises(ValueError, match=message):
        kernel.forecast(**arguments)


def test_out_overlapping_an_input_is_refused() -> None:
    arguments = _arguments(length=2)
    arguments["out"] = arguments["windows"]
    with pytest.raises(ValueError, match="out must not overlap another array"):
        kernel.forecast(**arguments)
    with pytest.raises(TypeError):
        kernel.forecast(**{**_arguments(), "windows": [[1.0] * 5] * 3})


def test_forecast_array_needs_a_native_instance(shipped: LstmForecaster) -> None:
    torchscript = FastRollout(shipped, native=False)
    with pytest.raises(RuntimeError, match="native is False"):
        torchscript.forecast_array(np.zeros((1, 3), np.float32), 2)
    meta = LstmForecaster(8).to("meta")
    assert not FastRollout(meta).native  # not on the CPU: TorchScript, chosen quietly
    with pytest.raises(ValueError, match="float32 weights on the CPU"):
        FastRollout(meta, native=True)
    with pytest.raises(ValueError, match="one step"):
        FastRollout(shipped, native=True).forecast_array(np.zeros((1, 3), np.float32), 0)


@needs_avx2
def test_served_batches_run_on_the_kernel() -> None:
    model = LstmTimeseriesModel()
    model.load()
    rollout = model._rollout
    assert rollout is not None and rollout.native
    rng = np.random.default_rng(9)
    config = {"sequence_length": 12, "forecast_steps": 3, "norm_mean": 2.0, "norm_std": 3.0}
    items = [model.prepare(rng.normal(size=20).astype(np.float32), config) for _ in range(6)]
    batch = model.preprocess(items)
    assert isinstance(batch.windows, np.ndarray)  # numpy straight into the kernel
    windows = np.stack([item.values[-12:] for item in items])
    expected = rollout.forecast_array(windows, 3, 2.0, 3.0)
    got = np.stack([out.predictions for out in model.forward(items)])
    np.testing.assert_array_equal(got, expected)


def test_pure_python_switch_keeps_torchscript() -> None:
    code = (
        "import commonlib.models.lstm_timeseries as m\n"
        "model = m.LstmTimeseriesModel(); model.load()\n"
        "print(m.kernel_available(), model._rollout.native)\n"
    )
    env = {**os.environ, PURE_PYTHON_ENV: "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
