"""The lstm_timeseries model with the shipped checkpoint (models/lstm_timeseries.pt)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydantic
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import commonlib.models.lstm_timeseries as lstm_module
from commonlib.models.base import BaseModel, ModelOutput, SettingsError
from commonlib.models.lstm_timeseries import LstmTimeseriesModel
from commonlib.models.registry import model_factory
from util.errors import InvalidInput

NATIVE = pytest.mark.parametrize(
    "native",
    [
        pytest.param(False, id="torchscript"),
        pytest.param(
            True,
            id="kernel",
            marks=pytest.mark.skipif(
                not lstm_module.kernel_available(), reason="the C kernel is not built or no AVX2"
            ),
        ),
    ],
)
"""Runs a test on FastRollout's TorchScript path and on its C kernel."""


@pytest.fixture(scope="module")
def model() -> BaseModel:
    instance = model_factory.create("lstm_timeseries")
    instance.load()
    return instance


def test_shipped_checkpoint_exists_and_is_small() -> None:
    path = lstm_module.DEFAULT_CHECKPOINT
    assert path.is_file(), "run `make train-lstm`"
    assert path.stat().st_size < 200_000


def test_registered_and_loads_meta(model: BaseModel) -> None:
    assert isinstance(model, lstm_module.LstmTimeseriesModel)
    assert model.name == "lstm_timeseries"
    assert model.meta["hidden_size"] == 64
    assert model.meta["val_rollout_mse"] < model.meta["val_naive_mse"]


def test_relative_checkpoint_setting_resolves_from_repo_root() -> None:
    instance = model_factory.create(
        "lstm_timeseries", {"checkpoint": "models/lstm_timeseries/1/weights.pt", "hidden_size": 64}
    )
    instance.load()
    values, config = instance.warmup_request()
    (out,) = instance.forward([instance.prepare(values, config)])
    assert out.predictions.shape == (5,)


@pytest.mark.parametrize("phase", [0.0, 1.0, 2.5, 4.0])
def test_sine_forecast_beats_repeat_last_value(model: BaseModel, phase: float) -> None:
    period, length, steps = 16.0, 32, 5
    t = np.arange(length + steps, dtype=np.float64)
    series = 3.0 + 2.0 * np.sin(2.0 * np.pi * t / period + phase)
    history, future = series[:length], series[length:]
    (out,) = model.forward([model.prepare(history.astype(np.float32), {"forecast_steps": steps})])
    model_mse = float(np.mean((out.predictions - future) ** 2))
    naive_mse = float(np.mean((history[-1] - future) ** 2))
    assert model_mse < naive_mse, (model_mse, naive_mse)


def test_output_shape_and_type(model: BaseModel) -> None:
    values = np.linspace(0.0, 1.0, 40, dtype=np.float32)
    for steps in (1, 7, 64):
        (out,) = model.forward([model.prepare(values, {"forecast_steps": steps})])
        assert out.predictions.shape == (steps,)
        assert out.predictions.dtype == np.float32
        assert out.confidence is None
        assert np.isfinite(out.predictions).all()


def test_batch_equals_single_requests(model: BaseModel) -> None:
    rng = np.random.default_rng(7)
    config = {"sequence_length": 12, "forecast_steps": 6}
    items = []
    for _ in range(24):
        length = int(rng.integers(12, 80))
        t = np.arange(length)
        values = rng.normal(0.0, 5.0) + rng.uniform(0.5, 4.0) * np.sin(
            2.0 * np.pi * t / rng.uniform(5.0, 40.0) + rng.uniform(0.0, 6.0)
        )
        items.append(model.prepare(values.astype(np.float32), config))
    keys = {item.batch_key for item in items}
    assert len(keys) == 1
    batched = model.forward(items)
    assert len(batched) == len(items)
    for item, out in zip(items, batched, strict=True):
        (alone,) = model.forward([item])
        np.testing.assert_allclose(out.predictions, alone.predictions, rtol=0, atol=1e-5)


def test_constant_series_is_finite(model: BaseModel) -> None:
    (out,) = model.forward([model.prepare([1234.5] * 16, {})])
    assert np.isfinite(out.predictions).all()
    np.testing.assert_allclose(out.predictions, 1234.5, rtol=1e-2)


def test_batch_key_separates_configs(model: BaseModel) -> None:
    values = np.zeros(32, dtype=np.float32)
    a = model.prepare(values, {"sequence_length": 10, "forecast_steps": 5})
    b = model.prepare(values, {"sequence_length": 20, "forecast_steps": 5})
    c = model.prepare(values, {"sequence_length": 10, "forecast_steps": 3})
    assert len({a.batch_key, b.batch_key, c.batch_key}) == 3


def test_too_short_input_is_rejected(model: BaseModel) -> None:
    with pytest.raises(InvalidInput, match=r"7 values but sequence_length is 10"):
        model.prepare(np.zeros(7, dtype=np.float32), {})
    with pytest.raises(InvalidInput, match=r"30 values but sequence_length is 31"):
        model.prepare(np.zeros(30, dtype=np.float32), {"sequence_length": 31})


def test_wrong_hidden_size_is_rejected_even_unloaded() -> None:
    unloaded = model_factory.create("lstm_timeseries")
    with pytest.raises(InvalidInput, match=r"'hidden_size' = 32 is not accepted \(accepted: 64\)"):
        unloaded.prepare(np.zeros(32, dtype=np.float32), {"hidden_size": 32})
    unloaded.prepare(np.zeros(32, dtype=np.float32), {"hidden_size": 64})


@pytest.mark.parametrize("served", [64, 32])
def test_described_hidden_size_is_exactly_the_served_one(served: int) -> None:
    instance = model_factory.create("lstm_timeseries", {"hidden_size": served})
    described = instance.describe_input()["config"]["hidden_size"]
    assert described["enum"] == [served] and described["default"] == served
    assert "minimum" not in described and "maximum" not in described
    # What the schema says is what prepare accepts (and the default needs no config).
    instance.prepare(np.zeros(32, dtype=np.float32), {"hidden_size": served})
    assert instance.prepare(np.zeros(32, dtype=np.float32), {}).config["hidden_size"] == served
    with pytest.raises(InvalidInput):
        instance.prepare(np.zeros(32, dtype=np.float32), {"hidden_size": served + 1})


@pytest.mark.parametrize(
    ("settings", "key", "problem"),
    [
        ({"checkpont": "x.pt"}, "checkpont", "Extra inputs are not permitted"),
        ({"hidden_size": "64"}, "hidden_size", "valid integer"),
        ({"hidden_size": 64.0}, "hidden_size", "valid integer"),
        ({"hidden_size": True}, "hidden_size", "valid integer"),
        ({"hidden_size": 0}, "hidden_size", "greater than or equal to 1"),
        ({"hidden_size": 4097}, "hidden_size", "less than or equal to 4096"),
        ({"checkpoint": 7}, "checkpoint", "path"),
    ],
)
def test_settings_are_strict(settings: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        model_factory.create("lstm_timeseries", settings)
    (error,) = caught.value.errors()
    assert error["loc"] == (key,)
    assert problem.lower() in error["msg"].lower()


def test_settings_are_typed_and_frozen() -> None:
    instance = LstmTimeseriesModel({"checkpoint": "models/other.pt", "hidden_size": 128})
    assert instance.settings.checkpoint == Path("models/other.pt")
    assert instance.settings.hidden_size == 128
    assert instance.checkpoint_path == lstm_module.REPO_ROOT / "models" / "other.pt"
    with pytest.raises(pydantic.ValidationError):
        instance.settings.hidden_size = 64
    defaults = LstmTimeseriesModel()
    assert defaults.settings.hidden_size == 64
    assert defaults.checkpoint_path == lstm_module.DEFAULT_CHECKPOINT


def test_nan_input_is_isolated_in_its_batch(model: BaseModel) -> None:
    values = np.ones(20, dtype=np.float32)
    values[5] = np.nan
    clean = [model.prepare(np.sin(np.arange(20, dtype=np.float32) + k), {}) for k in range(3)]
    results = model.run_batch([clean[0], model.prepare(values, {}), clean[1], clean[2]])
    assert isinstance(results[1], InvalidInput) and "NaN" in results[1].message
    without_bad = model.forward(clean)
    for item, result, same in zip(
        clean, [results[0], results[2], results[3]], without_bad, strict=True
    ):
        assert isinstance(result, ModelOutput)
        # Exactly the batch without the bad request; equal to running alone up to BLAS rounding.
        np.testing.assert_array_equal(result.predictions, same.predictions)
        (alone,) = model.forward([item])
        np.testing.assert_allclose(result.predictions, alone.predictions, rtol=1e-5, atol=1e-6)


def test_out_of_range_config_is_rejected(model: BaseModel) -> None:
    values = np.zeros(32, dtype=np.float32)
    with pytest.raises(InvalidInput):
        model.prepare(values, {"forecast_steps": 65})
    with pytest.raises(InvalidInput):
        model.prepare(values, {"sequence_length": 1})


def test_load_rejects_checkpoint_of_other_hidden_size() -> None:
    instance = model_factory.create("lstm_timeseries", {"hidden_size": 32})
    with pytest.raises(SettingsError, match=r"has hidden size 64 .* setting is 32") as caught:
        instance.load()
    assert caught.value.setting == "hidden_size"


def test_missing_checkpoint_says_how_to_make_it(tmp_path: Path) -> None:
    instance = model_factory.create("lstm_timeseries", {"checkpoint": str(tmp_path / "none.pt")})
    with pytest.raises(SettingsError, match="make train-lstm") as caught:
        instance.load()
    assert caught.value.setting == "checkpoint"


def test_a_file_that_is_not_a_checkpoint_names_the_setting(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    instance = model_factory.create("lstm_timeseries", {"checkpoint": str(junk)})
    with pytest.raises(SettingsError, match="not a readable lstm_timeseries checkpoint") as caught:
        instance.load()
    assert caught.value.setting == "checkpoint"


def test_normalisation_round_trip() -> None:
    rng = np.random.default_rng(0)
    windows = rng.normal(100.0, 3.0, (4, 10))
    mu, sigma = lstm_module.window_stats(windows)
    z = lstm_module.normalise(windows, mu, sigma)
    np.testing.assert_allclose(z.mean(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(lstm_module.denormalise(z, mu, sigma), windows)
    flat_mu, flat_sigma = lstm_module.window_stats(np.full((1, 10), -500.0))
    assert flat_sigma[0, 0] == pytest.approx(0.5)
    assert flat_mu[0, 0] == -500.0


@pytest.fixture(scope="module")
def shipped_net(model: BaseModel) -> lstm_module.LstmForecaster:
    assert isinstance(model, lstm_module.LstmTimeseriesModel)
    net = model._net
    assert net is not None
    return net


def _random_net(hidden: int, seed: int) -> lstm_module.LstmForecaster:
    torch.manual_seed(seed)
    return lstm_module.LstmForecaster(hidden).eval()


def _assert_fast_matches_rollout(
    net: lstm_module.LstmForecaster, x: torch.Tensor, steps: int, native: bool
) -> None:
    with torch.inference_mode():
        expected = net.rollout(x, steps)
        got = lstm_module.FastRollout(net, native)(x, steps)
    assert got.shape == expected.shape == (x.shape[0], steps)
    assert got.dtype == expected.dtype
    # float32 rounding only: rollout itself differs this much between its mkldnn and
    # native CPU kernels.
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


@NATIVE
@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 65),
    length=st.integers(2, 40),
    steps=st.integers(1, 8),
    scale=st.sampled_from([0.1, 1.0, 3.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fast_rollout_equals_rollout_shipped_weights(
    shipped_net: lstm_module.LstmForecaster,
    batch: int,
    length: int,
    steps: int,
    scale: float,
    seed: int,
    native: bool,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, 1, generator=generator) * scale
    _assert_fast_matches_rollout(shipped_net, x, steps, native)


@NATIVE
@pytest.mark.parametrize(
    ("hidden", "batch", "length", "steps"),
    [
        (1, 1, 2, 1),
        (7, 3, 5, 8),
        (33, 65, 40, 4),
        (64, 17, 1, 3),
        (128, 9, 12, 6),
    ],
)
def test_fast_rollout_equals_rollout_random_weights(
    hidden: int, batch: int, length: int, steps: int, native: bool
) -> None:
    net = _random_net(hidden, seed=hidden)
    x = torch.randn(batch, length, 1, generator=torch.Generator().manual_seed(batch))
    _assert_fast_matches_rollout(net, x, steps, native)


@NATIVE
def test_fast_rollout_snapshot_and_device(native: bool) -> None:
    net = _random_net(16, seed=3)
    fast = lstm_module.FastRollout(net, native)
    x = torch.randn(4, 6, 1)
    with torch.inference_mode():
        before = fast(x, 3)
        torch.nn.init.zeros_(net.head.weight)
        # A snapshot: changing the module afterwards does not reach an existing instance.
        np.testing.assert_array_equal(fast(x, 3).numpy(), before.numpy())
        meta_net = _random_net(16, seed=3).to("meta")
        out = lstm_module.FastRollout(meta_net)(torch.empty(4, 6, 1, device="meta"), 3)
    # Every tensor it makes follows the module's device (meta stands in for CUDA here).
    assert out.device.type == "meta" and out.shape == (4, 3)
    with pytest.raises(ValueError, match="one step"):
        fast(x, 0)


def test_model_serves_through_the_fast_path(model: BaseModel) -> None:
    assert isinstance(model, lstm_module.LstmTimeseriesModel)
    net = model._net
    assert net is not None and isinstance(model._rollout, lstm_module.FastRollout)
    # Served on the C kernel wherever it can run (built, allowed, AVX2).
    assert model._rollout.native == lstm_module.kernel_available()
    items = [
        model.prepare(np.sin(np.arange(30, dtype=np.float32) / (k + 1)) * (k + 1) + k, {})
        for k in range(5)
    ]
    windows = np.stack([item.values[-10:] for item in items])
    z, mu, sigma = lstm_module.normalised_windows(windows)
    x = torch.from_numpy(z.astype(np.float32)).unsqueeze(-1)
    with torch.inference_mode():
        reference = net.rollout(x, 5).numpy()
    expected = lstm_module.denormalise(reference, mu, sigma).astype(np.float32)
    got = np.stack([out.predictions for out in model.forward(items)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(sigma.max()))


def _numpy_forecast(
    fast: lstm_module.FastRollout,
    windows: npt.NDArray[np.float32],
    steps: int,
    norm: tuple[float, float] | None,
) -> npt.NDArray[np.float32]:
    """What serving computed before forecast(): numpy normalisation, the rollout, numpy back."""
    if norm is None:
        z, mu, sigma = lstm_module.normalised_windows(windows)
    else:
        mu = np.full((len(windows), 1), norm[0])
        sigma = np.full((len(windows), 1), norm[1])
        z = lstm_module.normalise(windows, mu, sigma)
    with torch.inference_mode():
        raw = fast(torch.from_numpy(z.astype(np.float32)).unsqueeze(-1), steps).numpy()
    return lstm_module.denormalise(raw, mu, sigma).astype(np.float32)


@NATIVE
@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 40),
    length=st.integers(1, 40),
    steps=st.integers(1, 8),
    centre=st.floats(-1e4, 1e4),
    scale=st.sampled_from([0.0, 1e-4, 1.0, 50.0]),
    norm=st.one_of(st.none(), st.tuples(st.floats(-100.0, 100.0), st.floats(0.01, 100.0))),
    seed=st.integers(0, 2**16),
)
def test_forecast_in_one_call_is_the_numpy_pipeline(
    shipped_net: lstm_module.LstmForecaster,
    batch: int,
    length: int,
    steps: int,
    centre: float,
    scale: float,
    norm: tuple[float, float] | None,
    seed: int,
    native: bool,
) -> None:
    # The normalisation and its inverse moved into the TorchScript call (or the kernel):
    # the same float64 ops, so the forecasts are the numpy pipeline's up to the sum's
    # last-bit rounding.
    fast = lstm_module.FastRollout(shipped_net, native)
    rng = np.random.default_rng(seed)
    windows = (centre + scale * rng.normal(size=(batch, length))).astype(np.float32)
    expected = _numpy_forecast(fast, windows, steps, norm)
    with torch.inference_mode():
        got = fast.forecast(
            torch.from_numpy(windows), steps, *(norm if norm is not None else (0.0, 0.0))
        ).numpy()
    assert got.dtype == np.float32 and got.shape == (batch, steps)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * (1.0 + abs(centre)))


def test_window_stats_are_numpys_mean_and_std_exactly() -> None:
    rng = np.random.default_rng(1)
    for shape in [(1, 2), (5, 10), (64, 40), (3, 513)]:
        windows = rng.normal(rng.normal(0.0, 100.0), 10.0, shape).astype(np.float32)
        wide = windows.astype(np.float64)
        mu, sigma = lstm_module.window_stats(windows)
        np.testing.assert_array_equal(mu, wide.mean(axis=-1, keepdims=True))
        np.testing.assert_array_equal(sigma, wide.std(axis=-1, keepdims=True))
        z, mu2, sigma2 = lstm_module.normalised_windows(windows)
        np.testing.assert_array_equal(z, lstm_module.normalise(windows, mu, sigma))
        np.testing.assert_array_equal(mu2, mu)
        np.testing.assert_array_equal(sigma2, sigma)


def _eager_rollout(fast: lstm_module.FastRollout, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The same cell loop run op by op from Python (no TorchScript)."""
    return lstm_module._rollout(
        x,
        steps,
        fast.input_bias,
        fast.input_weight,
        fast.recurrent,
        fast.feedback,
        fast.feedback_bias,
        fast.head_weight,
        fast.head_bias,
        fast._half,
        fast._four,
    )


def test_compiled_rollout_is_the_eager_loop_bit_for_bit(
    shipped_net: lstm_module.LstmForecaster,
) -> None:
    # Called again and again, as a served model is: the graph executor would optimise
    # after the first calls (and change the rounding for a batch of one).
    fast = lstm_module.FastRollout(shipped_net, native=False)
    generator = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        for _ in range(3):
            for batch in (1, 3, 64):
                for length in (1, 2, 10):
                    for steps in (1, 5):
                        x = torch.randn(batch, length, 1, generator=generator)
                        assert torch.equal(fast(x, steps), _eager_rollout(fast, x, steps))


@NATIVE
def test_rollout_runs_while_another_thread_holds_the_gil(
    shipped_net: lstm_module.LstmForecaster, native: bool
) -> None:
    """The whole forward pass releases the GIL: the reactor's Python runs beside it.

    This thread spins in Python with a 10 s switch interval, so it never hands the GIL
    over on its own; a rollout that needs the GIL between its ops stalls meanwhile.
    """
    fast = lstm_module.FastRollout(shipped_net, native)
    x = torch.randn(8192, 10, 1, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast(x[:64], 5)  # compiled and warm before the measured call
    started = threading.Event()
    # The kernel as predict() calls it: numpy in and out, so the only GIL release is the
    # kernel's own (a torch op before it, such as a reshape, would release it early).
    windows = x[:, :, 0].numpy()

    def forward() -> None:
        with torch.inference_mode():
            started.set()
            if native:
                fast.forecast_array(windows, 5)
            else:
                fast(x, 5)

    worker = threading.Thread(target=forward)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        worker.start()
        started.wait(5.0)
        clock = time.pthread_getcpuclockid(worker.ident or 0)
        worker_before = time.clock_gettime(clock)
        # Spin (holding the GIL) until the worker has had 10 ms of CPU, or for 8 s (less
        # than the switch interval) on a machine too busy to give it a core sooner.
        deadline = time.perf_counter() + 8.0
        worker_cpu = 0.0
        while worker_cpu <= 0.01 and time.perf_counter() < deadline:
            worker_cpu = time.clock_gettime(clock) - worker_before
    finally:
        sys.setswitchinterval(interval)
    worker.join(30.0)
    # The pass costs 100+ ms of CPU alone; op by op it gets under a millisecond in 8 s.
    assert worker_cpu > 0.01
