"""Train the lstm_timeseries network on generated series and write its checkpoint.

Run from the repository root (``make train-lstm`` does)::

    python scripts/train_lstm.py [--repository models] [--version N]

The series are sums of sines (random period, phase and amplitude) plus a linear
trend, small noise and a random offset and scale. Every training sequence has a
random context length L in [8, 40] followed by a few more values; it is normalised
with the mean and deviation of its first L values (exactly as the served model
normalises a request, via the same functions) and the network learns, with teacher
forcing, to predict every next value. That covers any ``sequence_length`` and the
autoregressive rollout past the context with the carried LSTM state.

The run is seeded (numpy ``Generator`` and ``torch.manual_seed``), CPU-only and
single-threaded, so the same arguments give the same weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import commonlib.torch_env  # noqa: E402, F401 - sets OMP_NUM_THREADS before torch loads

# isort: split

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from commonlib.models.checkpoint import place_version  # noqa: E402
from commonlib.models.lstm_timeseries import (  # noqa: E402
    DEFAULT_HIDDEN_SIZE,
    LstmForecaster,
    normalise,
    window_stats,
)

F64 = npt.NDArray[np.float64]

MIN_CONTEXT = 8
MAX_CONTEXT = 40
MAX_EXTRA = 16
"""Training sequences run up to this many values past their context (rollout region)."""
VALIDATION_CONTEXTS = (8, 10, 20, 40)
VALIDATION_HORIZON = 5
VALIDATION_SERIES = 512


def make_series(rng: np.random.Generator, count: int, length: int) -> F64:
    """``count`` generated series of ``length`` values, shaped [count, length]."""
    t = np.arange(length, dtype=np.float64)[None, None, :]
    components = 3
    active = rng.random((count, components)) < np.array([1.0, 0.6, 0.3])
    period = np.exp(rng.uniform(math.log(4.0), math.log(80.0), (count, components)))
    phase = rng.uniform(0.0, 2.0 * math.pi, (count, components))
    amplitude = rng.uniform(0.2, 1.0, (count, components)) * active
    sines = (
        amplitude[..., None] * np.sin(2.0 * math.pi * t / period[..., None] + phase[..., None])
    ).sum(axis=1)
    has_trend = rng.random((count, 1)) < 0.7
    slope = rng.normal(0.0, 0.03, (count, 1)) * has_trend
    noise_level = rng.uniform(0.0, 0.05, (count, 1))
    noise = rng.normal(0.0, 1.0, (count, length)) * noise_level
    offset = rng.normal(0.0, 20.0, (count, 1))
    scale = np.exp(rng.uniform(math.log(0.05), math.log(50.0), (count, 1)))
    start = rng.uniform(0.0, 200.0, (count, 1))
    shape = sines + slope * (t[0] + start) + noise
    return np.asarray(offset + scale * shape, dtype=np.float64)


def normalised_sequences(series: F64, context: int) -> F64:
    """Normalise each row by the stats of its first ``context`` values (as the model does)."""
    mu, sigma = window_stats(series[:, :context])
    return normalise(series, mu, sigma)


def to_input(z: F64) -> torch.Tensor:
    """[B, T] float64 → [B, T, 1] float32 tensor."""
    return torch.from_numpy(z.astype(np.float32)).unsqueeze(-1)


@dataclass(frozen=True)
class Evaluation:
    """Held-out scores in normalised units (mean squared error)."""

    teacher_forced_mse: float
    rollout_mse: float
    naive_mse: float
    per_context: dict[int, tuple[float, float]]


def make_validation(seed: int) -> dict[int, F64]:
    """Held-out normalised sequences per context length, from their own seed stream."""
    rng = np.random.default_rng([seed, 1])
    out: dict[int, F64] = {}
    for context in VALIDATION_CONTEXTS:
        series = make_series(rng, VALIDATION_SERIES, context + VALIDATION_HORIZON)
        out[context] = normalised_sequences(series, context)
    return out


def evaluate(net: LstmForecaster, validation: dict[int, F64]) -> Evaluation:
    """Teacher-forced loss, 5-step rollout error and the repeat-last-value baseline."""
    net.eval()
    forced: list[float] = []
    rollout: list[float] = []
    naive: list[float] = []
    per_context: dict[int, tuple[float, float]] = {}
    with torch.inference_mode():
        for context, z in validation.items():
            seq = to_input(z)
            pred, _ = net(seq[:, :-1])
            forced.append(float(((pred - seq[:, 1:]) ** 2).mean()))
            future = torch.from_numpy(z[:, context:].astype(np.float32))
            forecast = net.rollout(seq[:, :context], VALIDATION_HORIZON)
            model_mse = float(((forecast - future) ** 2).mean())
            last = seq[:, context - 1, :]
            naive_mse = float(((last - future) ** 2).mean())
            rollout.append(model_mse)
            naive.append(naive_mse)
            per_context[context] = (model_mse, naive_mse)
    net.train()
    return Evaluation(
        float(np.mean(forced)), float(np.mean(rollout)), float(np.mean(naive)), per_context
    )


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate and save; returns the checkpoint's meta dict."""
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng([args.seed, 0])
    validation = make_validation(args.seed)

    net = LstmForecaster(args.hidden_size)
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=args.lr, total_steps=args.steps, pct_start=0.1
    )
    loss_fn = nn.MSELoss()
    started = time.perf_counter()
    running = 0.0
    train_loss = math.nan
    for step in range(1, args.steps + 1):
        context = int(rng.integers(MIN_CONTEXT, MAX_CONTEXT + 1))
        extra = int(rng.integers(1, MAX_EXTRA + 1))
        series = make_series(rng, args.batch_size, context + extra)
        seq = to_input(normalised_sequences(series, context))
        pred, _ = net(seq[:, :-1])
        loss = loss_fn(pred, seq[:, 1:])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        running += loss.item()
        if step % args.log_every == 0 or step == args.steps:
            window = args.log_every if step % args.log_every == 0 else step % args.log_every
            train_loss = running / window
            running = 0.0
            score = evaluate(net, validation)
            print(
                f"step {step:5d}  train {train_loss:.4f}  val {score.teacher_forced_mse:.4f}  "
                f"val 5-step {score.rollout_mse:.4f}  (naive {score.naive_mse:.4f})  "
                f"{time.perf_counter() - started:5.1f}s",
                flush=True,
            )
    seconds = time.perf_counter() - started
    score = evaluate(net, validation)
    print(f"trained {args.steps} steps in {seconds:.1f}s")
    for context, (model_mse, naive_mse) in score.per_context.items():
        print(
            f"  held-out context {context:2d}: 5-step MSE {model_mse:.4f} vs naive {naive_mse:.4f}"
        )
    print(
        f"held-out 5-step MSE {score.rollout_mse:.4f} vs repeat-last-value {score.naive_mse:.4f} "
        f"({score.naive_mse / score.rollout_mse:.1f}x better); "
        f"teacher-forced val loss {score.teacher_forced_mse:.4f}"
    )
    meta: dict[str, Any] = {
        "format": 1,
        "model": "lstm_timeseries",
        "architecture": "LSTM(input_size=1, num_layers=1, batch_first=True) + Linear(H, 1)",
        "hidden_size": args.hidden_size,
        "trained_sequence_lengths": [MIN_CONTEXT, MAX_CONTEXT],
        "trained_extra_steps": [1, MAX_EXTRA],
        "normalisation": "per window: (x - mean) / max(std, 1e-3 * max(1, |mean|))",
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "final_train_loss": train_loss,
        "val_loss": score.teacher_forced_mse,
        "val_rollout_mse": score.rollout_mse,
        "val_naive_mse": score.naive_mse,
        "val_horizon": VALIDATION_HORIZON,
        "val_contexts": list(VALIDATION_CONTEXTS),
        "val_series_per_context": VALIDATION_SERIES,
        "torch_version": str(torch.__version__),
        "numpy_version": str(np.__version__),
    }
    place_version(
        net,
        meta,
        "lstm_timeseries",
        args.repository,
        args.version,
        {"hidden_size": args.hidden_size},
    )
    return meta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--repository", default="models", help="model repository (writes <name>/<version>/)"
    )
    parser.add_argument("--version", default=None, help="version to write (default: the next)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--steps", "--epochs", type=int, default=2000, help="optimiser steps (one batch each)"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="series per step")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate")
    parser.add_argument("--hidden-size", type=int, default=DEFAULT_HIDDEN_SIZE, help="LSTM width")
    parser.add_argument("--log-every", type=int, default=500, help="print every N steps")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.hidden_size < 1 or args.log_every < 1:
        parser.error("--steps, --batch-size, --hidden-size and --log-every must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
