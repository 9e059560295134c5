"""Packed per-tick arrays of character streams: Tick in, TickResult out (docs/protocol.md §9).

A Tick carries N character ids as ``uint32`` little-endian and N observations of
D floats as ``float32`` little-endian, row-major. :func:`decode_tick` reads them
with one ``numpy.frombuffer`` each and a reshape: no Python object per character.
The reply side packs the same way (:func:`pack_ids`, :func:`pack_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from commonlib.wire import pb
from util.errors import InvalidInput

IdArray = npt.NDArray[np.uint32]
RowArray = npt.NDArray[np.float32]

_ID_DTYPE = np.dtype("<u4")
_FLOAT_DTYPE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class TickArrays:
    """A decoded Tick packet: ``ids`` [N] and ``observations`` [N, D] (read-only views)."""

    ids: IdArray
    observations: RowArray

    @property
    def width(self) -> int:
        """Floats per observation (D)."""
        return int(self.observations.shape[1])


def decode_tick(ids: bytes, observations: bytes) -> TickArrays:
    """The Tick's packed arrays; InvalidInput when the lengths do not make N x D.

    D is ``len(observations) / (4 N)`` and must be a whole number of at least 1
    (the caller checks it against the streams' width). N = 0 is an empty tick.
    """
    if len(ids) % 4:
        raise InvalidInput(f"Tick ids has {len(ids)} bytes, not a multiple of 4 (uint32 each)")
    n = len(ids) // 4
    if n == 0:
        if observations:
            raise InvalidInput(f"Tick has no ids but {len(observations)} bytes of observations")
        return TickArrays(np.empty(0, _ID_DTYPE), np.empty((0, 1), _FLOAT_DTYPE))
    if not observations or len(observations) % (4 * n):
        raise InvalidInput(
            f"Tick observations has {len(observations)} bytes: not N x D float32 "
            f"for N = {n} ids (a multiple of {4 * n} bytes, at least one float per id)"
        )
    id_array = np.frombuffer(ids, dtype=_ID_DTYPE)
    rows = np.frombuffer(observations, dtype=_FLOAT_DTYPE).reshape(n, -1)
    return TickArrays(id_array, rows)


def encode_tick(
    model: str,
    ids: npt.ArrayLike,
    observations: npt.ArrayLike,
    client_tick: int = 0,
    client_time_us: int = 0,
) -> pb.Tick:
    """A Tick message from an id array [N] and an observation array [N, D] (clients, tests)."""
    return pb.Tick(
        model=model,
        client_tick=client_tick,
        client_time_us=client_time_us,
        ids=pack_ids(ids),
        observations=pack_rows(observations),
    )


def pack_ids(ids: npt.ArrayLike) -> bytes:
    """Character ids as packed uint32 little-endian."""
    return np.ascontiguousarray(ids, dtype=_ID_DTYPE).tobytes()


def pack_rows(rows: npt.ArrayLike) -> bytes:
    """A float array as packed float32 little-endian, row-major."""
    return np.ascontiguousarray(rows, dtype=_FLOAT_DTYPE).tobytes()


def unpack_rows(data: bytes, width: int) -> RowArray:
    """Packed float32 LE rows of ``width`` floats → [N, width] (read-only view)."""
    return np.frombuffer(data, dtype=_FLOAT_DTYPE).reshape(-1, width)


def unpack_ids(data: bytes) -> IdArray:
    """Packed uint32 LE ids → [N] (read-only view)."""
    return np.frombuffer(data, dtype=_ID_DTYPE)
