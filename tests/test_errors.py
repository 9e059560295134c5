"""util.errors.ErrorCode and the proto's ErrorCode enum are the same table."""

from commonlib.wire import pb
from util.errors import ErrorCode


def test_error_codes_match_the_proto() -> None:
    proto = {v.name.removeprefix("ERROR_CODE_"): v.number for v in pb.ErrorCode.DESCRIPTOR.values}
    assert proto == {c.name: c.value for c in ErrorCode}
