"""moving_average: a windowed mean forecast, optionally following the window's trend."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from commonlib.models.base import (
    BaseModel,
    ConfigParam,
    InputSchema,
    ModelOutput,
    PreparedInput,
)
from commonlib.models.registry import model_factory

F64 = npt.NDArray[np.float64]


@model_factory.register("moving_average")
class MovingAverageModel(BaseModel):
    """Forecast = mean of the last ``window_size`` values, flat or along their trend.

    With ``include_trend`` the forecast follows the least-squares line through the
    window: step k lies at ``mean + slope * ((window_size - 1) / 2 + k)``.
    """

    version = "1"
    description = (
        "Moving-average forecaster: mean of the last window_size values, optionally "
        "extrapolating the window's least-squares trend."
    )
    config_params = {
        "forecast_steps": ConfigParam(int, 5, 1, 256, "number of future values to forecast"),
        "window_size": ConfigParam(int, 5, 1, 4096, "how many of the latest values are averaged"),
        "include_trend": ConfigParam(bool, False, doc="extrapolate the window's linear trend"),
    }
    input_schema = InputSchema(
        1, 4096, "the series, oldest first; at least window_size values", "window_size"
    )
    output_description = "forecast_steps forecasts, nearest first"

    def batch_key(self, config: Mapping[str, int | float | bool]) -> Hashable:
        """Requests with the same window, horizon and trend flag share one pass."""
        return (config["window_size"], config["forecast_steps"], config["include_trend"])

    def preprocess(self, batch: Sequence[PreparedInput]) -> tuple[F64, int, bool]:
        """Stack each request's last window into a [B, window] array."""
        config = batch[0].config
        window = int(config["window_size"])
        windows = np.stack([item.values[-window:] for item in batch]).astype(np.float64)
        return windows, int(config["forecast_steps"]), bool(config["include_trend"])

    def predict(self, batch_input: tuple[F64, int, bool]) -> F64:
        """One vectorised pass: [B, window] → [B, forecast_steps]."""
        windows, steps, trend = batch_input
        level = windows.mean(axis=1)
        horizon = np.arange(1, steps + 1, dtype=np.float64)
        if not trend or windows.shape[1] < 2:
            return np.repeat(level[:, None], steps, axis=1)
        width = windows.shape[1]
        centred = np.arange(width, dtype=np.float64) - (width - 1) / 2.0
        slope = (windows * centred).sum(axis=1) / float((centred * centred).sum())
        forecast: F64 = level[:, None] + slope[:, None] * ((width - 1) / 2.0 + horizon)[None, :]
        return forecast

    def postprocess(self, raw: F64, batch: Sequence[PreparedInput]) -> list[ModelOutput]:
        """One row of forecasts per request."""
        rows = raw.astype(np.float32)
        return [ModelOutput(rows[i]) for i in range(len(batch))]
