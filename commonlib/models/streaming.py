"""Stream support: a model whose per-character recurrent state the server holds.

A character stream (docs/streams.md) is opened once with a config; from then on the
client sends only its newest observation per frame, and the server steps every
character with a new observation together, once per tick, in one batch. A model
joins by also subclassing :class:`StreamingModel` next to ``BaseModel``:

* :meth:`StreamingModel.stream_spec` (reactor thread, no weights needed): the
  observation width D, the output width K and the per-character state shapes for a
  stream opened with a resolved config;
* :meth:`StreamingModel.stream_key`: streams with equal keys share one state table
  and are stepped in one batch (e.g. equal forecast horizons);
* :meth:`StreamingModel.initial_state` (reactor thread): one character's starting
  state (zeros by default; a model may keep per-stream constants in it);
* :meth:`StreamingModel.stream_step` (worker thread, after ``load``): one step for
  a batch of characters, ``[B, D]`` observations and their gathered state in,
  ``[B, K]`` outputs and the new state out.

The server owns the state tables (one per model and stream key, each a tuple of
tensors ``[capacity, *shape]`` on the model's device), gathers the rows of the
characters stepped in a tick, calls ``stream_step`` and scatters the new state
back; a model never keeps per-character state itself.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

import commonlib.torch_env  # noqa: F401 - sets OMP_NUM_THREADS before torch loads

# isort: split

import torch

from commonlib.models.base import FloatArray

ResolvedConfig = Mapping[str, int | float | bool]
StreamState = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class StreamSpec:
    """The shapes of one stream: observation width, output width, state shapes."""

    input_width: int
    output_width: int
    state_shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if self.input_width < 1 or self.output_width < 1:
            raise ValueError("a stream needs at least one input and one output value")
        if not self.state_shapes:
            raise ValueError("a stream needs at least one state tensor")

    @property
    def state_width(self) -> int:
        """Floats in one character's whole state (what StreamOpen.initial_state holds)."""
        return sum(math.prod(shape) for shape in self.state_shapes)


class StreamingModel(ABC):
    """Mixin for a ``BaseModel`` that can serve character streams (see module docs)."""

    @abstractmethod
    def stream_spec(self, config: ResolvedConfig) -> StreamSpec:
        """Widths and state shapes of a stream opened with ``config`` (already resolved)."""

    @abstractmethod
    def stream_key(self, config: ResolvedConfig) -> Hashable:
        """Streams whose resolved configs give equal keys share a state table and a batch."""

    def initial_state(self, config: ResolvedConfig) -> tuple[FloatArray, ...]:
        """One character's starting state, one float32 array per ``state_shapes`` entry."""
        spec = self.stream_spec(config)
        return tuple(np.zeros(shape, dtype=np.float32) for shape in spec.state_shapes)

    @abstractmethod
    def stream_step(
        self, observations: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, StreamState]:
        """One step for B characters (worker thread, after ``load``).

        ``observations`` is ``[B, D]`` float32 on the model's device, every value
        finite (the server refuses non-finite rows before stepping); ``state`` holds
        the characters' gathered state tensors, ``[B, *shape]`` each. Returns the
        ``[B, K]`` outputs and the new state in the same layout. Row i of the
        outputs must depend only on row i of the inputs: stepping N characters in
        one batch equals stepping each alone.
        """

    # -- optional hooks (defaults suit most models) ----------------------------------
    def check_initial_state(  # noqa: B027 - optional hook
        self, config: ResolvedConfig, state: tuple[FloatArray, ...]
    ) -> None:
        """Check a client-supplied StreamOpen.initial_state (already finite, right shapes).

        Raise ``InvalidInput`` to refuse it; the default accepts any finite state.
        """

    def stream_step_for_key(
        self, key: Hashable, observations: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, StreamState]:
        """What the server calls for one state table: ``stream_step`` for streams of ``key``.

        Override it when the step depends on the table's stream key (e.g. the
        forecast horizon of lstm_timeseries); the default ignores the key.
        """
        return self.stream_step(observations, state)
