"""The LRU model loader: eviction order, hit/miss counts, and concurrent loads of one model."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import pytest

from commonlib.models.base import (
    BaseModel,
    ModelOutput,
    ModelSettings,
    ModelSpec,
    PreparedInput,
)
from commonlib.models.loader import ModelLoader
from commonlib.models.moving_average import MovingAverageModel


class CountingSettings(ModelSettings):
    key: str = ""


class CountingModel(BaseModel):
    """A model whose load blocks until the test lets it finish, and counts its loads."""

    settings_model = CountingSettings
    settings: CountingSettings

    loads: ClassVar[dict[str, int]] = {}
    gate: ClassVar[threading.Event] = threading.Event()
    started: ClassVar[threading.Event] = threading.Event()

    def load(self) -> None:
        CountingModel.started.set()
        assert CountingModel.gate.wait(10)
        key = self.settings.key
        CountingModel.loads[key] = CountingModel.loads.get(key, 0) + 1

    def batch_key(self, config: Mapping[str, int | float | bool]) -> Hashable:
        return None

    def preprocess(self, batch: Sequence[PreparedInput]) -> Any:
        return batch

    def predict(self, batch_input: Any) -> Any:
        return batch_input

    def postprocess(self, raw: Any, batch: Sequence[PreparedInput]) -> list[ModelOutput]:
        return [ModelOutput(item.values) for item in batch]


@pytest.fixture(autouse=True)
def _reset() -> None:
    CountingModel.loads.clear()
    CountingModel.gate.set()
    CountingModel.started.clear()


def _loader(names: Sequence[str], capacity: int) -> ModelLoader:
    specs = {name: ModelSpec(CountingModel, CountingSettings(key=name)) for name in names}
    return ModelLoader(specs, capacity)


def test_the_least_recently_used_model_is_evicted_first() -> None:
    loader = _loader(["a", "b", "c"], capacity=2)
    loader.get("a")
    loader.get("b")
    loader.get("a")  # a is now the most recently used
    loader.get("c")  # evicts b
    info = loader.cache_info()
    assert info.loaded_models == ("a", "c")
    assert (info.hits, info.misses, info.evictions) == (1, 3, 1)
    assert not loader.is_loaded("b")
    loader.get("b")  # loads again, evicting a (least recently used now)
    assert loader.cache_info().loaded_models == ("c", "b")
    assert CountingModel.loads == {"a": 1, "b": 2, "c": 1}


def test_a_model_is_loaded_once_however_many_threads_ask_at_once() -> None:
    loader = _loader(["a"], capacity=1)
    CountingModel.gate.clear()
    got: list[BaseModel] = []
    threads = [threading.Thread(target=lambda: got.append(loader.get("a"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert CountingModel.started.wait(10)
    CountingModel.gate.set()
    for thread in threads:
        thread.join(10)
    assert len(got) == 8 and all(model is got[0] for model in got)
    assert CountingModel.loads == {"a": 1}
    info = loader.cache_info()
    assert info.misses == 1 and info.hits == 7


def test_a_failed_load_is_not_cached_and_the_next_get_retries(tmp_path: Any) -> None:
    from commonlib.models.base import SettingsError
    from commonlib.models.lstm_timeseries import LstmSettings, LstmTimeseriesModel

    settings = LstmSettings(checkpoint=tmp_path / "none.pt")
    loader = ModelLoader({"lstm": ModelSpec(LstmTimeseriesModel, settings)}, 1)
    for _ in range(2):
        with pytest.raises(SettingsError):
            loader.get("lstm")
    assert loader.cache_info().misses == 2 and not loader.is_loaded("lstm")


def test_unknown_names_and_bad_capacity_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ModelLoader({}, 0)
    loader = ModelLoader({"ma": ModelSpec(MovingAverageModel)}, 1)
    with pytest.raises(KeyError):
        loader.get("nope")
