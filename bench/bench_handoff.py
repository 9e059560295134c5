"""CPU per thread hand-off: Twisted's deferToThreadPool against commonlib.runner.

Each round trip hands an empty callable to a worker thread and waits for its
Deferred to fire back on the reactor thread, the way every batch does. The two
runners alternate in one process, so both see the same machine; the figure is
process CPU (both threads) per round trip, min over the repeats.

    .venv/bin/python bench/bench_handoff.py
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from commonlib.runner import ThreadPoolRunner

reactor: Any = _reactor


def nothing() -> None:
    """The work handed over: none, so only the crossing is measured."""


@inlineCallbacks
def round_trips(run: Callable[[], Deferred[Any]], n: int) -> Any:
    """CPU µs per sequential round trip."""
    started = time.process_time()
    for _ in range(n):
        yield run()
    return (time.process_time() - started) / n * 1e6


@inlineCallbacks
def main_async(n: int, repeats: int) -> Any:
    """Alternate the two runners and print the best figure of each."""
    pool = ThreadPool(minthreads=1, maxthreads=1, name="twisted")
    pool.start()
    lean = ThreadPoolRunner(reactor, 1, name="lean")
    lean.start()
    results: dict[str, list[float]] = {"deferToThreadPool": [], "commonlib.runner": []}
    try:
        for _ in range(repeats):
            results["deferToThreadPool"].append(
                (yield round_trips(lambda: deferToThreadPool(reactor, pool, nothing), n))
            )
            results["commonlib.runner"].append((yield round_trips(lambda: lean.run(nothing), n)))
    finally:
        pool.stop()
        lean.stop()
    best = {name: min(values) for name, values in results.items()}
    for name, value in best.items():
        print(f"{name:18} {value:7.1f} µs CPU per round trip (min of {repeats})")
    ratio = best["deferToThreadPool"] / best["commonlib.runner"]
    print(f"deferToThreadPool / commonlib.runner = {ratio:.2f}x")


def main() -> None:
    """Run the comparison on the default reactor."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="round trips per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    d = main_async(args.n, args.repeats)
    d.addErrback(lambda f: f.printTraceback())
    d.addBoth(lambda _: reactor.stop())
    reactor.run()


if __name__ == "__main__":
    main()
