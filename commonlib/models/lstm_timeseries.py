"""lstm_timeseries: a small torch LSTM that forecasts a series autoregressively.

Each request's last ``sequence_length`` values are normalised by their own mean and
(floored) standard deviation, run through a one-layer LSTM in one pass, and the
network's next-value prediction is fed back ``forecast_steps - 1`` times with the
carried LSTM state. Forecasts are mapped back with the same mean and deviation.

``scripts/train_lstm.py`` trains :class:`LstmForecaster` with the same
:func:`window_stats` / :func:`normalise` functions and writes the shipped checkpoint
``models/lstm_timeseries.pt``.
"""

from __future__ import annotations

import commonlib.torch_env  # noqa: F401 - sets OMP_NUM_THREADS; must run before torch loads

# isort: split

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from commonlib.models.base import (
    BaseModel,
    ConfigParam,
    FloatArray,
    InputSchema,
    ModelOutput,
    PreparedInput,
)
from commonlib.models.registry import model_factory
from util.errors import InvalidInput

F64 = npt.NDArray[np.float64]
LstmState = tuple[torch.Tensor, torch.Tensor]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root; relative checkpoint paths are resolved against it."""

DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "lstm_timeseries.pt"
"""Where ``make train-lstm`` writes the shipped checkpoint."""

DEFAULT_HIDDEN_SIZE = 64
"""Hidden size of the shipped checkpoint."""

SIGMA_FLOOR = 1e-3
"""A window's scale is at least ``SIGMA_FLOOR * max(1, |mean|)`` (flat windows)."""


def window_stats(windows: npt.ArrayLike) -> tuple[F64, F64]:
    """Per-row mean and floored standard deviation of a [B, T] array, each shaped [B, 1].

    The deviation is floored at ``SIGMA_FLOOR * max(1, |mean|)`` so a flat (or
    nearly flat) window does not blow the normalised values up.
    """
    w = np.asarray(windows, dtype=np.float64)
    mu = w.mean(axis=-1, keepdims=True)
    floor = SIGMA_FLOOR * np.maximum(1.0, np.abs(mu))
    sigma = np.maximum(w.std(axis=-1, keepdims=True), floor)
    return mu, sigma


def normalise(values: npt.ArrayLike, mu: F64, sigma: F64) -> F64:
    """``(values - mu) / sigma`` row by row (``mu``/``sigma`` as from :func:`window_stats`)."""
    return (np.asarray(values, dtype=np.float64) - mu) / sigma


def denormalise(values: npt.ArrayLike, mu: F64, sigma: F64) -> F64:
    """Inverse of :func:`normalise`."""
    return np.asarray(values, dtype=np.float64) * sigma + mu


class LstmForecaster(nn.Module):
    """One LSTM layer over a scalar series and a linear head predicting the next value."""

    def __init__(self, hidden_size: int = DEFAULT_HIDDEN_SIZE) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size=1, hidden_size=hidden_size, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(
        self, x: torch.Tensor, state: LstmState | None = None
    ) -> tuple[torch.Tensor, LstmState]:
        """[B, T, 1] inputs → ([B, T, 1] next-value predictions, final (h, c))."""
        out, new_state = self.lstm(x, state)
        return cast(torch.Tensor, self.head(out)), cast(LstmState, new_state)

    def rollout(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Forecast ``steps`` values after [B, T, 1] ``x``, feeding predictions back → [B, steps].

        One pass over the whole context, then ``steps - 1`` single-step passes that
        carry the LSTM state and take the previous prediction as input.
        """
        pred, state = self(x)
        last = pred[:, -1:, :]
        outputs = [last]
        for _ in range(steps - 1):
            last, state = self(last, state)
            outputs.append(last)
        return torch.cat(outputs, dim=1).squeeze(-1)


@dataclass(frozen=True)
class LstmBatch:
    """A preprocessed batch: normalised windows on the model's device and their scales."""

    inputs: torch.Tensor
    mu: F64
    sigma: F64
    steps: int


@model_factory.register("lstm_timeseries")
class LstmTimeseriesModel(BaseModel):
    """Autoregressive LSTM forecaster over each request's last ``sequence_length`` values.

    Settings: ``checkpoint`` (path, relative paths from the repository root; default
    ``models/lstm_timeseries.pt``) and ``hidden_size`` (must match the checkpoint;
    default 64).
    """

    version = "1"
    description = (
        "LSTM forecaster (torch, one layer): normalises the last sequence_length values "
        "and rolls the network forward forecast_steps times with its carried state."
    )
    config_params = {
        "forecast_steps": ConfigParam(int, 5, 1, 64, "number of future values to forecast"),
        "sequence_length": ConfigParam(
            int, 10, 2, 512, "how many of the latest values the network reads"
        ),
        "hidden_size": ConfigParam(
            int, DEFAULT_HIDDEN_SIZE, 1, 4096, "LSTM hidden size; must match the loaded checkpoint"
        ),
    }
    input_schema = InputSchema(
        2, 4096, "the series, oldest first; at least sequence_length values", "sequence_length"
    )
    output_description = "forecast_steps forecasts, nearest first"

    def __init__(self, settings: Mapping[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(settings, device)
        self._net: LstmForecaster | None = None
        self.meta: dict[str, Any] = {}

    @property
    def expected_hidden_size(self) -> int:
        """The hidden size this instance serves (the ``hidden_size`` setting, default 64)."""
        return int(self.settings.get("hidden_size", DEFAULT_HIDDEN_SIZE))

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint file, from the ``checkpoint`` setting or the shipped default."""
        path = Path(self.settings.get("checkpoint", DEFAULT_CHECKPOINT))
        return path if path.is_absolute() else REPO_ROOT / path

    def check_config(self, config: Mapping[str, int | float | bool]) -> None:
        """hidden_size must match the checkpoint's."""
        hidden = int(config["hidden_size"])
        if hidden != self.expected_hidden_size:
            raise InvalidInput(
                f"config hidden_size is {hidden} but the lstm_timeseries checkpoint "
                f"has hidden size {self.expected_hidden_size}"
            )

    def batch_key(self, config: Mapping[str, int | float | bool]) -> Hashable:
        """Requests with the same context length and horizon share one pass."""
        return (config["sequence_length"], config["forecast_steps"])

    def load(self) -> None:
        """Read the checkpoint onto ``self.device``. FileNotFoundError / ValueError if unusable."""
        torch.set_num_threads(1)
        path = self.checkpoint_path
        if not path.is_file():
            raise FileNotFoundError(
                f"lstm_timeseries checkpoint {path} not found; run `make train-lstm` to create it"
            )
        checkpoint = torch.load(path, map_location=self.device, weights_only=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(f"{path} is not an lstm_timeseries checkpoint (no state_dict)")
        state_dict = cast(dict[str, torch.Tensor], checkpoint["state_dict"])
        meta = cast(dict[str, Any], checkpoint.get("meta", {}))
        weight = state_dict.get("head.weight")
        if weight is None:
            raise ValueError(f"{path} is not an lstm_timeseries checkpoint (no head.weight)")
        hidden = int(weight.shape[1])
        if hidden != self.expected_hidden_size:
            raise ValueError(
                f"checkpoint {path} has hidden size {hidden} but the lstm_timeseries "
                f"hidden_size setting is {self.expected_hidden_size}; retrain with "
                f"`scripts/train_lstm.py --hidden-size {self.expected_hidden_size}` "
                f"or set hidden_size: {hidden}"
            )
        net = LstmForecaster(hidden)
        net.load_state_dict(state_dict)
        net.to(self.device)
        net.eval()
        self._net = net
        self.meta = meta

    def preprocess(self, batch: Sequence[PreparedInput]) -> LstmBatch:
        """Normalise each request's last window and stack them into a [B, T, 1] tensor."""
        config = batch[0].config
        length = int(config["sequence_length"])
        windows = np.stack([item.values[-length:] for item in batch])
        mu, sigma = window_stats(windows)
        z = normalise(windows, mu, sigma).astype(np.float32)
        inputs = torch.from_numpy(z).unsqueeze(-1).to(self.device)
        return LstmBatch(inputs, mu, sigma, int(config["forecast_steps"]))

    def predict(self, batch_input: LstmBatch) -> FloatArray:
        """One LSTM pass plus the autoregressive steps → de-normalised [B, forecast_steps]."""
        net = self._net
        if net is None:
            raise RuntimeError("lstm_timeseries used before load()")
        with torch.inference_mode():
            z = net.rollout(batch_input.inputs, batch_input.steps)
        raw = z.cpu().numpy()
        return denormalise(raw, batch_input.mu, batch_input.sigma).astype(np.float32)

    def postprocess(self, raw: FloatArray, batch: Sequence[PreparedInput]) -> list[ModelOutput]:
        """One row of forecasts per request."""
        return [ModelOutput(np.ascontiguousarray(raw[i])) for i in range(len(batch))]
