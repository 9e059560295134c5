"""The recurrent state of a group of character streams, one row per stream slot.

A :class:`StateTable` holds one tensor ``[capacity, *shape]`` per state entry of
a :class:`~commonlib.models.streaming.StreamSpec`, on the model's device. A tick
gathers the rows of the characters it steps (``index_select``), the model steps
them, and the new rows are scattered back (``index_copy_``). It grows by
doubling and keeps every row. Only the worker thread that runs the model touches
the tensors (the reactor queues initial states instead: commonlib/streams.py).
"""

from __future__ import annotations

import commonlib.torch_env  # noqa: F401 - sets OMP_NUM_THREADS before torch loads

# isort: split

from collections.abc import Sequence

import numpy as np
import torch

from commonlib.models.base import FloatArray
from commonlib.models.streaming import StreamState


class StateTable:
    """Preallocated per-slot state tensors on one device, grown by doubling."""

    def __init__(
        self, shapes: Sequence[tuple[int, ...]], capacity: int, device: str = "cpu"
    ) -> None:
        if capacity < 1:
            raise ValueError("a state table needs a capacity of at least 1")
        self.shapes = tuple(tuple(shape) for shape in shapes)
        self.device = device
        with torch.inference_mode():
            self.tensors: StreamState = tuple(
                torch.zeros((capacity, *shape), dtype=torch.float32, device=device)
                for shape in self.shapes
            )

    @property
    def capacity(self) -> int:
        """Slots the tensors hold now."""
        return int(self.tensors[0].shape[0])

    def ensure_capacity(self, needed: int) -> None:
        """Double the capacity until it holds ``needed`` slots, keeping every row."""
        capacity = self.capacity
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        with torch.inference_mode():
            grown = []
            for old in self.tensors:
                new = old.new_zeros((capacity, *old.shape[1:]))
                new[: old.shape[0]].copy_(old)
                grown.append(new)
            self.tensors = tuple(grown)

    def write(self, slot: int, state: Sequence[FloatArray]) -> None:
        """Set one slot's state (one float32 array per state entry)."""
        with torch.inference_mode():
            for tensor, values in zip(self.tensors, state, strict=True):
                tensor[slot].copy_(torch.from_numpy(values).reshape(tensor.shape[1:]))

    def write_many(self, writes: Sequence[tuple[int, Sequence[FloatArray]]]) -> None:
        """Set many slots' states at once (a later write to the same slot wins).

        One ``index_copy_`` per state entry: a tick that follows 2,000 StreamOpens
        writes their initial states in about a millisecond, where one ``write``
        per slot took tens (a late first tick).
        """
        latest = dict(writes)
        if not latest:
            return
        index = torch.tensor(list(latest), dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            for entry, tensor in enumerate(self.tensors):
                rows = np.stack([state[entry] for state in latest.values()]).reshape(
                    (len(latest), *tensor.shape[1:])
                )
                tensor.index_copy_(0, index, torch.from_numpy(rows).to(tensor.device, tensor.dtype))

    def read(self, slot: int) -> tuple[FloatArray, ...]:
        """One slot's state as float32 arrays (tests, debugging)."""
        return tuple(tensor[slot].cpu().numpy().copy() for tensor in self.tensors)

    def gather(self, index: torch.Tensor) -> StreamState:
        """The rows of ``index`` (a 1-D int64 tensor on the table's device), [B, *shape] each."""
        return tuple(tensor.index_select(0, index) for tensor in self.tensors)

    def scatter(self, index: torch.Tensor, state: StreamState) -> None:
        """Write ``state`` ([B, *shape] each) back to the rows of ``index``."""
        if len(state) != len(self.tensors):
            raise RuntimeError(
                f"stream_step returned {len(state)} state tensors, the table has "
                f"{len(self.tensors)}"
            )
        for tensor, rows in zip(self.tensors, state, strict=True):
            tensor.index_copy_(0, index, rows.to(tensor.dtype))
