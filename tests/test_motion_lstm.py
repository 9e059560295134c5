"""The motion_lstm model with the shipped checkpoint (models/motion_lstm.pt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import commonlib.models.motion_lstm as motion_module
from bot.blocking_client import BlockingClient
from commonlib.models.base import ModelOutput, SettingsError
from commonlib.models.motion_lstm import MotionCell, MotionLstmModel, MotionNet
from commonlib.models.registry import model_factory
from commonlib.motion import (
    DEFAULT_NOISE,
    FRAME_WIDTH,
    constant_velocity,
    generate_motion,
    mean_joint_error,
    zero_velocity,
)
from tests.daemon_process import run_daemon
from util.errors import ErrorCode, InvalidInput

HIDDEN = motion_module.DEFAULT_HIDDEN_SIZE
FAST = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module")
def model() -> MotionLstmModel:
    instance = model_factory.create("motion_lstm")
    assert isinstance(instance, MotionLstmModel)
    instance.load()
    return instance


def _window(seed: int, frames: int, start: int = 0) -> np.ndarray:
    """A flattened [frames * 51] window of generated noisy motion."""
    return generate_motion(seed, frames, start=start).reshape(-1)


def _zero_state(n: int) -> tuple[torch.Tensor, ...]:
    return torch.zeros(n, HIDDEN), torch.zeros(n, HIDDEN)


def test_shipped_checkpoint_exists_and_is_small() -> None:
    path = motion_module.DEFAULT_CHECKPOINT
    assert path.is_file(), "run `make train-motion`"
    assert path.stat().st_size < 300_000


def test_registered_and_loads_meta(model: MotionLstmModel) -> None:
    assert model.name == "motion_lstm"
    assert model.meta["hidden_size"] == HIDDEN
    scores = {s["noise"]: s for s in model.meta["heldout"]["scores"]}
    default = scores[DEFAULT_NOISE]
    assert default["model_mm"] < default["constant_velocity_mm"]


def test_cell_equals_the_trained_lstm_module(model: MotionLstmModel) -> None:
    """MotionCell (folded normalisation, sigmoid-form tanh) computes what nn.LSTM does."""
    net = MotionNet(HIDDEN)
    net.load_state_dict(torch.load(model.checkpoint_path, weights_only=True)["state_dict"])
    net.eval()
    poses = torch.from_numpy(np.stack([_window(s, 40).reshape(40, FRAME_WIDTH) for s in range(6)]))
    with torch.no_grad():
        expected, (h, c) = net(poses)
        cell = MotionCell(net)
        state = cell.zero_state(6)
        for t in range(40):
            out, state = cell(poses[:, t], state)
            torch.testing.assert_close(out, expected[:, t], rtol=0, atol=2e-5)
    torch.testing.assert_close(state[0], h[0], rtol=0, atol=2e-5)
    torch.testing.assert_close(state[1], c[0], rtol=0, atol=2e-5)


def test_stream_spec_and_initial_state(model: MotionLstmModel) -> None:
    spec = model.stream_spec({})
    assert (spec.input_width, spec.output_width) == (FRAME_WIDTH, FRAME_WIDTH)
    assert spec.state_shapes == ((HIDDEN,), (HIDDEN,))
    assert model.stream_key({}) == model.stream_key(model.resolve_config({}))
    h, c = model.initial_state({})
    assert h.shape == c.shape == (HIDDEN,)
    assert not h.any() and not c.any()


@FAST
@given(
    streams=st.integers(1, 12),
    ticks=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_streams_stepped_together_equal_each_stepped_alone(
    model: MotionLstmModel, streams: int, ticks: int, seed: int, data: st.DataObject
) -> None:
    """Like the tick engine: each tick a subset of characters is gathered, stepped, scattered."""
    observations = [_window(seed + i, ticks).reshape(ticks, FRAME_WIDTH) for i in range(streams)]
    stepped = [
        data.draw(st.lists(st.booleans(), min_size=streams, max_size=streams)) for _ in range(ticks)
    ]
    h_table, c_table = _zero_state(streams)
    together: list[list[np.ndarray]] = [[] for _ in range(streams)]
    for t in range(ticks):
        rows = [i for i in range(streams) if stepped[t][i]]
        if not rows:
            continue
        index = torch.tensor(rows)
        obs = torch.from_numpy(np.stack([observations[i][t] for i in rows]))
        out, (h, c) = model.stream_step(obs, (h_table[index], c_table[index]))
        h_table[index], c_table[index] = h, c
        for row, i in enumerate(rows):
            together[i].append(out[row].numpy())
    for i in range(streams):
        state = _zero_state(1)
        for t in range(ticks):
            if stepped[t][i]:
                obs = torch.from_numpy(observations[i][t][None, :])
                out, state = model.stream_step(obs, state)
                np.testing.assert_allclose(together[i].pop(0), out[0].numpy(), rtol=0, atol=1e-5)
        assert together[i] == []
        np.testing.assert_allclose(h_table[i], state[0][0], rtol=0, atol=1e-5)


@FAST
@given(frames=st.integers(1, motion_module.MAX_FRAMES), seed=st.integers(0, 10_000))
def test_streaming_a_window_equals_the_stateless_prediction(
    model: MotionLstmModel, frames: int, seed: int
) -> None:
    window = _window(seed, frames)
    (stateless,) = model.forward([model.prepare(window, {})])
    state = tuple(torch.from_numpy(s[None, :]) for s in model.initial_state({}))
    poses = torch.from_numpy(window.reshape(frames, FRAME_WIDTH))
    for t in range(frames):
        out, state = model.stream_step(poses[t : t + 1], state)
    np.testing.assert_allclose(stateless.predictions, out[0].numpy(), rtol=0, atol=1e-5)


def test_output_is_the_next_pose(model: MotionLstmModel) -> None:
    values, config = model.warmup_request()
    (out,) = model.forward([model.prepare(values, config)])
    assert out.predictions.shape == (FRAME_WIDTH,)
    assert out.predictions.dtype == np.float32
    assert out.confidence is None
    last = values[-FRAME_WIDTH:]
    # The next pose is close to the current one (motion at 60 Hz is a few mm per frame).
    assert np.abs(out.predictions - last).max() < 0.05


def test_batch_equals_single_requests_and_keys_by_frame_count(model: MotionLstmModel) -> None:
    items = [model.prepare(_window(s, 8 + s % 3), {}) for s in range(18)]
    assert {item.batch_key for item in items} == {8, 9, 10}
    for frames in (8, 9, 10):
        group = [item for item in items if item.batch_key == frames]
        batched = model.forward(group)
        for item, out in zip(group, batched, strict=True):
            (alone,) = model.forward([item])
            np.testing.assert_allclose(out.predictions, alone.predictions, rtol=0, atol=1e-5)


@pytest.mark.parametrize("length", [52, 101, 3 * FRAME_WIDTH - 1, 64 * FRAME_WIDTH - 1])
def test_partial_frames_are_rejected(model: MotionLstmModel, length: int) -> None:
    with pytest.raises(InvalidInput, match=rf"{length} values; motion_lstm reads whole poses"):
        model.prepare(np.zeros(length, dtype=np.float32), {})


def test_short_and_too_long_windows_are_rejected(model: MotionLstmModel) -> None:
    for length in (0, 1, 50):
        with pytest.raises(InvalidInput, match=rf"{length} values; motion_lstm needs at least 51"):
            model.prepare(np.zeros(length, dtype=np.float32), {})
    too_long = (motion_module.MAX_FRAMES + 1) * FRAME_WIDTH
    with pytest.raises(InvalidInput, match=rf"{too_long} values; motion_lstm accepts at most 3264"):
        model.prepare(np.zeros(too_long, dtype=np.float32), {})
    model.prepare(np.zeros(too_long - FRAME_WIDTH, dtype=np.float32), {})


def test_config_keys_are_rejected(model: MotionLstmModel) -> None:
    with pytest.raises(InvalidInput, match=r"unknown config key 'frames'"):
        model.prepare(_window(0, 4), {"frames": 4})


def test_nan_input_is_isolated_in_its_batch(model: MotionLstmModel) -> None:
    clean = [model.prepare(_window(s, 6), {}) for s in range(3)]
    bad = _window(9, 6).copy()
    bad[100] = np.nan
    results = model.run_batch([clean[0], model.prepare(bad, {}), clean[1], clean[2]])
    assert isinstance(results[1], InvalidInput) and "NaN" in results[1].message
    for item, result in zip(clean, [results[0], results[2], results[3]], strict=True):
        assert isinstance(result, ModelOutput)
        (alone,) = model.forward([item])
        np.testing.assert_allclose(result.predictions, alone.predictions, rtol=0, atol=1e-5)


def test_beats_constant_velocity_on_held_out_motion(model: MotionLstmModel) -> None:
    """Next-frame error on 16 held-out sequences of 2 s (seeds the training never uses)."""
    sequences, frames = 16, 120
    seeds = [2_000_000_000 + i for i in range(sequences)]
    noisy = np.stack([generate_motion(s, frames) for s in seeds])
    clean = np.stack([generate_motion(s, frames, noise=0.0) for s in seeds])
    state = _zero_state(sequences)
    predicted = np.empty_like(noisy)
    for t in range(frames):
        obs = torch.from_numpy(noisy[:, t].reshape(sequences, FRAME_WIDTH))
        out, state = model.stream_step(obs, state)
        predicted[:, t] = out.numpy().reshape(sequences, 17, 3)
    target = clean[:, 2:]
    model_error = mean_joint_error(predicted[:, 1:-1], target)
    cv_error = mean_joint_error(constant_velocity(noisy)[:, 1:-1], target)
    zv_error = mean_joint_error(zero_velocity(noisy)[:, 1:-1], target)
    assert model_error < 0.8 * cv_error, (model_error, cv_error)
    assert model_error < zv_error, (model_error, zv_error)


def test_load_rejects_checkpoint_of_other_hidden_size() -> None:
    instance = model_factory.create("motion_lstm", {"hidden_size": 32})
    with pytest.raises(SettingsError, match=rf"hidden size {HIDDEN} .* setting is 32") as raised:
        instance.load()
    assert raised.value.setting == "hidden_size"


def test_missing_checkpoint_says_how_to_make_it(tmp_path: Path) -> None:
    instance = model_factory.create("motion_lstm", {"checkpoint": str(tmp_path / "none.pt")})
    with pytest.raises(SettingsError, match=r"make train-motion") as raised:
        instance.load()
    assert raised.value.setting == "checkpoint"


def test_stream_step_before_load_is_an_error() -> None:
    instance = model_factory.create("motion_lstm")
    assert isinstance(instance, MotionLstmModel)
    with pytest.raises(RuntimeError, match=r"before load"):
        instance.stream_step(torch.zeros(1, FRAME_WIDTH), _zero_state(1))


def test_daemon_answers_motion_requests(tmp_path: Path, model: MotionLstmModel) -> None:
    window = _window(5, 12)
    (expected,) = model.forward([model.prepare(window, {})])
    with run_daemon(tmp_path) as daemon, BlockingClient("127.0.0.1", daemon.tcp_port) as client:
        reply = client.infer("motion_lstm", window.tolist(), request_id=1, raw=True)
        assert reply.WhichOneof("body") == "infer_response", reply
        got = np.array(reply.infer_response.predictions, dtype=np.float32)
        np.testing.assert_allclose(got, expected.predictions, rtol=0, atol=1e-5)
        bad = client.infer("motion_lstm", window[:-1].tolist(), request_id=2)
        assert bad.WhichOneof("body") == "error"
        assert bad.error.code == ErrorCode.INVALID_INPUT
        assert "whole poses of 51" in bad.error.message
        again = client.infer("motion_lstm", window.tolist(), request_id=3)
        np.testing.assert_allclose(
            again.infer_response.predictions, expected.predictions, rtol=0, atol=1e-5
        )
