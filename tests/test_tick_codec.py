"""Packed tick arrays: decode any N x D, refuse lengths that are not, and the state table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from commonlib.models.streaming import StreamSpec
from commonlib.state_table import StateTable
from commonlib.streams import StreamGroup
from commonlib.wire import pb
from factory.tick_codec import decode_tick, encode_tick
from util.errors import InvalidInput


@st.composite
def ticks(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 60))
    ids = draw(arrays(np.uint32, n, elements=st.integers(0, 2**32 - 1)))
    rows = draw(arrays(np.float32, (n, d), elements=st.floats(width=32, allow_nan=True)))
    return ids, rows


@settings(max_examples=60, deadline=None)
@given(tick=ticks())
def test_any_n_by_d_tick_round_trips_through_the_wire(tick: tuple[np.ndarray, np.ndarray]) -> None:
    ids, rows = tick
    wire = pb.Tick.FromString(encode_tick("m", ids, rows, 3, 4).SerializeToString())
    decoded = decode_tick(wire.ids, wire.observations)
    assert decoded.ids.dtype == np.dtype("<u4") and decoded.observations.dtype == np.dtype("<f4")
    assert decoded.width == rows.shape[1]
    assert np.array_equal(decoded.ids, ids)
    assert np.array_equal(decoded.observations.view(np.uint32), rows.view(np.uint32))


def test_an_empty_tick_decodes_to_no_rows() -> None:
    decoded = decode_tick(b"", b"")
    assert decoded.ids.shape == (0,) and decoded.observations.shape[0] == 0


@pytest.mark.parametrize(
    ("ids", "observations", "words"),
    [
        (b"\x01\x00\x00", b"\0" * 4, "ids has 3 bytes, not a multiple of 4"),
        (b"\x01\0\0\0\x02\0\0\0", b"\0" * 12, "not N x D float32 for N = 2"),
        (b"\x01\0\0\0", b"", "not N x D"),
        (b"\x01\0\0\0", b"\0" * 5, "not N x D"),
        (b"", b"\0" * 4, "no ids but 4 bytes"),
    ],
)
def test_lengths_that_are_not_n_by_d_are_refused(
    ids: bytes, observations: bytes, words: str
) -> None:
    with pytest.raises(InvalidInput, match=words):
        decode_tick(ids, observations)


def test_state_table_grows_by_doubling_and_keeps_every_row() -> None:
    table = StateTable([(3,), (2, 2)], capacity=2)
    table.write(0, (np.array([1, 2, 3], np.float32), np.full((2, 2), 4, np.float32)))
    table.write(1, (np.array([5, 6, 7], np.float32), np.full((2, 2), 8, np.float32)))
    table.ensure_capacity(5)
    assert table.capacity == 8
    assert table.read(0)[0].tolist() == [1, 2, 3] and table.read(1)[1].tolist() == [[8, 8]] * 2
    assert table.read(7)[0].tolist() == [0, 0, 0]
    with torch.inference_mode():
        index = torch.tensor([1, 0])
        rows = table.gather(index)
        assert rows[0].tolist() == [[5, 6, 7], [1, 2, 3]]
        table.scatter(index, (rows[0] * 10, rows[1] + 1))
    assert table.read(0)[0].tolist() == [10, 20, 30] and table.read(1)[1].tolist() == [[9, 9]] * 2


def test_state_table_writes_many_slots_at_once_and_the_later_write_of_a_slot_wins() -> None:
    table = StateTable([(3,), (2, 2)], capacity=4)
    table.write_many(
        [
            (2, (np.array([1, 2, 3], np.float32), np.full((2, 2), 4, np.float32))),
            (0, (np.array([5, 6, 7], np.float32), np.full((2, 2), 8, np.float32))),
            # Slot 2 freed and opened again before a step: its newest initial state wins.
            (2, (np.array([9, 9, 9], np.float32), np.full((2, 2), 1, np.float32))),
        ]
    )
    assert table.read(0)[0].tolist() == [5, 6, 7] and table.read(0)[1].tolist() == [[8, 8]] * 2
    assert table.read(2)[0].tolist() == [9, 9, 9] and table.read(2)[1].tolist() == [[1, 1]] * 2
    assert table.read(1)[0].tolist() == [0, 0, 0] and table.read(3)[1].tolist() == [[0, 0]] * 2
    table.write_many([])  # a tick with no new stream writes nothing


def test_freed_slots_are_reused_lowest_first_and_the_arrays_double_when_full() -> None:
    group = StreamGroup("k", StreamSpec(2, 1, ((1,),)), capacity=2, device="cpu")
    state = (np.zeros(1, np.float32),)
    assert [group.allocate(1, cid, state, 0.0) for cid in (10, 11)] == [0, 1]
    group.pending_obs[1] = [4.0, 5.0]
    assert group.allocate(1, 12, state, 0.0) == 2
    assert group.capacity == 4 and group.pending_obs[1].tolist() == [4.0, 5.0]
    assert group.character[:3].tolist() == [10, 11, 12]
    generation = int(group.generation[0])
    group.release(0)
    assert group.generation[0] == generation + 1 and not group.in_use[0]
    assert group.allocate(1, 13, state, 0.0) == 0
    assert group.open_count == 3
    assert [slot for slot, _ in group.take_inits()] == [0, 1, 2, 0]
    assert group.take_inits() == []
