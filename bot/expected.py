"""The bot's own moving-average forecast, to check the server's answers under load.

Written independently of the server's model code: mean of the last ``window``
values; with the trend, the least-squares line through the window extrapolated
``k`` steps past its end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def moving_average_forecast(
    values: Sequence[float], steps: int = 5, window: int = 5, trend: bool = False
) -> list[float]:
    """The forecast the server must return for this request."""
    tail = np.asarray(values, dtype=np.float64)[-window:]
    level = float(tail.mean())
    if not trend or window < 2:
        return [level] * steps
    slope = float(np.polyfit(np.arange(window, dtype=np.float64), tail, 1)[0])
    return [level + slope * ((window - 1) / 2.0 + k) for k in range(1, steps + 1)]


def matches(predictions: Sequence[float], expected: Sequence[float], tol: float = 1e-3) -> bool:
    """Whether the server's float32 predictions equal the expectation (within ``tol``).

    Plain Python on purpose: it runs for every reply, and numpy's allclose costs
    tens of microseconds per call on a handful of values.
    """
    if len(predictions) != len(expected):
        return False
    return all(abs(p - e) <= tol + tol * abs(e) for p, e in zip(predictions, expected, strict=True))
