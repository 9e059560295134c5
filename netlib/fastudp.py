"""Per-tick UDP snapshot datagrams: the C extension when built, else pure Python.

``snapshot_datagrams`` writes every ``Datagram`` of one tick's snapshot for one target
(``rows_per_part`` characters a part, sequence numbers from ``first_sequence``), the
same bytes either way (``tests/test_stream_snapshots.py`` checks it). With the
extension, ``send_datagrams`` sends a target's datagrams with one ``sendmmsg`` per 64
and no GIL: 400 datagrams of a 2,000-pose tick cost the reactor a fraction of what
400 ``sendto`` calls from Python do. Without it ``send_datagrams`` is None and the
broadcaster writes them one by one.

``INFERENCE_PURE_PYTHON=1`` forces the pure-Python path (factory.fastcodec's switch);
``scripts/build_native.py`` (``make native``) builds ``netlib/_fastudp.c``.
"""

from __future__ import annotations

from collections.abc import Callable

from commonlib.wire import pb
from util.native import native_module


def snapshot_datagrams_py(
    model: bytes,
    tick: int,
    tick_time_us: int,
    width: int,
    ids: bytes,
    outputs: bytes,
    rows_per_part: int,
    first_sequence: int,
    server_time_us: int,
) -> list[bytes]:
    """Every Datagram of one snapshot for one target, with protobuf's own encoder."""
    rows = len(ids) // 4
    row_bytes = 4 * width
    count = -(-rows // rows_per_part)
    out = []
    for index in range(count):
        first = index * rows_per_part
        last = min(rows, first + rows_per_part)
        part = pb.Snapshot(
            model=model.decode("utf-8"),
            server_tick=tick,
            tick_time_us=tick_time_us,
            output_width=width,
            ids=ids[4 * first : 4 * last],
            outputs=outputs[row_bytes * first : row_bytes * last],
        )
        datagram = pb.Datagram(
            sequence=first_sequence + index,
            server_time_us=server_time_us,
            chunk_index=index,
            chunk_count=count,
            snapshot=part,
        )
        out.append(datagram.SerializeToString())
    return out


SnapshotDatagrams = Callable[[bytes, int, int, int, bytes, bytes, int, int, int], list[bytes]]
SendDatagrams = Callable[[int, str, int, list[bytes]], int]

snapshot_datagrams: SnapshotDatagrams = snapshot_datagrams_py
send_datagrams: SendDatagrams | None = None

_fastudp = native_module("netlib._fastudp")
native = _fastudp is not None
if _fastudp is not None:
    snapshot_datagrams = _fastudp.snapshot_datagrams
    send_datagrams = _fastudp.send_datagrams
