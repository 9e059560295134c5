"""The regression gate: every served model version still gives its stored predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from commonlib.goldens import (
    ATOL,
    RTOL,
    Case,
    check,
    diff_line,
    golden_path,
    read_cases,
    served_models,
    write_goldens,
)
from commonlib.models.base import BaseModel
from util.config import load_config

SERVED = sorted(name for name, m in load_config().inference.models.items() if m.enabled)


@pytest.fixture(scope="module")
def models() -> dict[str, BaseModel]:
    return {model.name: model for model in served_models()}


@pytest.mark.parametrize("name", SERVED)
def test_served_model_matches_its_goldens(name: str, models: dict[str, BaseModel]) -> None:
    """On failure: one line naming each input that moved and by how much."""
    model = models[name]
    assert golden_path(name, model.version).exists(), f"no goldens for {name}: make goldens"
    line = check(model)
    if line:
        pytest.fail(line, pytrace=False)


def test_goldens_cover_every_served_model_with_several_inputs(
    models: dict[str, BaseModel],
) -> None:
    assert sorted(models) == SERVED == ["lstm_timeseries", "motion_lstm", "moving_average"]
    for name, model in models.items():
        assert len(read_cases(golden_path(name, model.version))) >= 5


def test_a_moved_prediction_is_named_with_its_change() -> None:
    cases = [
        Case("steady", [1.0], {}, [10.0, 20.0]),
        Case("nudged", [2.0], {}, [10.0, 20.0]),
        Case("moved", [3.0], {}, [10.0, 20.0]),
        Case("near_zero", [4.0], {}, [0.0]),
        Case("shape", [5.0], {}, [1.0]),
    ]
    got = [[10.0, 20.0], [10.19, 19.8], [10.0, 21.0], [0.01], [1.0, 2.0]]
    assert diff_line("m", "3", cases, got) == (
        "goldens m v3: 3 of 5 inputs moved beyond 2% (+0.0001): "
        "moved pred[1] 20 -> 21 (+5.00%); near_zero pred[0] 0 -> 0.01 (+0.01 absolute); "
        "shape: 2 predictions, stored 1 (if intended: make goldens)"
    )
    assert diff_line("m", "3", cases[:2], got[:2]) == ""
    assert RTOL == 0.02 and ATOL < 1e-3


def test_a_model_whose_predictions_move_fails_the_gate(
    tmp_path: Path, models: dict[str, BaseModel]
) -> None:
    """The gate on a real model against goldens that no longer match it (as a changed model)."""
    model = models["moving_average"]
    path = write_goldens(model, tmp_path)
    assert check(model, tmp_path) == ""
    document = json.loads(path.read_text())
    document["cases"][1]["predictions"][2] *= 1.03  # as if the model now gave 3 % less
    path.write_text(json.dumps(document))
    line = check(model, tmp_path)
    assert line.startswith("goldens moving_average v1: 1 of 6 inputs moved beyond 2%")
    assert "sine_w10_trend pred[2]" in line and "(-2.91%)" in line
    assert "\n" not in line


def test_regenerating_keeps_the_stored_inputs(tmp_path: Path, models: dict[str, BaseModel]) -> None:
    model = models["moving_average"]
    path = write_goldens(model, tmp_path)
    document = json.loads(path.read_text())
    document["cases"] = document["cases"][:1]
    document["cases"][0]["values"] = [1.0, 2.0, 3.0, 4.0, 5.0]
    document["cases"][0]["predictions"] = [0.0]
    path.write_text(json.dumps(document))
    write_goldens(model, tmp_path)
    (case,) = read_cases(path)
    assert case.values == [1.0, 2.0, 3.0, 4.0, 5.0] and case.predictions == [3.0] * 5
