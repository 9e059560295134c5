"""motion_lstm: a torch LSTM predicting a character's next pose, per request or as a stream.

A pose is 17 keypoints x (x, y, z) = 51 floats (:mod:`commonlib.motion` documents
the layout). The network reads poses one frame at a time: each frame is normalised
with fixed per-coordinate constants taken from the training data (saved in the
checkpoint, never computed per window), goes through one LSTM layer, and a linear
head predicts the change to the next frame, which is added to the current pose
(a residual: next = current + delta).

Because nothing depends on the window, the two ways of serving it compute the same
thing: an ``InferRequest`` carries a window of T frames and is answered with the
pose after the last one (T cell steps from the zero state), and a character stream
(:class:`~commonlib.models.streaming.StreamingModel`) keeps each character's
LSTM state ``(h, c)`` on the server and takes one cell step per tick. Stepping a
stream T frames from its initial state gives the stateless prediction over the same
T frames, up to float32 rounding.

``scripts/train_motion.py`` trains :class:`MotionNet` (``nn.LSTM``) on generated
motion and writes a version to ``models/motion_lstm/``. Serving runs :class:`MotionCell`, one
explicit cell step over weights prepared once from the trained module.
"""

from __future__ import annotations

import commonlib.torch_env  # noqa: F401 - sets OMP_NUM_THREADS; must run before torch loads

# isort: split

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import pydantic
import torch
from torch import nn

from commonlib.models.base import (
    BaseModel,
    ConfigScalar,
    FloatArray,
    InputSchema,
    ModelOutput,
    ModelSettings,
    PreparedInput,
    SettingsError,
)
from commonlib.models.checkpoint import (
    REPO_ROOT,
    check_hidden_size,
    read_checkpoint,
    resolve_checkpoint,
)
from commonlib.models.registry import model_factory
from commonlib.models.streaming import ResolvedConfig, StreamingModel, StreamSpec, StreamState
from commonlib.motion import FRAME_WIDTH, generate_motion
from util.errors import InvalidInput

DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "motion_lstm" / "1" / "weights.pt"
"""The shipped checkpoint (repository version 1), when ``settings.checkpoint`` is unset."""

DEFAULT_HIDDEN_SIZE = 48
"""Hidden size of the shipped checkpoint (48, not 64: a B=2000 stream step costs about 2.1 ms
instead of 3 ms on one thread; see docs/performance.md)."""

MAX_FRAMES = 64
"""Most frames one InferRequest window may hold."""

LstmState = tuple[torch.Tensor, torch.Tensor]


class MotionNet(nn.Module):
    """The trained network: fixed normalisation, one LSTM layer, a residual linear head.

    The buffers ``input_mean`` / ``input_std`` normalise each coordinate of the input
    pose and ``delta_scale`` scales the head's output back to metres; they are set
    once from the training data and saved with the weights.
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor
    delta_scale: torch.Tensor

    def __init__(self, hidden_size: int = DEFAULT_HIDDEN_SIZE) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(FRAME_WIDTH, hidden_size, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden_size, FRAME_WIDTH)
        self.register_buffer("input_mean", torch.zeros(FRAME_WIDTH))
        self.register_buffer("input_std", torch.ones(FRAME_WIDTH))
        self.register_buffer("delta_scale", torch.ones(FRAME_WIDTH))

    def forward(
        self, poses: torch.Tensor, state: LstmState | None = None
    ) -> tuple[torch.Tensor, LstmState]:
        """[B, T, 51] poses → ([B, T, 51] predicted next poses, final (h, c))."""
        z = (poses - self.input_mean) / self.input_std
        out, new_state = self.lstm(z, state)
        delta = self.head(out) * self.delta_scale
        return poses + delta, cast(LstmState, new_state)


class MotionCell:
    """One inference step of :class:`MotionNet` for a batch, over weights prepared once.

    ``nn.LSTM`` has a large fixed cost per call, and a tick is one call of one step,
    so the cell is written out with few, large torch ops (a snapshot of the weights:
    build a new instance after changing them):

    * the input normalisation is folded into the input weights and bias, so the raw
      pose goes straight into the matmul, and ``[x, h] @ W + b`` for all four gates
      is one ``addmm`` over the concatenated ``[B, 51 + H]`` rows;
    * ``tanh`` costs several times ``sigmoid`` in torch on CPU, so one ``sigmoid_``
      covers all four gates, using ``tanh(a) = 2 * sigmoid(2a) - 1`` with the
      cell-gate rows of the weights pre-scaled by 2 (exact: powers of two);
    * ``delta_scale`` is folded into the head, which adds its output to the pose.

    The carried state is the LSTM's own ``(h, c)``, so it matches ``nn.LSTM`` up to
    float32 rounding (``tests/test_motion_lstm.py`` checks it).
    """

    def __init__(self, net: MotionNet) -> None:
        lstm = net.lstm
        if lstm.num_layers != 1 or lstm.bidirectional or not lstm.bias:
            raise ValueError("MotionCell needs a one-layer, unidirectional LSTM with bias")
        hidden = net.hidden_size
        params = {name: p.detach() for name, p in lstm.named_parameters()}
        with torch.no_grad():
            mean, std = net.input_mean.detach(), net.input_std.detach()
            w_ih = params["weight_ih_l0"] / std  # [4H, 51]: takes the raw pose
            bias = params["bias_ih_l0"] + params["bias_hh_l0"] - w_ih @ mean
            gate_scale = torch.ones_like(bias)
            gate_scale[2 * hidden : 3 * hidden] = 2.0
            self.hidden_size = hidden
            # [51 + H, 4H]: rows for the pose, then for h.
            self.weight = (
                (torch.cat((w_ih, params["weight_hh_l0"]), dim=1) * gate_scale[:, None])
                .t()
                .contiguous()
            )
            self.bias = (bias * gate_scale).contiguous()
            scale = net.delta_scale.detach()
            self.head_weight = (net.head.weight.detach() * scale[:, None]).t().contiguous()
            self.head_bias = (net.head.bias.detach() * scale).contiguous()

    def zero_state(self, batch: int) -> LstmState:
        """The initial ``(h, c)`` of ``batch`` characters: zeros, ``[batch, H]`` each."""
        h = self.bias.new_zeros((batch, self.hidden_size))
        return h, torch.zeros_like(h)

    def advance(self, poses: torch.Tensor, state: LstmState) -> LstmState:
        """The new ``(h, c)`` after [B, 51] ``poses`` (no prediction; inputs not modified)."""
        h, c = state
        gates = torch.addmm(self.bias, torch.cat((poses, h), dim=1), self.weight).sigmoid_()
        gi, gf, gg, go = gates.chunk(4, 1)
        # c' = f * c + i * tanh(a_g), with tanh(a_g) = 2 * gg - 1.
        c_new = torch.mul(gf, c).addcmul_(gi, gg, value=2.0).sub_(gi)
        # h' = o * tanh(c') = o * (2 * sigmoid(2c') - 1).
        h_new = torch.mul(c_new, 2.0).sigmoid_().mul_(2.0).sub_(1.0).mul_(go)
        return h_new, c_new

    def __call__(self, poses: torch.Tensor, state: LstmState) -> tuple[torch.Tensor, LstmState]:
        """One step: [B, 51] poses and ``(h, c)`` → ([B, 51] next poses, new ``(h, c)``).

        Call it under ``torch.inference_mode()`` or ``torch.no_grad()``; the inputs are
        not modified.
        """
        new_state = self.advance(poses, state)
        out = torch.addmm(self.head_bias, new_state[0], self.head_weight).add_(poses)
        return out, new_state

    def window(self, poses: torch.Tensor) -> torch.Tensor:
        """[T, B, 51] windows (oldest first) → [B, 51] pose after each window's last frame."""
        frames = poses.shape[0]
        state = self.zero_state(poses.shape[1])
        for t in range(frames - 1):
            state = self.advance(poses[t], state)
        return self(poses[frames - 1], state)[0]


class MotionSettings(ModelSettings):
    """``inference.models.motion_lstm.settings``."""

    checkpoint: Annotated[Path, pydantic.Field(strict=False)] = Path(
        "models/motion_lstm/1/weights.pt"
    )
    """The trained checkpoint; a relative path is read from the repository root."""
    hidden_size: int = pydantic.Field(default=DEFAULT_HIDDEN_SIZE, ge=1, le=4096)
    """Must equal the checkpoint's hidden size."""


@model_factory.register("motion_lstm")
class MotionLstmModel(BaseModel, StreamingModel):
    """Next-pose predictor over a window of poses, and a character-stream model.

    Settings: ``checkpoint`` (path, relative paths from the repository root; default
    version 1 of the repository) and ``hidden_size`` (must match the checkpoint;
    default 48). Requests have no config keys; requests whose windows hold the same
    number of frames share a forward pass.
    """

    version = "1"
    description = (
        "Pose predictor (torch LSTM, one layer): reads a window of 17-joint poses "
        "(x, y, z each) and predicts the next pose; also serves character streams."
    )
    config_params = {}
    input_schema = InputSchema(
        FRAME_WIDTH,
        MAX_FRAMES * FRAME_WIDTH,
        f"1-{MAX_FRAMES} poses, oldest first, flattened: 51 values per frame "
        "(17 COCO keypoints x (x, y, z), metres)",
    )
    output_description = "the next pose: 51 values, 17 keypoints x (x, y, z) as in the input"

    settings_model = MotionSettings
    settings: MotionSettings

    def __init__(
        self, settings: Mapping[str, Any] | ModelSettings | None = None, device: str = "cpu"
    ) -> None:
        super().__init__(settings, device)
        self._cell: MotionCell | None = None
        self.meta: dict[str, Any] = {}

    @property
    def expected_hidden_size(self) -> int:
        """The hidden size this instance serves (the ``hidden_size`` setting, default 48)."""
        return self.settings.hidden_size

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint file, from the ``checkpoint`` setting or the shipped default."""
        return resolve_checkpoint(self.settings.checkpoint, DEFAULT_CHECKPOINT)

    @property
    def cell(self) -> MotionCell:
        """The loaded cell; RuntimeError before ``load``."""
        if self._cell is None:
            raise RuntimeError("motion_lstm used before load()")
        return self._cell

    # -- stateless requests -------------------------------------------------------
    def prepare(
        self, values: Sequence[float] | FloatArray, config: Mapping[str, ConfigScalar]
    ) -> PreparedInput:
        """Check the window is whole frames; its frame count is the batch key."""
        prepared = super().prepare(values, config)
        n = prepared.values.shape[0]
        if n % FRAME_WIDTH:
            raise InvalidInput(
                f"input has {n} values; motion_lstm reads whole poses of {FRAME_WIDTH} values "
                f"(17 joints x 3), and {n} is not a multiple of {FRAME_WIDTH}"
            )
        prepared.batch_key = n // FRAME_WIDTH
        return prepared

    def batch_key(self, config: Mapping[str, int | float | bool]) -> Hashable:
        """Unused: :meth:`prepare` keys each request by its frame count."""
        return None

    def warmup_request(self) -> tuple[FloatArray, dict[str, ConfigScalar]]:
        """A 16-frame window of generated walking motion."""
        return generate_motion(0, 16).reshape(-1), {}

    def load(self) -> None:
        """Read the checkpoint onto ``self.device``; SettingsError if it is unusable."""
        torch.set_num_threads(1)
        path = self.checkpoint_path
        state_dict, meta = read_checkpoint(path, "motion_lstm", "train-motion", self.device)
        weight = state_dict.get("head.weight")
        if weight is None or weight.dim() != 2 or weight.shape[0] != FRAME_WIDTH:
            raise SettingsError(
                "checkpoint", f"{path} is not a motion_lstm checkpoint (no [51, H] head.weight)"
            )
        hidden = int(weight.shape[1])
        check_hidden_size(
            path, "motion_lstm", "scripts/train_motion.py", hidden, self.expected_hidden_size
        )
        net = MotionNet(hidden)
        net.load_state_dict(state_dict)
        net.to(self.device)
        net.eval()
        self._cell = MotionCell(net)
        self.meta = meta

    def preprocess(self, batch: Sequence[PreparedInput]) -> torch.Tensor:
        """Stack the windows (equal frame counts) into a [T, B, 51] tensor."""
        frames = len(batch[0].values) // FRAME_WIDTH
        flat = np.concatenate([item.values for item in batch])
        windows = flat.reshape(len(batch), frames, FRAME_WIDTH).transpose(1, 0, 2)
        return torch.from_numpy(np.ascontiguousarray(windows)).to(self.device)

    def predict(self, batch_input: torch.Tensor) -> FloatArray:
        """T cell steps from the zero state → [B, 51] next poses."""
        cell = self.cell
        with torch.inference_mode():
            out = cell.window(batch_input)
        return cast(FloatArray, out.cpu().numpy())

    def postprocess(self, raw: FloatArray, batch: Sequence[PreparedInput]) -> list[ModelOutput]:
        """One next pose per request."""
        return [ModelOutput(row) for row in raw]

    # -- character streams --------------------------------------------------------
    def stream_spec(self, config: ResolvedConfig) -> StreamSpec:
        """D = K = 51 (a pose in, the next pose out); state (h, c), ``[hidden_size]`` each."""
        hidden = self.expected_hidden_size
        return StreamSpec(FRAME_WIDTH, FRAME_WIDTH, ((hidden,), (hidden,)))

    def stream_key(self, config: ResolvedConfig) -> Hashable:
        """Every motion_lstm stream shares one state table (there is no config)."""
        return ()

    def stream_step(
        self, observations: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, StreamState]:
        """One cell step for B characters: [B, 51] poses → [B, 51] next poses, new (h, c)."""
        cell = self.cell
        h, c = state
        with torch.no_grad():
            return cell(observations, (h, c))
