"""The regression gate: fixed inputs with stored outputs for each served model version.

``tests/goldens/<model>/<version>.json`` holds, for one model version, a list of
named cases (input series, request config, the predictions it gave). The gate runs
each case through the model exactly as the server does (``prepare``, then
``run_batch``, on the settings of ``config/default.yaml``) and compares: a
prediction moved when ``|new - stored| > RTOL * |stored| + ATOL``. Any move is
reported as one line naming each input that moved and by how much.

``make goldens`` (``scripts/goldens.py --write``) stores the current predictions;
it keeps the stored inputs and only creates inputs for a model version that has
no file yet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import commonlib.models  # noqa: F401 - registers the bundled models
from commonlib.json_floats import float32_list
from commonlib.models.base import BaseModel, ConfigScalar, ModelOutput
from commonlib.models.registry import ModelFactory, model_factory
from commonlib.motion import generate_motion
from util.config import PROJECT_ROOT, Config, load_config

GOLDENS_DIR = PROJECT_ROOT / "tests" / "goldens"
RTOL = 0.02
ATOL = 1e-4
"""Absolute slack for predictions near zero, where a relative tolerance means nothing."""


@dataclass(frozen=True)
class Case:
    """One fixed input: its name, series and request config, and the stored predictions."""

    name: str
    values: list[float]
    config: dict[str, ConfigScalar]
    predictions: list[float]


def golden_path(model: str, version: str, directory: Path = GOLDENS_DIR) -> Path:
    """Where the goldens of ``model`` at ``version`` live."""
    return directory / model / f"{version}.json"


def served_models(
    config: Config | None = None, factory: ModelFactory = model_factory
) -> Iterator[BaseModel]:
    """Each model version the config serves, loaded on the CPU with its settings."""
    from aiServer.facade import model_specs  # the daemon's own reading of the config

    specs = model_specs((config or load_config()).inference, factory)
    for _, spec in sorted(specs.items()):
        model = spec.cls(spec.settings, "cpu")
        model.load()
        yield model


def run_case(model: BaseModel, values: Sequence[float], config: Mapping[str, Any]) -> list[float]:
    """The predictions the server gives for one request (validation, then a batch of one)."""
    (output,) = model.run_batch([model.prepare(values, config)])
    assert isinstance(output, ModelOutput), output
    return [float(v) for v in output.predictions]


def _series(kind: str, n: int, seed: int = 0) -> list[float]:
    t = np.arange(n, dtype=np.float64)
    rng = np.random.default_rng(seed)
    shapes = {
        "ramp": 0.5 * t + 1.0,
        "sine": np.sin(t / 3.0),
        "noisy_sine": 2.0 * np.sin(t / 5.0) + rng.normal(0.0, 0.2, n),
        "walk": np.cumsum(rng.normal(0.0, 1.0, n)),
        "trend": 10.0 + 0.3 * t + np.sin(t / 2.0) + rng.normal(0.0, 0.1, n),
        "level": np.full(n, 4.25),
        "negative": -3.0 - 0.2 * t + 0.5 * np.cos(t),
    }
    return float32_list(shapes[kind].astype(np.float32).tolist())


def new_inputs(model: str) -> list[tuple[str, list[float], dict[str, ConfigScalar]]]:
    """The fixed inputs of a model that has no goldens yet: (name, series, config)."""
    if model == "moving_average":
        return [
            ("ramp_default", _series("ramp", 12), {}),
            ("sine_w10_trend", _series("sine", 40), {"window_size": 10, "include_trend": True}),
            ("noisy_w1", _series("noisy_sine", 30, 1), {"window_size": 1, "forecast_steps": 3}),
            ("level_trend", _series("level", 8), {"include_trend": True, "forecast_steps": 8}),
            (
                "negative_w64_trend",
                _series("negative", 256),
                {"window_size": 64, "include_trend": True},
            ),
            ("walk_w32_s16", _series("walk", 100, 2), {"window_size": 32, "forecast_steps": 16}),
        ]
    if model == "lstm_timeseries":
        return [
            ("sine_default", _series("sine", 40), {}),
            ("sine_seq32_f10", _series("sine", 64), {"sequence_length": 32, "forecast_steps": 10}),
            ("ramp_fixed_norm", _series("ramp", 20), {"norm_mean": 5.0, "norm_std": 3.0}),
            ("noisy_sine", _series("noisy_sine", 50, 3), {"forecast_steps": 8}),
            (
                "walk_seq64_f16",
                _series("walk", 80, 4),
                {"sequence_length": 64, "forecast_steps": 16},
            ),
            ("trend_seq2", _series("trend", 30, 5), {"sequence_length": 2, "forecast_steps": 1}),
        ]
    if model == "motion_lstm":
        return [
            (
                f"walk_seed{seed}_{frames}f",
                float32_list(generate_motion(seed, frames).reshape(-1).tolist()),
                {},
            )
            for seed, frames in ((0, 1), (0, 16), (1, 8), (2, 32), (3, 64))
        ]
    raise KeyError(f"no golden inputs are defined for model '{model}' (add them in {__name__})")


def read_cases(path: Path) -> list[Case]:
    """The cases stored in ``path``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Case(c["name"], c["values"], c["config"], c["predictions"]) for c in data["cases"]]


def write_goldens(model: BaseModel, directory: Path = GOLDENS_DIR) -> Path:
    """Store ``model``'s current predictions for its inputs (kept, or new when it has none)."""
    path = golden_path(model.name, model.version, directory)
    if path.exists():
        inputs = [(c.name, c.values, c.config) for c in read_cases(path)]
    else:
        inputs = new_inputs(model.name)
    # A case on three lines (not one number per line): reviewable diffs.
    cases = [
        f'  {{"name": {json.dumps(name)}, "config": {json.dumps(config)},\n'
        f'   "values": {json.dumps(values)},\n'
        f'   "predictions": {json.dumps(float32_list(run_case(model, values, config)))}}}'
        for name, values, config in inputs
    ]
    header = json.dumps(
        {
            "model": model.name,
            "version": model.version,
            "tolerance": {"relative": RTOL, "absolute": ATOL},
            "regenerate": "make goldens",
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    text = header[:-1] + ',\n "cases": [\n' + ",\n".join(cases) + "\n ]}\n"
    path.write_text(text, encoding="utf-8")
    return path


def moved(case: Case, predictions: Sequence[float]) -> str | None:
    """How ``case`` moved (its worst prediction), or None when every prediction is within
    the tolerance."""
    stored = case.predictions
    if len(predictions) != len(stored):
        return f"{case.name}: {len(predictions)} predictions, stored {len(stored)}"
    worst: tuple[float, int] | None = None
    for i, (new, old) in enumerate(zip(predictions, stored, strict=True)):
        error = abs(new - old)
        if math.isnan(new) or error > RTOL * abs(old) + ATOL:
            excess = math.inf if math.isnan(new) else error / (RTOL * abs(old) + ATOL)
            if worst is None or excess > worst[0]:
                worst = (excess, i)
    if worst is None:
        return None
    i = worst[1]
    new, old = predictions[i], stored[i]
    change = f"{(new - old) / abs(old):+.2%}" if old else f"{new - old:+.4g} absolute"
    return f"{case.name} pred[{i}] {old:.6g} -> {new:.6g} ({change})"


def diff_line(model: str, version: str, cases: Sequence[Case], got: Sequence[list[float]]) -> str:
    """One line naming every case that moved beyond the tolerance ("" when none did)."""
    moves = [m for case, new in zip(cases, got, strict=True) if (m := moved(case, new))]
    if not moves:
        return ""
    return (
        f"goldens {model} v{version}: {len(moves)} of {len(cases)} inputs moved beyond "
        f"{RTOL:.0%} (+{ATOL:g}): " + "; ".join(moves) + " (if intended: make goldens)"
    )


def check(model: BaseModel, directory: Path = GOLDENS_DIR) -> str:
    """The diff line of ``model`` against its stored goldens ("" when they hold)."""
    path = golden_path(model.name, model.version, directory)
    if not path.exists():
        return f"goldens {model.name} v{model.version}: no {path} (run make goldens)"
    cases = read_cases(path)
    got = [run_case(model, case.values, case.config) for case in cases]
    return diff_line(model.name, model.version, cases, got)
