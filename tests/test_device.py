"""Device choice: CUDA when present and asked for, the CPU otherwise (no GPU here)."""

from __future__ import annotations

import pytest

from commonlib.device import cuda_available, resolve_device


def test_cpu_is_always_cpu() -> None:
    assert resolve_device("cpu") == "cpu"


def test_cuda_falls_back_to_the_cpu_when_absent() -> None:
    if cuda_available():
        pytest.skip("this machine has a GPU: the fallback path is not reachable")
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cuda") == "cpu"


def test_lstm_runs_on_the_resolved_device() -> None:
    from commonlib.models.lstm_timeseries import LstmTimeseriesModel

    device = resolve_device("auto")
    model = LstmTimeseriesModel({"hidden_size": 64}, device)
    model.load()
    (out,) = model.forward([model.prepare([float(i % 5) for i in range(16)], {})])
    assert out.predictions.shape == (5,)
