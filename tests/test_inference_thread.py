"""Model work runs on the daemon's own thread pool, never on the reactor thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.selectreactor import SelectReactor
from twisted.python.failure import Failure

from aiServer.facade import AIFacade
from commonlib.models.moving_average import MovingAverageModel
from commonlib.models.registry import ModelFactory
from commonlib.runner import ThreadPoolRunner
from util.config import InferenceConfig, ModelConfig


def _run(reactor: SelectReactor, runner: ThreadPoolRunner, go: Callable[[], None]) -> None:
    """Start the runner, run the reactor from ``go`` until stopped (30 s at most)."""
    runner.start()
    try:
        reactor.callWhenRunning(go)
        reactor.callLater(30, reactor.stop)
        reactor.run(installSignalHandlers=False)
    finally:
        runner.stop()


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

    _run(reactor, runner, go)
    (results,) = outcome
    assert len(results) == 50
    assert predict_threads and load_threads
    assert reactor_thread[0] not in predict_threads
    assert reactor_thread[0] not in load_threads
    # The daemon's own pool, not the reactor's shared one.
    assert thread_names and all(name.startswith("test-inference-") for name in thread_names)


def test_run_with_calls_back_on_the_reactor_thread_without_a_deferred() -> None:
    reactor = SelectReactor()
    runner = ThreadPoolRunner(reactor, threads=1, name="test-callback")
    results: list[tuple[str, Any, int]] = []
    work_threads: list[int] = []

    def work() -> int:
        work_threads.append(threading.get_ident())
        return 42

    def broken() -> int:
        raise ValueError("boom")

    def go() -> None:
        runner.run_with(work, lambda r: results.append(("done", r, threading.get_ident())), fail)
        runner.run_with(broken, lambda r: results.append(("done", r, 0)), fail)

    def fail(failure: Failure) -> None:
        results.append(("failed", failure.value, threading.get_ident()))
        reactor.stop()

    _run(reactor, runner, go)
    reactor_thread = threading.get_ident()
    assert [(kind, thread) for kind, _, thread in results] == [
        ("done", reactor_thread),
        ("failed", reactor_thread),
    ]
    assert results[0][1] == 42
    assert isinstance(results[1][1], ValueError)
    assert work_threads and work_threads[0] != reactor_thread
