"""Write the hostile protobuf byte fixtures in tests/fixtures/hostile/ (committed).

Each file is one frame BODY (no length prefix); tests/test_bad_input.py frames
and sends them and checks the documented answer (docs/protocol.md, "Bad input").
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from commonlib.wire import pb

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hostile"
_GROUP_START = b"\xc3\x3e"  # field 1000, wire type 3 (start group)
_GROUP_END = b"\xc4\x3e"  # field 1000, wire type 4 (end group)


def nested_groups(depth: int) -> bytes:
    """A ping whose unknown field 1000 nests ``depth`` groups deep."""
    ping = pb.Envelope(request_id=1, ping=pb.Ping()).SerializeToString()
    return ping + _GROUP_START * depth + _GROUP_END * depth


def packed_floats(count: int) -> bytes:
    """An InferRequest whose input holds ``count`` packed floats."""
    envelope = pb.Envelope(request_id=2)
    envelope.infer_request.model = "moving_average"
    envelope.infer_request.input.values.extend([1.0] * count)
    return envelope.SerializeToString()


def fixtures() -> dict[str, bytes]:
    """Name → frame body."""
    float_1e39 = pb.Envelope(request_id=6)
    float_1e39.infer_request.model = "moving_average"
    float_1e39.infer_request.input.values.extend([1.0, 2.0, 3.0, 4.0, 5.0])
    body = float_1e39.SerializeToString()
    # 1e39 does not fit a float32: as an IEEE single it is +inf (0x7f800000).
    inf = struct.pack("<f", float("inf"))
    one = struct.pack("<f", 1.0)
    body_1e39 = body.replace(one, inf, 1)
    config_1e39 = pb.Envelope(request_id=7)
    config_1e39.infer_request.model = "moving_average"
    config_1e39.infer_request.input.values.extend([1.0, 2.0, 3.0, 4.0, 5.0])
    config_1e39.infer_request.config["window_size"].float_value = 1e39
    unknown = pb.Envelope(request_id=5, ping=pb.Ping(client_time_ns=9)).SerializeToString()
    return {
        "nesting_101.bin": nested_groups(101),
        "nesting_10000.bin": nested_groups(10_000),
        "packed_4mib.bin": packed_floats(1_048_576),
        "truncated_varint.bin": b"\x08\xff\xff\xff",
        "wrong_wire_type.bin": b"\x0d\x01\x02\x03\x04",  # request_id (varint) sent as fixed32
        "unknown_fields.bin": unknown + b"\xf8\x3e\x01" + b"\xc2\x3e\x03abc",
        "float_1e39_input.bin": body_1e39,
        "double_1e39_config.bin": config_1e39.SerializeToString(),
    }


def main() -> None:
    """Write every fixture."""
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in fixtures().items():
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
