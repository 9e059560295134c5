"""Models served by the daemon and the registry they join.

Importing this package registers the bundled models with ``model_factory``.
"""

from commonlib.models import lstm_timeseries, motion_lstm, moving_average
from commonlib.models.base import (
    BaseModel,
    ConfigParam,
    InputSchema,
    ModelOutput,
    ModelSettings,
    PreparedInput,
    SettingsError,
)
from commonlib.models.registry import ModelFactory, model_factory

__all__ = [
    "BaseModel",
    "ConfigParam",
    "InputSchema",
    "ModelFactory",
    "ModelOutput",
    "ModelSettings",
    "PreparedInput",
    "SettingsError",
    "lstm_timeseries",
    "model_factory",
    "motion_lstm",
    "moving_average",
]
