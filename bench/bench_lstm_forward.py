"""The lstm_timeseries forward pass: ``LstmForecaster.rollout`` against ``FastRollout``.

Times the network alone on one [B, T, 1] batch (the shipped checkpoint, on the CPU,
one thread) for several batch sizes: ``FastRollout`` on TorchScript ("fast") and on the
C kernel ("kernel", commonlib/models/_lstmkernel.c; shown when it is built and the CPU
has AVX2). The variants run interleaved, round after round, and each reports its
fastest round, so drift and noise on a shared machine hit them alike. Also shown:
``rollout`` with ``torch.backends.mkldnn`` off, and the whole ``run_batch``
(preprocess, forward with the normalisation, postprocess) on TorchScript and on the
kernel, what the model thread spends per batch.

    .venv/bin/python bench/bench_lstm_forward.py
    .venv/bin/python bench/bench_lstm_forward.py --sequence-length 40 --steps 8
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import commonlib.torch_env  # noqa: F401 - sets OMP_NUM_THREADS before torch loads

# isort: split

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from commonlib.models.lstm_timeseries import (
    FastRollout,
    LstmForecaster,
    LstmTimeseriesModel,
    kernel_available,
    normalised_windows,
)

BATCH_SIZES = (1, 16, 32, 48, 64, 128)


def best_of(
    variants: dict[str, Callable[[], object]],
    rounds: int,
    number: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Seconds per call of each variant: the fastest of ``rounds`` rounds of ``number`` calls."""
    best = dict.fromkeys(variants, float("inf"))
    for fn in variants.values():
        for _ in range(max(3, number // 4)):
            fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            started = clock()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (clock() - started) / number)
    return best


def without_mkldnn(net: LstmForecaster, x: torch.Tensor, steps: int) -> torch.Tensor:
    """``net.rollout`` with the oneDNN (mkldnn) LSTM kernel switched off."""
    # The switch behind ``torch.backends.mkldnn.enabled``, set directly:
    # ``torch.backends.mkldnn.flags()`` also resets TF32 and warns on every entry.
    torch._C._set_mkldnn_enabled(False)
    try:
        return net.rollout(x, steps)
    finally:
        torch._C._set_mkldnn_enabled(True)


def main() -> None:
    """Print one table row per batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sequence-length", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="forecast steps")
    parser.add_argument("--series-length", type=int, default=32, help="values per request")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--number", type=int, default=40, help="calls per round")
    parser.add_argument(
        "--cpu-time", action="store_true", help="time this thread's CPU time, not wall time"
    )
    args = parser.parse_args()
    clock = time.thread_time if args.cpu_time else time.perf_counter

    torch.set_num_threads(1)
    model = LstmTimeseriesModel()
    model.load()
    net = model._net
    assert net is not None
    fast = FastRollout(net, native=False)
    native = kernel_available()
    kernel_model = model
    if native:
        # The served model runs the kernel; this one is switched back to TorchScript.
        model = LstmTimeseriesModel()
        model.load()
        model._rollout = fast
    config = {"sequence_length": args.sequence_length, "forecast_steps": args.steps}
    rng = np.random.default_rng(0)
    print(
        f"lstm_timeseries hidden {net.hidden_size}, sequence_length {args.sequence_length}, "
        f"forecast_steps {args.steps}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); {'CPU' if args.cpu_time else 'wall'} µs per "
        f"batch (min of {args.rounds} interleaved rounds of {args.number}) and items/s"
    )
    header = (
        f"{'batch':>5}  {'rollout µs':>10} {'items/s':>9}  {'fast µs':>8} {'items/s':>9}  "
        f"{'ratio':>5}  {'max |diff|':>10}  {'no-mkldnn µs':>12}  {'run_batch µs':>12}"
    )
    if native:
        header += f"  {'kernel µs':>9} {'items/s':>9}  {'run_batch kernel µs':>19}"
    print(header)
    for batch in BATCH_SIZES:
        t = np.arange(args.series_length, dtype=np.float64)
        items = [
            model.prepare(
                (rng.normal(0, 10) + rng.uniform(1, 5) * np.sin(t / rng.uniform(2, 9))).astype(
                    np.float32
                ),
                config,
            )
            for _ in range(batch)
        ]
        windows = np.stack([item.values[-args.sequence_length :] for item in items])
        x = torch.from_numpy(normalised_windows(windows)[0].astype(np.float32)).unsqueeze(-1)
        steps = args.steps
        variants: dict[str, Callable[[], object]] = {
            "rollout": partial(net.rollout, x, steps),
            "fast": partial(fast, x, steps),
            "no-mkldnn": partial(without_mkldnn, net, x, steps),
            "run_batch": partial(model.run_batch, items),
        }
        if native:
            kernel = FastRollout(net, native=True)
            variants["kernel"] = partial(kernel, x, steps)
            variants["run_batch kernel"] = partial(kernel_model.run_batch, items)
        with torch.inference_mode():
            diff = float((fast(x, steps) - net.rollout(x, steps)).abs().max())
            best = best_of(variants, args.rounds, args.number, clock)
        old, new = best["rollout"], best["fast"]
        print(
            f"{batch:>5}  {old * 1e6:>10.0f} {batch / old:>9.0f}  {new * 1e6:>8.0f} "
            f"{batch / new:>9.0f}  {old / new:>5.2f}  {diff:>10.1e}  "
            f"{best['no-mkldnn'] * 1e6:>12.0f}  {best['run_batch'] * 1e6:>12.0f}",
            end="",
        )
        if native:
            print(
                f"  {best['kernel'] * 1e6:>9.0f} {batch / best['kernel']:>9.0f}  "
                f"{best['run_batch kernel'] * 1e6:>19.0f}",
                end="",
            )
        print()


if __name__ == "__main__":
    main()
