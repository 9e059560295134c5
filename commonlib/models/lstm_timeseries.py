"""lstm_timeseries: a small torch LSTM that forecasts a series autoregressively.

Each request's last ``sequence_length`` values are normalised by their own mean and
(floored) standard deviation, run through a one-layer LSTM in one pass, and the
network's next-value prediction is fed back ``forecast_steps - 1`` times with the
carried LSTM state. Forecasts are mapped back with the same mean and deviation.

``scripts/train_lstm.py`` trains :class:`LstmForecaster` with the same
:func:`window_stats` / :func:`normalise` functions and writes a version to the repository
(``models/lstm_timeseries/<version>/``). Serving runs the same network through
:class:`FastRollout`, an explicit cell loop over weights prepared once from the
trained module, which computes what :meth:`LstmForecaster.rollout` computes (up to
float32 rounding) in a fraction of its CPU time; :meth:`FastRollout.forecast` also does
the normalisation and its inverse in the same call, so the model thread holds the GIL
only to stack the windows and split the results. That call is the C kernel
(``commonlib/models/_lstmkernel.c``, AVX2+FMA) when it is built, the CPU has AVX2 and
the weights are float32 on the CPU, and one TorchScript function otherwise (CUDA,
``INFERENCE_PURE_PYTHON=1``, an unbuilt module or an older CPU).
"""

from __future__ import annotations

import commonlib.torch_env  # noqa: F401 - sets OMP_NUM_THREADS; must run before torch loads

# isort: split

import threading
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, cast

import numpy as np
import numpy.typing as npt
import pydantic
import torch
from torch import nn

from commonlib.models.base import (
    BaseModel,
    ConfigParam,
    FloatArray,
    InputSchema,
    ModelOutput,
    ModelSettings,
    PreparedInput,
    SettingsError,
)
from commonlib.models.checkpoint import check_hidden_size, read_checkpoint
from commonlib.models.registry import model_factory
from commonlib.models.streaming import ResolvedConfig, StreamingModel, StreamSpec, StreamState
from util.errors import InvalidInput
from util.native import native_module

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
LstmState = tuple[torch.Tensor, torch.Tensor]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root; relative checkpoint paths are resolved against it."""

DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "lstm_timeseries" / "1" / "weights.pt"
"""The shipped checkpoint (repository version 1), when ``settings.checkpoint`` is unset."""

DEFAULT_HIDDEN_SIZE = 64
"""Hidden size of the shipped checkpoint."""

SIGMA_FLOOR = 1e-3
"""A window's scale is at least ``SIGMA_FLOOR * max(1, |mean|)`` (flat windows)."""

_lstmkernel = native_module("commonlib.models._lstmkernel")


def kernel_available() -> bool:
    """True when the C kernel is built, allowed (util.native) and the CPU has AVX2 and FMA.

    Without AVX2 the kernel's portable C path is slower than TorchScript over MKL from
    about 16 rows a batch, so :class:`FastRollout` keeps TorchScript there.
    """
    return _lstmkernel is not None and bool(_lstmkernel.AVX2)


def window_stats(windows: npt.ArrayLike) -> tuple[F64, F64]:
    """Per-row mean and floored standard deviation of a [B, T] array, each shaped [B, 1].

    The deviation is floored at ``SIGMA_FLOOR * max(1, |mean|)`` so a flat (or
    nearly flat) window does not blow the normalised values up.
    """
    mu, sigma, _ = _centred_stats(windows)
    return mu, sigma


def _centred_stats(windows: npt.ArrayLike) -> tuple[F64, F64, F64]:
    """:func:`window_stats` plus the centred windows ``windows - mu``.

    Spelled out rather than ``w.mean()`` / ``w.std()``: the same ufunc calls in the
    same order as numpy's own mean and std (so bit-identical results) without their
    Python-level overhead, and the centred values are reused by the caller.
    """
    w = np.asarray(windows, dtype=np.float64)
    n = w.shape[-1]
    mu = np.add.reduce(w, axis=-1, keepdims=True) / n
    centred = w - mu
    var = np.add.reduce(centred * centred, axis=-1, keepdims=True) / n
    floor = SIGMA_FLOOR * np.maximum(1.0, np.abs(mu))
    sigma = np.maximum(np.sqrt(var), floor)
    return mu, sigma, centred


def normalised_windows(windows: npt.ArrayLike) -> tuple[F64, F64, F64]:
    """``(normalise(windows, *window_stats(windows)), mu, sigma)`` in one pass over the data."""
    mu, sigma, centred = _centred_stats(windows)
    centred /= sigma
    return centred, mu, sigma


def normalise(values: npt.ArrayLike, mu: F64, sigma: F64) -> F64:
    """``(values - mu) / sigma`` row by row (``mu``/``sigma`` as from :func:`window_stats`)."""
    return (np.asarray(values, dtype=np.float64) - mu) / sigma


def denormalise(values: npt.ArrayLike, mu: F64, sigma: F64) -> F64:
    """Inverse of :func:`normalise`."""
    return np.asarray(values, dtype=np.float64) * sigma + mu


class LstmForecaster(nn.Module):
    """One LSTM layer over a scalar series and a linear head predicting the next value."""

    def __init__(self, hidden_size: int = DEFAULT_HIDDEN_SIZE) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size=1, hidden_size=hidden_size, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(
        self, x: torch.Tensor, state: LstmState | None = None
    ) -> tuple[torch.Tensor, LstmState]:
        """[B, T, 1] inputs → ([B, T, 1] next-value predictions, final (h, c))."""
        out, new_state = self.lstm(x, state)
        return cast(torch.Tensor, self.head(out)), cast(LstmState, new_state)

    def rollout(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Forecast ``steps`` values after [B, T, 1] ``x``, feeding predictions back → [B, steps].

        One pass over the whole context, then ``steps - 1`` single-step passes that
        carry the LSTM state and take the previous prediction as input.
        """
        pred, state = self(x)
        last = pred[:, -1:, :]
        outputs = [last]
        for _ in range(steps - 1):
            last, state = self(last, state)
            outputs.append(last)
        return torch.cat(outputs, dim=1).squeeze(-1)


class FastRollout:
    """Inference-time equivalent of :meth:`LstmForecaster.rollout`, several times cheaper.

    ``nn.LSTM`` costs about 200 µs per call on CPU even for one time step, and a
    rollout makes ``steps`` calls plus the linear head each time. This runs the cell
    explicitly with few, large torch ops over weights prepared once from the module
    (a snapshot: build a new instance after changing the weights):

    * the scalar input's projection ``x * w_ih + b_ih + b_hh`` for the whole context
      is one broadcast ``addcmul``; each step adds the recurrent part in place with
      one ``addmm_`` (the first step, from a zero state, needs none);
    * ``tanh`` costs about four times ``sigmoid`` per element in torch on CPU, so
      ``tanh(a) = 2 * sigmoid(2a) - 1`` is used throughout: one ``sigmoid_`` over all
      four gates, with the cell-gate rows of the weights pre-scaled by 2;
    * the carried state is ``h / 2`` and ``2 * c``, which absorbs the remaining
      factors of 2 into the weights. Scaling by powers of two is exact in floating
      point, so these rewrites change nothing but the rounding of the sigmoid form;
    * in the autoregressive steps the input is the head's prediction
      ``h @ w_head + b_head``, so the head is folded into the recurrent weights
      (``W_hh^T + w_head^T w_ih^T``) and each step is again one ``addmm``. The
      predictions themselves come from one matmul over all the stored ``h`` at the end.

    Everything stays on the module's device and dtype, so it runs on CUDA as well.
    Results agree with :meth:`LstmForecaster.rollout` to float32 rounding (about
    1e-6 relative; ``tests/test_lstm_timeseries.py`` checks random batches).

    ``native``: run :meth:`forecast` and ``__call__`` on the C kernel
    (``_lstmkernel.c``: the same steps over the same weights, every row bit for bit the
    same whatever its batch; ``tests/test_lstm_kernel.py``) instead of TorchScript. None
    (the default) chooses it when :func:`kernel_available` and the module is float32 on
    the CPU; True insists (ValueError when it cannot; without AVX2 the kernel runs its
    portable C path). :meth:`step` (streams) runs on the kernel too.
    """

    def __init__(self, net: LstmForecaster, native: bool | None = None) -> None:
        lstm = net.lstm
        if lstm.num_layers != 1 or lstm.input_size != 1 or lstm.bidirectional or not lstm.bias:
            raise ValueError("FastRollout needs a one-layer, unidirectional LSTM with bias")
        hidden = net.hidden_size
        params = {name: p.detach() for name, p in lstm.named_parameters()}
        with torch.no_grad():
            w_ih = params["weight_ih_l0"][:, 0]
            w_hh = params["weight_hh_l0"]
            bias = params["bias_ih_l0"] + params["bias_hh_l0"]
            w_head = net.head.weight.detach()[0]
            b_head = net.head.bias.detach()
            # Gate rows are [input, forget, cell, output]; the cell gate goes through
            # sigmoid(2a) instead of tanh(a).
            gate_scale = torch.ones_like(bias)
            gate_scale[2 * hidden : 3 * hidden] = 2.0
            self.hidden_size = hidden
            self.input_weight = (w_ih * gate_scale).contiguous()
            self.input_bias = (bias * gate_scale).contiguous()
            # [H, 4H], for the carried h / 2 (hence the 2).
            self.recurrent = (w_hh * gate_scale[:, None] * 2.0).t().contiguous()
            self.feedback = (
                self.recurrent + 2.0 * torch.outer(w_head, self.input_weight)
            ).contiguous()
            self.feedback_bias = (self.input_bias + b_head * self.input_weight).contiguous()
            self.head_weight = (2.0 * w_head)[:, None].contiguous()
            self.head_bias = b_head.clone()
            # A 0-d tensor operand is dispatched faster than a Python float scalar.
            self._half = torch.tensor(0.5, dtype=bias.dtype, device=bias.device)
            self._four = torch.tensor(4.0, dtype=bias.dtype, device=bias.device)
        usable = (
            _lstmkernel is not None and bias.device.type == "cpu" and bias.dtype == torch.float32
        )
        if native and not usable:
            raise ValueError(
                "the C kernel needs float32 weights on the CPU and a built and allowed "
                "commonlib/models/_lstmkernel (make native)"
            )
        self.native = usable and kernel_available() if native is None else native
        """Whether :meth:`forecast`, ``__call__`` and :meth:`step` run the C kernel."""
        # numpy views of the weights (the buffers the kernel reads), made once.
        self._kernel_weights = (
            (
                self.input_weight.numpy(),
                self.input_bias.numpy(),
                self.recurrent.numpy(),
                self.feedback.numpy(),
                self.feedback_bias.numpy(),
                self.head_weight.reshape(-1).numpy(),
                float(self.head_bias[0]),
            )
            if self.native
            else None
        )

    def __call__(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Forecast ``steps`` values after [B, T, 1] ``x`` → [B, steps], as ``rollout`` does.

        Call it under ``torch.inference_mode()`` or ``torch.no_grad()``; it works in
        place on its own buffers and is not differentiable. The cell loop is one call
        that runs without the GIL: the C kernel (``native``; normalising with mean 0 and
        deviation 1 changes no bit) or TorchScript (:func:`_compiled`).
        """
        _check_lengths(x.shape[1], steps)
        if self.native:
            windows = x.reshape(x.shape[0], x.shape[1]).numpy()
            return torch.from_numpy(self.forecast_array(windows, steps, 0.0, 1.0))
        return _compiled().rollout(
            x,
            steps,
            self.input_bias,
            self.input_weight,
            self.recurrent,
            self.feedback,
            self.feedback_bias,
            self.head_weight,
            self.head_bias,
            self._half,
            self._four,
        )

    def forecast(
        self, windows: torch.Tensor, steps: int, norm_mean: float = 0.0, norm_std: float = 0.0
    ) -> torch.Tensor:
        """Forecasts in the windows' own units: [B, T] float32 raw windows → [B, steps].

        Each row is normalised by its own mean and floored deviation
        (:func:`normalised_windows`), or by the fixed ``norm_mean`` / ``norm_std`` when
        ``norm_std`` > 0, rolled out as ``__call__`` does, and mapped back
        (:func:`denormalise`), all in one call without the GIL: the C kernel
        (:meth:`forecast_array`, when ``native``) or TorchScript.
        """
        _check_lengths(windows.shape[1], steps)
        if self.native:
            array = windows.numpy()
            return torch.from_numpy(self.forecast_array(array, steps, norm_mean, norm_std))
        return _compiled().forecast(
            windows,
            steps,
            norm_mean,
            norm_std,
            SIGMA_FLOOR,
            self.input_bias,
            self.input_weight,
            self.recurrent,
            self.feedback,
            self.feedback_bias,
            self.head_weight,
            self.head_bias,
            self._half,
            self._four,
        )

    def forecast_array(
        self,
        windows: npt.NDArray[np.float32],
        steps: int,
        norm_mean: float = 0.0,
        norm_std: float = 0.0,
        *,
        portable: bool = False,
    ) -> F32:
        """:meth:`forecast` on the C kernel, numpy in and out: [B, T] float32 → new [B, steps].

        Only for a ``native`` instance (RuntimeError otherwise). ``portable`` runs the
        kernel's plain C path instead of its AVX2 one (tests compare the two). A window
        array that is not C-contiguous float32 is copied into one first.
        """
        kernel, weights = self._kernel()
        _check_lengths(windows.shape[1], steps)
        out = np.empty((windows.shape[0], steps), dtype=np.float32)
        kernel.forecast(
            np.ascontiguousarray(windows, dtype=np.float32),
            out,
            norm_mean,
            norm_std,
            SIGMA_FLOOR,
            *weights,
            portable=portable,
        )
        return out

    def step_arrays(
        self,
        x: npt.NDArray[np.float32],
        h: npt.NDArray[np.float32],
        c: npt.NDArray[np.float32],
        steps: int,
        *,
        portable: bool = False,
    ) -> tuple[F32, F32, F32]:
        """:meth:`step` on the C kernel, numpy in and out: [B] ``x``, [B, H] ``h`` and ``c``.

        Returns new arrays ([B, steps] forecasts, new h, new c). Only for a ``native``
        instance; ``portable`` as for :meth:`forecast_array`.
        """
        kernel, weights = self._kernel()
        _check_lengths(1, steps)
        batch = x.shape[0]
        out = np.empty((batch, steps), dtype=np.float32)
        new_h = np.empty((batch, self.hidden_size), dtype=np.float32)
        new_c = np.empty_like(new_h)
        kernel.step(
            np.ascontiguousarray(x, dtype=np.float32),
            np.ascontiguousarray(h, dtype=np.float32),
            np.ascontiguousarray(c, dtype=np.float32),
            out,
            new_h,
            new_c,
            *weights,
            portable=portable,
        )
        return out, new_h, new_c

    def _kernel(self) -> tuple[ModuleType, tuple[F32 | float, ...]]:
        """The kernel module and the weights' arguments; RuntimeError unless ``native``."""
        weights = self._kernel_weights
        if weights is None or _lstmkernel is None:
            raise RuntimeError("this FastRollout runs TorchScript (native is False)")
        return _lstmkernel, weights

    def _roll_forward(self, h: torch.Tensor, c: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
        """Feed predictions back from state (h / 2 = ``h_out[0]``, 2c = ``c``, modified in place).

        Fills ``h_out[1:]`` ([steps, B, H]) and returns the [B, steps] forecasts.
        """
        return _compiled().roll_forward(
            h,
            c,
            h_out,
            self.feedback,
            self.feedback_bias,
            self.head_weight,
            self.head_bias,
            self._half,
        )

    def step(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One cell step of [B, 1] ``x`` from a carried (h, c), then ``steps`` forecasts.

        Returns ([B, steps] forecasts, new h, new c): the state after ``x`` only (the
        feedback rollout works on copies). Stepping a window value by value from a
        zero state gives what ``__call__`` gives for the whole window, up to rounding.
        A ``native`` instance runs the C kernel (:meth:`step_arrays`; CPU tensors).
        """
        batch = x.shape[0]
        if self.native:
            arrays = self.step_arrays(x.reshape(batch).numpy(), h.numpy(), c.numpy(), steps)
            forecasts, new_h, new_c = (torch.from_numpy(array) for array in arrays)
            return forecasts, new_h, new_c
        half = self._half
        gates = torch.addcmul(self.input_bias, x.reshape(batch, 1), self.input_weight)
        # The carried state is h / 2 and 2c (see the class docs).
        gates.addmm_(h.mul(half), self.recurrent)
        gi, gf, gg, go = gates.sigmoid_().chunk(4, 1)
        gg.sub_(half)
        c2 = torch.mul(c, gf).mul_(2.0).addcmul_(gi, gg, value=4.0)
        h_out = x.new_empty((steps, batch, self.hidden_size))
        h_half = torch.sigmoid(c2, out=h_out[0]).sub_(half).mul_(go)
        new_h = h_half.mul(2.0)
        new_c = c2.mul(half)
        forecasts = self._roll_forward(h_half, c2, h_out)
        return forecasts, new_h, new_c


def _check_lengths(length: int, steps: int) -> None:
    """ValueError unless there is at least one input value and one step to forecast."""
    if length < 1 or steps < 1:
        raise ValueError(f"need at least one input value and one step, got {length}, {steps}")


def _roll_forward(
    h: torch.Tensor,
    c: torch.Tensor,
    h_out: torch.Tensor,
    feedback: torch.Tensor,
    feedback_bias: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    half: torch.Tensor,
) -> torch.Tensor:
    """:meth:`FastRollout._roll_forward` over its prepared weights (TorchScript-able)."""
    steps, batch, hidden = h_out.shape[0], h_out.shape[1], h_out.shape[2]
    if steps > 1:
        gates = h.new_empty((batch, 4 * hidden))
        gate = gates.chunk(4, 1)
        gi, gf, gg, go = gate[0], gate[1], gate[2], gate[3]
        for k in range(1, steps):
            torch.addmm(feedback_bias, h, feedback, out=gates).sigmoid_()
            gg.sub_(half)
            c.mul_(gf).addcmul_(gi, gg, value=4.0)
            h = torch.sigmoid(c, out=h_out[k]).sub_(half).mul_(go)
    forecasts = torch.addmm(head_bias, h_out.view(steps * batch, hidden), head_weight)
    return forecasts.view(steps, batch).t()


def _rollout(
    x: torch.Tensor,
    steps: int,
    input_bias: torch.Tensor,
    input_weight: torch.Tensor,
    recurrent: torch.Tensor,
    feedback: torch.Tensor,
    feedback_bias: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    half: torch.Tensor,
    four: torch.Tensor,
) -> torch.Tensor:
    """:meth:`FastRollout.__call__` over its prepared weights (TorchScript-able)."""
    batch, length, hidden = x.shape[0], x.shape[1], recurrent.shape[0]
    # [T, B, 4H] gate pre-activations from the input; the loop adds h @ W in place.
    gates_in = torch.addcmul(input_bias, x.reshape(batch, length).t().unsqueeze(-1), input_weight)
    h_out = x.new_empty((steps, batch, hidden))
    h_tmp = x.new_empty((batch, hidden))
    rows = gates_in.unbind(0)
    gate = rows[0].sigmoid_().chunk(4, 1)
    gi, gf, gg, go = gate[0], gate[1], gate[2], gate[3]
    gg.sub_(half)  # tanh(a) / 2
    c = torch.mul(gi, gg).mul_(four)  # 2 * c
    h = torch.sigmoid(c, out=h_out[0] if length == 1 else h_tmp).sub_(half).mul_(go)
    for t in range(1, length):
        gate = rows[t].addmm_(h, recurrent).sigmoid_().chunk(4, 1)
        gi, gf, gg, go = gate[0], gate[1], gate[2], gate[3]
        gg.sub_(half)
        c.mul_(gf).addcmul_(gi, gg, value=4.0)
        h = torch.sigmoid(c, out=h_out[0] if t == length - 1 else h_tmp)
        h.sub_(half).mul_(go)
    return _roll_forward(h, c, h_out, feedback, feedback_bias, head_weight, head_bias, half)


def _forecast(
    windows: torch.Tensor,
    steps: int,
    norm_mean: float,
    norm_std: float,
    sigma_floor: float,
    input_bias: torch.Tensor,
    input_weight: torch.Tensor,
    recurrent: torch.Tensor,
    feedback: torch.Tensor,
    feedback_bias: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    half: torch.Tensor,
    four: torch.Tensor,
) -> torch.Tensor:
    """Normalise [B, T] float32 ``windows``, roll out, de-normalise → [B, steps] float32.

    What :func:`normalised_windows` (``norm_std`` 0) or :func:`normalise` (fixed
    ``norm_mean`` / ``norm_std``) and :func:`denormalise` compute in numpy, with the same
    float64 ops in the same order (only the sum's association may differ in the last
    bit), so a serving batch is one TorchScript call (TorchScript-able).
    """
    w = windows.to(torch.float64)
    if norm_std > 0.0:
        mu = torch.full((w.shape[0], 1), norm_mean, dtype=torch.float64, device=w.device)
        sigma = torch.full((w.shape[0], 1), norm_std, dtype=torch.float64, device=w.device)
        z = (w - mu) / sigma
    else:
        n = w.shape[1]
        mu = w.sum(-1, keepdim=True) / n
        z = w - mu
        var = (z * z).sum(-1, keepdim=True) / n
        floor = torch.clamp(mu.abs(), min=1.0) * sigma_floor
        sigma = torch.maximum(var.sqrt(), floor)
        z.div_(sigma)
    x = z.to(torch.float32).unsqueeze(-1)
    out = _rollout(
        x,
        steps,
        input_bias,
        input_weight,
        recurrent,
        feedback,
        feedback_bias,
        head_weight,
        head_bias,
        half,
        four,
    )
    return out.to(torch.float64).mul_(sigma).add_(mu).to(torch.float32)


class _Unoptimized:
    """A TorchScript function called with the graph executor's optimisations off.

    They would rewrite some ops for some shapes (a batch of one, say), which changes
    the rounding; unoptimised, the interpreter runs exactly the ops as written. The
    switch is per thread, so it is set around each call.
    """

    def __init__(self, function: Callable[..., torch.Tensor]) -> None:
        with warnings.catch_warnings():
            # torch 2.10+ marks TorchScript deprecated; it is still the way to run a
            # loop of ops in C++ without the GIL and without a compiler toolchain.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._function = torch.jit.script(function)

    def __call__(self, *args: Any) -> torch.Tensor:
        optimize = torch._C._get_graph_executor_optimize()
        torch._C._set_graph_executor_optimize(False)
        try:
            return cast(torch.Tensor, self._function(*args))
        finally:
            torch._C._set_graph_executor_optimize(optimize)


@dataclass(frozen=True)
class _Compiled:
    rollout: _Unoptimized
    roll_forward: _Unoptimized
    forecast: _Unoptimized


_compiled_lock = threading.Lock()
_compiled_functions: list[_Compiled] = []


def _compiled() -> _Compiled:
    """:func:`_rollout`, :func:`_roll_forward` and :func:`_forecast` compiled, once per process.

    A TorchScript call runs its whole op sequence in C++ with the GIL released, where
    the same ops called from Python take and release the GIL around each of about a
    hundred small ops per batch: the reactor thread's Python then runs in parallel
    with the whole forward pass instead of between its ops (and the pass costs about
    a fifth less CPU). The ops and their order are the same, so are the results, bit
    for bit (``tests/test_lstm_timeseries.py``).
    """
    if not _compiled_functions:
        with _compiled_lock:
            if not _compiled_functions:
                _compiled_functions.append(
                    _Compiled(
                        _Unoptimized(_rollout),
                        _Unoptimized(_roll_forward),
                        _Unoptimized(_forecast),
                    )
                )
    return _compiled_functions[0]


@dataclass(frozen=True)
class LstmBatch:
    """A preprocessed batch: the raw [B, T] float32 windows on the model's device.

    A numpy array when the model runs the C kernel (:attr:`FastRollout.native`), a
    tensor otherwise.

    ``norm_std`` > 0: every row is normalised with the fixed ``norm_mean`` / ``norm_std``
    (the batch key includes them); 0: each row with its own mean and deviation.
    """

    windows: torch.Tensor | F32
    steps: int
    norm_mean: float = 0.0
    norm_std: float = 0.0


class LstmSettings(ModelSettings):
    """``inference.models.lstm_timeseries.settings``."""

    checkpoint: Annotated[Path, pydantic.Field(strict=False)] = Path(
        "models/lstm_timeseries/1/weights.pt"
    )
    """The trained checkpoint; a relative path is read from the repository root."""
    hidden_size: int = pydantic.Field(default=DEFAULT_HIDDEN_SIZE, ge=1, le=4096)
    """Must equal the checkpoint's hidden size; requests may only pass this value."""


@model_factory.register("lstm_timeseries")
class LstmTimeseriesModel(BaseModel, StreamingModel):
    """Autoregressive LSTM forecaster over each request's last ``sequence_length`` values.

    Settings (:class:`LstmSettings`): ``checkpoint`` (path, relative paths from the
    repository root; default version 1 of the repository) and ``hidden_size`` (must
    match the checkpoint; default 64).

    Streams (docs/streams.md): one value in per tick, ``forecast_steps`` forecasts
    out. The state is the LSTM's (h, c) and the stream's normalisation constants
    (mean, std): ``norm_mean`` / ``norm_std`` from the StreamOpen config, or (0, 1)
    when ``norm_std`` is 0 (unset), since a stream cannot know its window's
    statistics in advance. A stateless request with the same ``norm_mean`` /
    ``norm_std`` normalises its window with them too, so stepping a stream T times
    forecasts what a request over the same T values does.
    """

    version = "1"
    description = (
        "LSTM forecaster (torch, one layer): normalises the last sequence_length values "
        "and rolls the network forward forecast_steps times with its carried state."
    )
    config_params = {
        "forecast_steps": ConfigParam(int, 5, 1, 64, "number of future values to forecast"),
        "sequence_length": ConfigParam(
            int, 10, 2, 512, "how many of the latest values the network reads"
        ),
        "hidden_size": ConfigParam(
            int, DEFAULT_HIDDEN_SIZE, 1, 4096, "LSTM hidden size; must match the loaded checkpoint"
        ),
        "norm_mean": ConfigParam(
            float, 0.0, -1e30, 1e30, "fixed normalisation mean (used when norm_std > 0)"
        ),
        "norm_std": ConfigParam(
            float,
            0.0,
            0.0,
            1e30,
            "fixed normalisation deviation; 0: requests use each window's own mean and "
            "deviation, streams use mean norm_mean and deviation 1",
        ),
    }
    input_schema = InputSchema(
        2, 4096, "the series, oldest first; at least sequence_length values", "sequence_length"
    )
    output_description = "forecast_steps forecasts, nearest first"
    settings_model = LstmSettings
    settings: LstmSettings

    def __init__(
        self, settings: Mapping[str, Any] | ModelSettings | None = None, device: str = "cpu"
    ) -> None:
        super().__init__(settings, device)
        self._net: LstmForecaster | None = None
        self._rollout: FastRollout | None = None
        self.meta: dict[str, Any] = {}
        hidden = self.settings.hidden_size
        self._params = {
            **self.config_params,
            "hidden_size": ConfigParam(
                int,
                hidden,
                doc="LSTM hidden size; only the served checkpoint's (settings.hidden_size)",
                choices=(hidden,),
            ),
        }

    def accepted_params(self) -> Mapping[str, ConfigParam]:
        """``hidden_size`` accepts only the served value (the ``hidden_size`` setting)."""
        return self._params

    @property
    def expected_hidden_size(self) -> int:
        """The hidden size this instance serves (the ``hidden_size`` setting, default 64)."""
        return self.settings.hidden_size

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint file, from the ``checkpoint`` setting or the shipped default."""
        path = self.settings.checkpoint
        return path if path.is_absolute() else REPO_ROOT / path

    def batch_key(self, config: Mapping[str, int | float | bool]) -> Hashable:
        """Requests with the same context length, horizon and normalisation share one pass."""
        if config["norm_std"] > 0:
            return (
                config["sequence_length"],
                config["forecast_steps"],
                config["norm_mean"],
                config["norm_std"],
            )
        return (config["sequence_length"], config["forecast_steps"])

    def load(self) -> None:
        """Read the checkpoint onto ``self.device``; SettingsError if it is unusable."""
        torch.set_num_threads(1)
        path = self.checkpoint_path
        state_dict, meta = read_checkpoint(path, "lstm_timeseries", "train-lstm", self.device)
        weight = state_dict.get("head.weight")
        if weight is None:
            raise SettingsError(
                "checkpoint", f"{path} is not an lstm_timeseries checkpoint (no head.weight)"
            )
        hidden = int(weight.shape[1])
        check_hidden_size(
            path, "lstm_timeseries", "scripts/train_lstm.py", hidden, self.expected_hidden_size
        )
        net = LstmForecaster(hidden)
        net.load_state_dict(state_dict)
        net.to(self.device)
        net.eval()
        self._net = net
        self._rollout = FastRollout(net)
        self.meta = meta

    @property
    def compute_path(self) -> str:
        """The C kernel (``commonlib/models/_lstmkernel``) or TorchScript, once loaded."""
        rollout = self._rollout
        if rollout is None:
            return ""
        if rollout.native:
            return "C kernel (commonlib/models/_lstmkernel, AVX2+FMA)"
        return f"TorchScript on {self.device} (the C kernel is not built, allowed or usable here)"

    def preprocess(self, batch: Sequence[PreparedInput]) -> LstmBatch:
        """Stack each request's last window into a [B, T] float32 array (C kernel) or tensor.

        The normalisation runs in :meth:`predict`, inside the kernel or TorchScript call.
        """
        config = batch[0].config
        length = int(config["sequence_length"])
        # prepare() guarantees every series has at least ``length`` values (the schema's
        # min_length_param), so the concatenation reshapes to [B, length]; it is about
        # twice as fast as np.stack.
        flat = np.concatenate([item.values[-length:] for item in batch])
        windows: torch.Tensor | F32 = flat.reshape(len(batch), length)
        rollout = self._rollout
        if rollout is None or not rollout.native:
            windows = torch.from_numpy(windows).to(self.device)
        steps = int(config["forecast_steps"])
        norm_std = float(config["norm_std"])
        if norm_std > 0:
            return LstmBatch(windows, steps, float(config["norm_mean"]), norm_std)
        return LstmBatch(windows, steps)

    def predict(self, batch_input: LstmBatch) -> FloatArray:
        """Normalise, roll out and de-normalise (:meth:`FastRollout.forecast`) → [B, steps]."""
        rollout = self._rollout
        if not isinstance(rollout, FastRollout):
            raise RuntimeError("lstm_timeseries used before load()")
        windows, steps = batch_input.windows, batch_input.steps
        if isinstance(windows, np.ndarray):
            return rollout.forecast_array(
                windows, steps, batch_input.norm_mean, batch_input.norm_std
            )
        with torch.inference_mode():
            out = rollout.forecast(windows, steps, batch_input.norm_mean, batch_input.norm_std)
        return cast(FloatArray, out.cpu().numpy())

    def postprocess(self, raw: FloatArray, batch: Sequence[PreparedInput]) -> list[ModelOutput]:
        """One row of forecasts per request."""
        # ``raw`` is a fresh C-contiguous [B, steps] array, so its rows are contiguous views.
        return [ModelOutput(row) for row in raw]

    # -- streams ---------------------------------------------------------------------
    def stream_spec(self, config: ResolvedConfig) -> StreamSpec:
        """One value in, ``forecast_steps`` out; state h [H], c [H], (mean, std) [2]."""
        hidden = self.expected_hidden_size
        return StreamSpec(1, int(config["forecast_steps"]), ((hidden,), (hidden,), (2,)))

    def stream_key(self, config: ResolvedConfig) -> Hashable:
        """Streams with the same horizon share a table (normalisation is per-stream state)."""
        return int(config["forecast_steps"])

    def initial_state(self, config: ResolvedConfig) -> tuple[FloatArray, ...]:
        """Zero (h, c) and the stream's normalisation constants."""
        hidden = self.expected_hidden_size
        zeros = np.zeros(hidden, dtype=np.float32)
        return zeros, zeros.copy(), _stream_norm(config)

    def check_initial_state(self, config: ResolvedConfig, state: tuple[FloatArray, ...]) -> None:
        """The normalisation deviation (last value) must be positive."""
        if not state[2][1] > 0:
            raise InvalidInput(
                f"initial_state's last value (the normalisation deviation) must be > 0, "
                f"got {float(state[2][1])}"
            )

    def stream_step(
        self, observations: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, StreamState]:
        """One value per character in, the default horizon's forecasts out."""
        steps = int(self.config_params["forecast_steps"].default)
        return self.stream_step_for_key(steps, observations, state)

    def stream_step_for_key(
        self, key: Hashable, observations: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, StreamState]:
        """Normalise, one cell step from the carried (h, c), then roll ``key`` steps forward."""
        rollout = self._rollout
        if not isinstance(rollout, FastRollout):
            raise RuntimeError("lstm_timeseries used before load()")
        h, c, norm = state
        mean, std = norm[:, 0:1], norm[:, 1:2]
        z = (observations - mean) / std
        forecasts, new_h, new_c = rollout.step(z, h, c, int(cast(int, key)))
        return forecasts * std + mean, (new_h, new_c, norm)


def _stream_norm(config: ResolvedConfig) -> FloatArray:
    """(mean, std) of a stream: the config's fixed pair, or (norm_mean, 1) when unset."""
    std = float(config["norm_std"])
    return np.array([float(config["norm_mean"]), std if std > 0 else 1.0], dtype=np.float32)
