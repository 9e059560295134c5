"""Model work runs on the daemon's own thread pool, never on the reactor thread."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.selectreactor import SelectReactor

from aiServer.facade import AIFacade
from commonlib.models.moving_average import MovingAverageModel
from commonlib.models.registry import ModelFactory
from commonlib.runner import ThreadPoolRunner
from util.config import InferenceConfig, ModelConfig


def test_inference_never_runs_on_the_reactor_thread() -> None:
    factory = ModelFactory()
    predict_threads: list[int] = []
    load_threads: list[int] = []
    thread_names: set[str] = set()

    @factory.register("probe")
    class Probe(MovingAverageModel):
        def load(self) -> None:
            load_threads.append(threading.get_ident())

        def predict(self, batch_input: Any) -> Any:
            predict_threads.append(threading.get_ident())
            thread_names.add(threading.current_thread().name)
            return super().predict(batch_input)

    reactor = SelectReactor()
    runner = ThreadPoolRunner(reactor, threads=2, name="test-inference")
    config = InferenceConfig(models={"probe": ModelConfig()})
    facade = AIFacade(config, factory, runner, reactor)
    outcome: list[Any] = []
    reactor_thread: list[int] = []

    def go() -> None:
        reactor_thread.append(threading.get_ident())
        runs = [facade.infer("probe", "", [1, 2, 3, 4, float(i)], {}) for i in range(50)]
        gatherResults(runs).addBoth(outcome.append).addBoth(lambda _: reactor.stop())

    runner.start()
    try:
        reactor.callWhenRunning(go)
        reactor.callLater(30, reactor.stop)
        reactor.run(installSignalHandlers=False)
    finally:
        runner.stop()
    (results,) = outcome
    assert len(results) == 50
    assert predict_threads and load_threads
    assert reactor_thread[0] not in predict_threads
    assert reactor_thread[0] not in load_threads
    # The daemon's own pool, not the reactor's shared one.
    assert thread_names and all(name.startswith("test-inference-") for name in thread_names)
