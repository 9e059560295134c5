"""Coverage-guided fuzzing of the frame decoder and packet dispatcher with atheris.

    .venv/bin/python tests/fuzz/fuzz_packets.py -max_total_time=60   # or: make fuzz

Each input is a byte stream fed to a fresh in-memory connection of the real
server stack (framing, codec, dispatcher, handlers, facade, batcher, models on a
test clock). It fails on any exception escaping the server, and on a connection
left open that stopped answering a Ping.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris

with atheris.instrument_imports():
    from factory.client_codec import frame_envelope, ping_envelope
    from tests.support import make_app

APP = make_app({"server": {"max_frame_bytes": 4096, "max_inflight_per_connection": 64}})
PING_FRAME = frame_envelope(ping_envelope(7))


def one_input(data: bytes) -> None:
    """Feed ``data`` to a new connection; then check the connection still answers."""
    client = APP.connect()
    client.send_raw(data)
    APP.settle()
    client.replies()
    if not client.closed and not client.protocol._unprocessed:
        client.send_raw(PING_FRAME)
        APP.settle()
        assert any(r.HasField("pong") for r in client.replies()), (
            "open connection stopped answering"
        )
    client.protocol.connectionLost()
    APP.clients.clear()


def main() -> None:
    """Run atheris with the command-line options (libFuzzer flags)."""
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
