"""Generated 17-joint motion (walk cycles, idle sway, turns) for training, tests and the bot.

No data files and no torch: :func:`generate_motion` turns a seed into a ``[T, 17, 3]``
float32 sequence of keypoint positions, sampled at :data:`FPS` frames per second.

Layout: the COCO keypoint order (:data:`JOINT_NAMES`), each joint ``(x, y, z)`` in
metres in the character's frame: the origin is the ground point under the rest
position of the hip centre, ``y`` is up, and at yaw 0 the character faces ``+z``
with its left side towards ``+x``. The character walks in place (treadmill style:
limbs swing, the pelvis bobs and sways, but it does not travel), so a pose stays
near the origin however long the sequence; its heading turns with the root yaw.
Flatten a frame to the 51 floats ``motion_lstm`` reads with ``pose.reshape(-1)``.

Each seed fixes one character and its motion (:class:`MotionParams`): body size,
cadence, stride, arm swing, a walk/idle pattern (always walking, always idle, or
alternating smoothly), and a turning pattern. The clean motion is an analytic
function of time, so consecutive chunks (``start`` = 0, T, 2T, ...) join seamlessly;
Gaussian observation noise of ``noise`` metres per coordinate is then added from a
separate random stream, so ``noise=0`` gives the clean version of the same motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

JOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
"""The 17 keypoints in COCO order."""

NUM_JOINTS = len(JOINT_NAMES)
FRAME_WIDTH = 3 * NUM_JOINTS
"""Floats in one flattened pose (51)."""

FPS = 60.0
"""Frames per second of generated motion (the game tick rate it is meant for)."""

DEFAULT_NOISE = 0.005
"""Default observation noise: standard deviation in metres per coordinate."""

# Rest-pose offsets (metres, at body scale 1) of the head joints from the neck base and
# the lengths of the limb segments.
_HEAD = np.array(
    [
        [0.0, 0.17, 0.10],  # nose
        [0.035, 0.21, 0.08],  # left eye
        [-0.035, 0.21, 0.08],  # right eye
        [0.08, 0.18, 0.0],  # left ear
        [-0.08, 0.18, 0.0],  # right ear
    ]
)
_NECK_HEIGHT = 1.45
_SHOULDER_HALF_WIDTH = 0.18
_HIP_HEIGHT = 0.95
_HIP_HALF_WIDTH = 0.10
_UPPER_ARM, _FOREARM = 0.28, 0.25
_THIGH, _SHIN = 0.43, 0.44


@dataclass(frozen=True)
class MotionParams:
    """Everything that defines one seed's motion (see :func:`motion_params`)."""

    scale: float
    """Body size factor (1 = about 1.7 m tall)."""
    cadence_hz: float
    """Walk cycles (two steps) per second."""
    phase: float
    stride: float
    """Hip swing amplitude in radians while walking."""
    arm_swing: float
    """Shoulder swing amplitude in radians while walking."""
    walk_mode: int
    """0: always idle, 1: always walking, 2: alternating smoothly."""
    walk_period_s: float
    walk_phase: float
    sway_hz: float
    sway_phase: float
    yaw0: float
    turn_rate: float
    """Constant part of the yaw rate, radians per second."""
    turn_amplitude: float
    """Amplitude of the oscillating part of the yaw rate, radians per second."""
    turn_period_s: float
    turn_phase: float


def motion_params(seed: int) -> MotionParams:
    """The character and motion pattern of ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, 0])
    turning = rng.random() < 0.6
    return MotionParams(
        scale=float(rng.uniform(0.85, 1.15)),
        cadence_hz=float(rng.uniform(0.7, 1.2)),
        phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        stride=float(rng.uniform(0.25, 0.5)),
        arm_swing=float(rng.uniform(0.15, 0.45)),
        walk_mode=int(rng.choice(3, p=[0.2, 0.4, 0.4])),
        walk_period_s=float(rng.uniform(3.0, 10.0)),
        walk_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        sway_hz=float(rng.uniform(0.15, 0.4)),
        sway_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        yaw0=float(rng.uniform(-math.pi, math.pi)),
        turn_rate=float(rng.normal(0.0, 0.4)) if turning else 0.0,
        turn_amplitude=float(rng.uniform(0.0, 1.5)) if turning else 0.0,
        turn_period_s=float(rng.uniform(2.0, 8.0)),
        turn_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
    )


def _walk_weight(p: MotionParams, t: F64) -> F64:
    """How much the character walks at each time: 0 idle .. 1 full walk."""
    if p.walk_mode == 0:
        return np.zeros_like(t)
    if p.walk_mode == 1:
        return np.ones_like(t)
    wave = 0.5 + 0.9 * np.sin(2.0 * math.pi * t / p.walk_period_s + p.walk_phase)
    clipped = np.clip(wave, 0.0, 1.0)
    smooth: F64 = clipped * clipped * (3.0 - 2.0 * clipped)  # smoothstep: no velocity kinks
    return smooth


def _yaw(p: MotionParams, t: F64) -> F64:
    """Root yaw: the integral of a constant plus a sinusoidal turn rate."""
    omega = 2.0 * math.pi / p.turn_period_s
    wobble = (p.turn_amplitude / omega) * (np.cos(p.turn_phase) - np.cos(omega * t + p.turn_phase))
    yaw: F64 = p.yaw0 + p.turn_rate * t + wobble
    return yaw


def _segment(origin: F64, length: float, angle: F64) -> F64:
    """End of a segment hanging from ``origin``, swung forward (+z) by ``angle`` radians."""
    end = origin.copy()
    end[..., 1] -= length * np.cos(angle)
    end[..., 2] += length * np.sin(angle)
    return end


def clean_pose(p: MotionParams, t: npt.ArrayLike) -> F64:
    """Noise-free keypoints of motion ``p`` at times ``t`` (seconds) → ``[T, 17, 3]``."""
    t = np.asarray(t, dtype=np.float64)
    count = t.shape[0]
    walk = _walk_weight(p, t)
    cycle = p.phase + 2.0 * math.pi * p.cadence_hz * t
    sway = np.sin(2.0 * math.pi * p.sway_hz * t + p.sway_phase)
    idle = 1.0 - walk

    # Pelvis: bobs twice per walk cycle, sways sideways once; idle sway is slow.
    pelvis = np.zeros((count, 3))
    pelvis[:, 0] = walk * 0.03 * np.sin(cycle) + idle * 0.03 * sway
    pelvis[:, 1] = walk * (0.025 * np.cos(2.0 * cycle) - 0.02)
    pelvis[:, 2] = idle * 0.01 * np.cos(2.0 * math.pi * p.sway_hz * t + p.sway_phase)
    pose = np.zeros((count, NUM_JOINTS, 3))
    neck = pelvis + np.array([0.0, _NECK_HEIGHT, 0.0])
    neck[:, 0] += idle * 0.02 * sway  # the upper body leans into the idle sway
    nod = walk * 0.01 * np.sin(2.0 * cycle)
    pose[:, 0:5] = neck[:, None, :] + _HEAD[None, :, :]
    pose[:, 0:5, 1] += nod[:, None]

    for side, sign, offset in ((0, 1.0, 0.0), (1, -1.0, math.pi)):
        # Legs swing in antiphase; each knee flexes in the swing phase of its leg.
        leg_phase = cycle + offset
        hip = pelvis + np.array([sign * _HIP_HALF_WIDTH, _HIP_HEIGHT, 0.0])
        hip_angle = walk * p.stride * np.sin(leg_phase)
        knee_flex = walk * (0.1 + 0.9 * p.stride * np.maximum(0.0, np.sin(leg_phase + 1.2)))
        knee_flex += idle * 0.05 * (1.0 + sign * sway)
        knee = _segment(hip, _THIGH, hip_angle)
        ankle = _segment(knee, _SHIN, hip_angle - knee_flex)
        # Arms swing against the leg on the same side; elbows stay slightly bent.
        shoulder = neck + np.array([sign * _SHOULDER_HALF_WIDTH, 0.0, 0.0])
        arm_angle = -walk * p.arm_swing * np.sin(leg_phase) + idle * 0.03 * sway * sign
        elbow = _segment(shoulder, _UPPER_ARM, arm_angle)
        elbow_flex = 0.15 + walk * 0.25 * (1.0 + np.sin(leg_phase + math.pi))
        wrist = _segment(elbow, _FOREARM, arm_angle + elbow_flex)
        pose[:, 5 + side] = shoulder
        pose[:, 7 + side] = elbow
        pose[:, 9 + side] = wrist
        pose[:, 11 + side] = hip
        pose[:, 13 + side] = knee
        pose[:, 15 + side] = ankle

    pose *= p.scale
    yaw = _yaw(p, t)
    cos, sin = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x, z = pose[..., 0].copy(), pose[..., 2].copy()
    pose[..., 0] = cos * x + sin * z
    pose[..., 2] = -sin * x + cos * z
    return pose


def generate_motion(
    seed: int,
    frames: int,
    *,
    start: int = 0,
    noise: float = DEFAULT_NOISE,
    fps: float = FPS,
) -> F32:
    """Frames ``start .. start + frames - 1`` of seed ``seed``'s motion → ``[frames, 17, 3]``.

    ``noise`` is the standard deviation (metres) of the Gaussian noise added to each
    coordinate; its random stream depends on ``(seed, start)``, the motion on ``seed``.
    """
    if frames < 0 or start < 0:
        raise ValueError(f"frames and start must be >= 0, got {frames}, {start}")
    if noise < 0 or fps <= 0:
        raise ValueError(f"need noise >= 0 and fps > 0, got {noise}, {fps}")
    t = (start + np.arange(frames, dtype=np.float64)) / fps
    pose = clean_pose(motion_params(seed), t)
    if noise > 0:
        pose += np.random.default_rng([seed, 1, start]).normal(0.0, noise, pose.shape)
    return pose.astype(np.float32)


def zero_velocity(poses: npt.ArrayLike) -> F64:
    """Baseline next-pose predictions: the current pose (``[..., T, 17, 3]``)."""
    return np.asarray(poses, dtype=np.float64).copy()


def constant_velocity(poses: npt.ArrayLike) -> F64:
    """Baseline next-pose predictions ``current + (current - previous)`` (``[..., T, 17, 3]``).

    The first frame has no previous one and is predicted as itself.
    """
    p = np.asarray(poses, dtype=np.float64)
    out = p.copy()
    out[..., 1:, :, :] += p[..., 1:, :, :] - p[..., :-1, :, :]
    return out


def mean_joint_error(predicted: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Mean Euclidean distance between predicted and target joints (metres; ``[..., 17, 3]``)."""
    diff = np.asarray(predicted, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    return float(np.sqrt((diff * diff).sum(axis=-1)).mean())
