"""Train the motion_lstm network on generated motion and write its checkpoint.

Run from the repository root (``make train-motion`` does)::

    python scripts/train_motion.py [--repository models] [--version N]

The training set is ``--sequences`` generated sequences (:mod:`commonlib.motion`:
walk cycles, idle sway, turns) of ``--frames`` frames each, starting at random
times within the first minute of their motion, with observation noise drawn per
sequence from 0 to ``2 * DEFAULT_NOISE`` metres. The network reads the noisy poses
and learns, with teacher forcing at every frame, the change from the current
(noisy) pose to the next clean one. The normalisation constants (per-coordinate
mean and deviation of the poses, deviation of the changes) come from the training
set and are saved with the weights. The loss is not weighted by noise level: weighting
nearly clean sequences up (by ``1 / (noise² + (2 mm)²)``) cut the held-out error on
clean input from 2.3 to 1.7 mm but raised it from 5.9 to 8.0 mm at 5 mm noise.

The held-out set (fixed seeds, disjoint from training) is run frame by frame through
the served cell (:class:`~commonlib.models.motion_lstm.MotionCell`), as a stream
would be, and scored by the mean joint position error against the clean next pose,
next to the zero-velocity and constant-velocity baselines.

The run is seeded (numpy ``Generator`` and ``torch.manual_seed``) and CPU-only, so
the same arguments give the same weights. It uses one torch thread by default: on
the 2-core development machine, busy with other work, two OpenMP threads made each
step 3-5 times slower (every op waits for the busier core), so the default leaves
the second core to the rest of the machine; ``--threads 2`` may pay off on an idle one.
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
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from commonlib.models.checkpoint import place_version  # noqa: E402
from commonlib.models.motion_lstm import DEFAULT_HIDDEN_SIZE, MotionCell, MotionNet  # noqa: E402
from commonlib.motion import (  # noqa: E402
    DEFAULT_NOISE,
    FPS,
    FRAME_WIDTH,
    constant_velocity,
    generate_motion,
    mean_joint_error,
    zero_velocity,
)

F32 = npt.NDArray[np.float32]

HELDOUT_SEED_BASE = 1_000_000_000
"""Held-out sequences use seeds from here on; training seeds stay far below."""
HELDOUT_SEQUENCES = 64
HELDOUT_FRAMES = 600
HELDOUT_NOISES = (0.0, DEFAULT_NOISE, 2 * DEFAULT_NOISE)


def make_pairs(
    seeds: list[int], frames: int, starts: list[int], noises: list[float]
) -> tuple[F32, F32]:
    """Noisy observations and the clean motion of each seed → two ``[N, frames, 51]`` arrays."""
    noisy = np.stack(
        [
            generate_motion(s, frames, start=st, noise=n).reshape(frames, FRAME_WIDTH)
            for s, st, n in zip(seeds, starts, noises, strict=True)
        ]
    )
    clean = np.stack(
        [
            generate_motion(s, frames, start=st, noise=0.0).reshape(frames, FRAME_WIDTH)
            for s, st in zip(seeds, starts, strict=True)
        ]
    )
    return noisy, clean


@dataclass(frozen=True)
class Score:
    """Held-out mean joint position errors (millimetres) against the clean next pose."""

    noise: float
    model_mm: float
    constant_velocity_mm: float
    zero_velocity_mm: float
    model_late_mm: float
    """The model's error over the second half of each sequence (long-stream drift check)."""


def heldout(
    noise: float, sequences: int = HELDOUT_SEQUENCES, frames: int = HELDOUT_FRAMES
) -> tuple[F32, F32]:
    """The fixed held-out set at observation noise ``noise``: (noisy, clean) ``[N, T, 51]``."""
    seeds = [HELDOUT_SEED_BASE + i for i in range(sequences)]
    return make_pairs(seeds, frames, [0] * sequences, [noise] * sequences)


def stream_predictions(cell: MotionCell, poses: F32) -> F32:
    """Each sequence of ``[N, T, 51]`` stepped through ``cell`` → its next-pose predictions."""
    x = torch.from_numpy(np.ascontiguousarray(poses.transpose(1, 0, 2)))
    state = cell.zero_state(x.shape[1])
    out = torch.empty_like(x)
    with torch.inference_mode():
        for t in range(x.shape[0]):
            out[t], state = cell(x[t], state)
    return out.numpy().transpose(1, 0, 2)


def score(cell: MotionCell, noise: float) -> Score:
    """Score the cell and both baselines on the held-out set at ``noise``.

    Every method predicts frame t + 1 from frames up to t, for t >= 1 (constant
    velocity needs a previous frame), against the clean frame t + 1.
    """
    noisy, clean = heldout(noise)
    shape = (*noisy.shape[:2], FRAME_WIDTH // 3, 3)
    poses = noisy.reshape(shape)
    target = clean.reshape(shape)[:, 2:]
    model = stream_predictions(cell, noisy).reshape(shape)[:, 1:-1]
    half = (noisy.shape[1] - 2) // 2
    return Score(
        noise=noise,
        model_mm=1000 * mean_joint_error(model, target),
        constant_velocity_mm=1000 * mean_joint_error(constant_velocity(poses)[:, 1:-1], target),
        zero_velocity_mm=1000 * mean_joint_error(zero_velocity(poses)[:, 1:-1], target),
        model_late_mm=1000 * mean_joint_error(model[:, half:], target[:, half:]),
    )


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate and save; returns the checkpoint's meta dict."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 0])
    started = time.perf_counter()
    seeds = [args.seed * 10_000_000 + i for i in range(args.sequences)]
    starts = [int(s) for s in rng.integers(0, int(60 * FPS), args.sequences)]
    noises = [float(n) for n in rng.uniform(0.0, 2 * DEFAULT_NOISE, args.sequences)]
    noisy, clean = make_pairs(seeds, args.frames + 1, starts, noises)
    inputs = torch.from_numpy(noisy[:, :-1])
    deltas = torch.from_numpy(clean[:, 1:] - noisy[:, :-1])
    print(
        f"generated {args.sequences} x {args.frames} frames in {time.perf_counter() - started:.1f}s"
    )

    net = MotionNet(args.hidden_size)
    with torch.no_grad():
        flat = inputs.reshape(-1, FRAME_WIDTH)
        net.input_mean.copy_(flat.mean(0))
        net.input_std.copy_(flat.std(0).clamp_min(1e-3))
        net.delta_scale.copy_(deltas.reshape(-1, FRAME_WIDTH).std(0).clamp_min(1e-4))
    targets = deltas / net.delta_scale
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=args.lr, total_steps=args.steps, pct_start=0.1
    )
    running, train_loss = 0.0, math.nan
    for step in range(1, args.steps + 1):
        index = torch.from_numpy(rng.integers(0, args.sequences, args.batch_size))
        x = inputs[index]
        z = (x - net.input_mean) / net.input_std
        out, _ = net.lstm(z)
        loss = nn.functional.mse_loss(net.head(out), targets[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        running += loss.item()
        if step % args.log_every == 0 or step == args.steps:
            window = args.log_every if step % args.log_every == 0 else step % args.log_every
            train_loss, running = running / window, 0.0
            print(
                f"step {step:5d}  train {train_loss:.4f}  {time.perf_counter() - started:5.1f}s",
                flush=True,
            )
    seconds = time.perf_counter() - started
    net.eval()
    cell = MotionCell(net)
    scores = [score(cell, noise) for noise in HELDOUT_NOISES]
    print(f"trained {args.steps} steps in {seconds:.1f}s")
    for s in scores:
        print(
            f"  held-out noise {1000 * s.noise:4.1f} mm: model {s.model_mm:5.2f} mm "
            f"(second half {s.model_late_mm:5.2f})  "
            f"constant velocity {s.constant_velocity_mm:5.2f}  "
            f"zero velocity {s.zero_velocity_mm:5.2f}"
        )
    meta: dict[str, Any] = {
        "format": 1,
        "model": "motion_lstm",
        "architecture": "fixed normalisation + LSTM(51, H, num_layers=1) + Linear(H, 51) residual",
        "hidden_size": args.hidden_size,
        "seed": args.seed,
        "sequences": args.sequences,
        "frames": args.frames,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "threads": args.threads,
        "train_seconds": round(seconds, 1),
        "final_train_loss": train_loss,
        "heldout": {
            "seeds": [HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + HELDOUT_SEQUENCES - 1],
            "frames": HELDOUT_FRAMES,
            "metric": "mean joint position error (mm) of the next pose vs the clean next pose",
            "scores": [asdict(s) for s in scores],
        },
        "torch_version": str(torch.__version__),
        "numpy_version": str(np.__version__),
    }
    place_version(
        net, meta, "motion_lstm", args.repository, args.version, {"hidden_size": args.hidden_size}
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
    parser.add_argument("--sequences", type=int, default=1024, help="training sequences")
    parser.add_argument("--frames", type=int, default=96, help="frames per training sequence")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps (one batch each)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate")
    parser.add_argument("--hidden-size", type=int, default=DEFAULT_HIDDEN_SIZE, help="LSTM width")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (module docs)")
    parser.add_argument("--log-every", type=int, default=250, help="print every N steps")
    args = parser.parse_args(argv)
    positive = ("sequences", "frames", "steps", "batch_size", "hidden_size", "threads", "log_every")
    if any(getattr(args, name) < 1 for name in positive):
        parser.error(
            "--sequences, --frames, --steps, --batch-size, --hidden-size, --threads "
            "and --log-every must be positive"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
