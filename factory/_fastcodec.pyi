def parse_infer(
    payload: bytes, /
) -> tuple[int, str, str, bytes, tuple[int, ...], bytes] | None: ...
def encode_infer_reply(
    request_id: int,
    head: bytes,
    predictions: bytes,
    confidence: bytes | None,
    queue_wait_ms: float,
    batch_part: bytes,
    total_ms: float,
    /,
) -> bytes: ...
def peek_infer_head(payload: bytes, /) -> tuple[int, bytes] | None: ...
