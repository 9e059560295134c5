"""motion_lstm on one torch thread: a stream tick (``stream_step``) and a stateless batch.

For each batch size B: the time of one ``stream_step`` of B characters (gathered
[B, 51] poses and [B, H] state in, next poses and new state out; what a tick costs
the worker thread), the characters per second that gives, and how many characters
one core could step at 60 Hz with nothing else to do. Then the whole ``run_batch``
(preprocess, T cell steps, postprocess) of B stateless requests of ``--frames``
frames. Each figure is the fastest of ``--rounds`` rounds (the shipped checkpoint,
on the CPU), so noise from other processes on a shared machine is mostly filtered.

    .venv/bin/python bench/bench_motion_step.py
    .venv/bin/python bench/bench_motion_step.py --frames 64 --rounds 10 --cpu-time
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

import torch

from commonlib.models.motion_lstm import MotionLstmModel
from commonlib.motion import FRAME_WIDTH, generate_motion

STEP_BATCHES = (1, 64, 512, 2000, 4000)
STATELESS_BATCHES = (1, 16, 64)
TICK_HZ = 60.0


def fastest(
    fn: Callable[[], object],
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
    seconds: float = 0.03,
) -> float:
    """Seconds per call of ``fn``: the fastest of ``rounds`` rounds of about ``seconds`` each."""
    fn()
    started = clock()
    fn()
    once = max(clock() - started, 1e-7)
    number = max(1, int(seconds / once))
    best = float("inf")
    for _ in range(rounds):
        started = clock()
        for _ in range(number):
            fn()
        best = min(best, (clock() - started) / number)
    return best


def main() -> None:
    """Print one table per path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=16, help="frames per stateless request")
    parser.add_argument("--rounds", type=int, default=15, help="rounds per figure (min taken)")
    parser.add_argument(
        "--cpu-time", action="store_true", help="time this thread's CPU time, not wall time"
    )
    args = parser.parse_args()
    clock = time.thread_time if args.cpu_time else time.perf_counter

    torch.set_num_threads(1)
    model = MotionLstmModel()
    model.load()
    hidden = model.expected_hidden_size
    print(
        f"motion_lstm hidden {hidden}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread; {'CPU' if args.cpu_time else 'wall'} time, "
        f"min of {args.rounds} rounds"
    )
    print(f"{'B':>5}  {'stream_step µs':>14}  {'chars/s':>10}  {'60 Hz chars/core':>16}")
    pool = generate_motion(1, 4000).reshape(4000, FRAME_WIDTH)
    for batch in STEP_BATCHES:
        obs = torch.from_numpy(pool[:batch].copy())
        state = (torch.randn(batch, hidden) * 0.1, torch.randn(batch, hidden) * 0.1)
        seconds = fastest(lambda: model.stream_step(obs, state), args.rounds, clock)  # noqa: B023
        per_char = seconds / batch
        print(
            f"{batch:>5}  {seconds * 1e6:>14.1f}  {1 / per_char:>10.0f}  "
            f"{1 / (per_char * TICK_HZ):>16.0f}"
        )
    print(f"\nstateless run_batch, {args.frames} frames per request")
    print(f"{'B':>5}  {'run_batch µs':>12}  {'requests/s':>10}")
    for batch in STATELESS_BATCHES:
        items = [
            model.prepare(generate_motion(seed, args.frames).reshape(-1), {})
            for seed in range(batch)
        ]
        seconds = fastest(lambda: model.run_batch(items), args.rounds, clock)  # noqa: B023
        print(f"{batch:>5}  {seconds * 1e6:>12.1f}  {batch / seconds:>10.0f}")


if __name__ == "__main__":
    main()
