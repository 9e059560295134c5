"""The generated-motion module (commonlib/motion.py) shared by training, tests and the bot."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commonlib.motion import (
    DEFAULT_NOISE,
    JOINT_NAMES,
    clean_pose,
    constant_velocity,
    generate_motion,
    mean_joint_error,
    motion_params,
    zero_velocity,
)

LEFT_HIP, LEFT_KNEE, LEFT_ANKLE = JOINT_NAMES.index("left_hip"), 13, 15
LEFT_SHOULDER, RIGHT_SHOULDER = 5, 6


def test_layout_is_coco() -> None:
    assert len(JOINT_NAMES) == 17
    assert JOINT_NAMES[0] == "nose"
    assert JOINT_NAMES[LEFT_KNEE] == "left_knee" and JOINT_NAMES[LEFT_ANKLE] == "left_ankle"
    assert JOINT_NAMES[-1] == "right_ankle"


def test_shape_dtype_and_determinism() -> None:
    a = generate_motion(3, 50)
    assert a.shape == (50, 17, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, generate_motion(3, 50))
    assert not np.array_equal(a, generate_motion(4, 50))
    assert generate_motion(3, 0).shape == (0, 17, 3)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), start=st.integers(0, 100_000), split=st.integers(1, 59))
def test_chunks_of_clean_motion_join_seamlessly(seed: int, start: int, split: int) -> None:
    whole = generate_motion(seed, 60, start=start, noise=0.0)
    first = generate_motion(seed, split, start=start, noise=0.0)
    rest = generate_motion(seed, 60 - split, start=start + split, noise=0.0)
    np.testing.assert_allclose(np.concatenate([first, rest]), whole, rtol=0, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_limbs_keep_their_length_and_the_feet_stay_near_the_ground(seed: int) -> None:
    pose = generate_motion(seed, 240, noise=0.0).astype(np.float64)
    scale = motion_params(seed).scale
    thigh = np.linalg.norm(pose[:, LEFT_KNEE] - pose[:, LEFT_HIP], axis=-1)
    shin = np.linalg.norm(pose[:, LEFT_ANKLE] - pose[:, LEFT_KNEE], axis=-1)
    np.testing.assert_allclose(thigh, 0.43 * scale, rtol=1e-5)
    np.testing.assert_allclose(shin, 0.44 * scale, rtol=1e-5)
    assert pose[..., 1].min() > 0.0 and pose[..., 1].max() < 2.2
    assert np.abs(pose[..., [0, 2]]).max() < 1.0  # walks in place


def test_noise_is_added_on_top_of_the_clean_motion() -> None:
    clean = generate_motion(11, 600, noise=0.0)
    noisy = generate_motion(11, 600)
    assert abs(float((noisy - clean).std()) - DEFAULT_NOISE) < 0.1 * DEFAULT_NOISE
    np.testing.assert_allclose(
        clean, clean_pose(motion_params(11), np.arange(600) / 60.0), rtol=0, atol=1e-6
    )


def test_turning_seeds_rotate_the_shoulder_line() -> None:
    def heading_change(seed: int) -> float:
        pose = generate_motion(seed, 600, noise=0.0).astype(np.float64)
        across = pose[:, LEFT_SHOULDER] - pose[:, RIGHT_SHOULDER]
        angle = np.unwrap(np.arctan2(across[:, 2], across[:, 0]))
        return float(np.abs(angle - angle[0]).max())

    turning = [s for s in range(40) if motion_params(s).turn_amplitude > 0.5]
    still = [s for s in range(40) if motion_params(s).turn_amplitude == 0.0]
    assert turning and still
    assert all(heading_change(s) > 0.3 for s in turning)
    assert all(heading_change(s) < 1e-6 for s in still)


def test_walk_modes_differ_in_how_much_the_feet_move() -> None:
    def foot_speed(mode: int) -> float:
        seed = next(s for s in range(100) if motion_params(s).walk_mode == mode)
        pose = generate_motion(seed, 300, noise=0.0)
        return float(np.abs(np.diff(pose[:, LEFT_ANKLE], axis=0)).mean())

    assert foot_speed(1) > 5 * foot_speed(0)


def test_baselines_and_error_metric() -> None:
    t = np.arange(5, dtype=np.float64)[:, None, None]
    linear = np.broadcast_to(t * np.array([1.0, 2.0, 0.0]), (5, 17, 3))
    cv = constant_velocity(linear)
    np.testing.assert_array_equal(cv[1:-1], linear[2:])
    np.testing.assert_array_equal(cv[0], linear[0])
    np.testing.assert_array_equal(zero_velocity(linear), linear)
    assert mean_joint_error(zero_velocity(linear)[:-1], linear[1:]) == pytest.approx(np.sqrt(5.0))


def test_bad_arguments_are_refused() -> None:
    for kwargs in ({"frames": -1}, {"frames": 5, "start": -1}, {"frames": 5, "noise": -0.1}):
        with pytest.raises(ValueError):
            generate_motion(0, **kwargs)
