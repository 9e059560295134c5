"""Generated protobuf code for ``proto/inference.proto`` (run ``make proto``).

It lives here rather than in a top-level ``proto`` package, which would collide
with the widely installed ``proto-plus`` distribution.
"""

from commonlib.wire import inference_pb2 as pb

__all__ = ["pb"]
