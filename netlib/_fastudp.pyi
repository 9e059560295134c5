def snapshot_datagrams(
    model: bytes,
    tick: int,
    tick_time_us: int,
    width: int,
    ids: bytes,
    outputs: bytes,
    rows_per_part: int,
    first_sequence: int,
    server_time_us: int,
    /,
) -> list[bytes]: ...
def send_datagrams(fd: int, host: str, port: int, datagrams: list[bytes], /) -> int: ...
