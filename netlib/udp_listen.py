"""``python -m netlib.udp_listen --port N``: print what a game engine would receive.

Decodes both encodings (protobuf ``Datagram`` and JSON), reassembles chunked
results, and reports sequence gaps (lost datagrams). With ``--server HOST:PORT``
it subscribes over TCP itself and keeps that connection open while listening.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from commonlib.wire import pb
from netlib.framing import frame


@dataclass
class Reassembler:
    """Collects chunks per (sender, first sequence) and yields whole results."""

    parts: dict[tuple[Any, int], dict[int, bytes]] = field(default_factory=dict)

    def add(self, sender: Any, first_seq: int, index: int, count: int, data: bytes) -> bytes | None:
        """Store one chunk; the joined payload once all ``count`` chunks are in."""
        if count <= 1:
            return data
        chunks = self.parts.setdefault((sender, first_seq), {})
        chunks[index] = data
        if len(chunks) < count:
            return None
        del self.parts[(sender, first_seq)]
        return b"".join(chunks[i] for i in range(count))


def decode(datagram: bytes) -> tuple[int, int, int, int, bytes, str]:
    """(sequence, server_time_us, chunk_index, chunk_count, payload, encoding).

    A stream snapshot part is whole by itself: it comes back as one JSON payload
    (chunk 0 of 1) holding the snapshot with its ``chunk`` / ``chunks`` numbers.
    """
    if datagram[:1] == b"{":
        message = json.loads(datagram)
        if "snapshot" in message:
            return _snapshot_part(message, message["snapshot"])
        body = message.get("result")
        payload = json.dumps(body).encode() if body is not None else message["part"].encode()
        return (
            message["seq"],
            message["ts_us"],
            message["chunk"],
            message["chunks"],
            payload,
            "json",
        )
    parsed = pb.Datagram.FromString(datagram)
    if parsed.HasField("snapshot"):
        snap = parsed.snapshot
        width = max(1, snap.output_width)
        outputs = struct.unpack(f"<{len(snap.outputs) // 4}f", snap.outputs)
        body = {
            "model": snap.model,
            "tick": snap.server_tick,
            "tick_time_us": snap.tick_time_us,
            "width": snap.output_width,
            "ids": list(struct.unpack(f"<{len(snap.ids) // 4}I", snap.ids)),
            "outputs": [list(outputs[i : i + width]) for i in range(0, len(outputs), width)],
        }
        message = {
            "seq": parsed.sequence,
            "ts_us": parsed.server_time_us,
            "chunk": parsed.chunk_index,
            "chunks": parsed.chunk_count,
        }
        return _snapshot_part(message, body)
    return (
        parsed.sequence,
        parsed.server_time_us,
        parsed.chunk_index,
        parsed.chunk_count,
        parsed.payload,
        "protobuf",
    )


def _snapshot_part(
    message: dict[str, Any], body: dict[str, Any]
) -> tuple[int, int, int, int, bytes, str]:
    part = {"snapshot": body, "chunk": message["chunk"], "chunks": message["chunks"]}
    return message["seq"], message["ts_us"], 0, 1, json.dumps(part).encode(), "json"


def describe(payload: bytes, encoding: str) -> str:
    """A one-line summary of a whole result."""
    if encoding == "json":
        return json.dumps(json.loads(payload), separators=(",", ":"))
    result = pb.BroadcastResult.FromString(payload)
    return json.dumps(MessageToDict(result), separators=(",", ":"))


def subscribe(server: str, port: int, json_encoding: bool, models: list[str]) -> socket.socket:
    """Open a TCP connection to ``server`` and subscribe port on it.

    The host is left empty: the server sends to this machine's address as it sees
    the connection (the only address it allows without a token and an allowed CIDR).
    """
    host, _, tcp_port = server.rpartition(":")
    conn = socket.create_connection((host, int(tcp_port)), timeout=10)
    envelope = pb.Envelope(request_id=1)
    envelope.subscribe.port = port
    envelope.subscribe.encoding = pb.ENCODING_JSON if json_encoding else pb.ENCODING_PROTOBUF
    envelope.subscribe.models.extend(models)
    conn.sendall(frame(envelope.SerializeToString()))
    (length,) = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))
    reply = pb.Envelope.FromString(conn.recv(length, socket.MSG_WAITALL))
    if reply.HasField("error"):
        raise SystemExit(f"subscribe failed: {reply.error.message}")
    return conn


def main(argv: list[str] | None = None) -> int:
    """Listen until Ctrl-C (or --count results); print each result and sequence gaps."""
    parser = argparse.ArgumentParser(prog="python -m netlib.udp_listen", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="UDP port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--server", help="HOST:PORT of a daemon to subscribe to over TCP")
    parser.add_argument("--json", action="store_true", help="subscribe with the JSON encoding")
    parser.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many results")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    keep = subscribe(args.server, args.port, args.json, args.model) if args.server else None
    print(f"listening on udp {args.host}:{sock.getsockname()[1]}", flush=True)
    expected: dict[Any, int] = {}
    reassembler = Reassembler()
    results = lost = 0
    try:
        while not args.count or results < args.count:
            datagram, sender = sock.recvfrom(65535)
            try:
                seq, ts_us, index, count, payload, encoding = decode(datagram)
            except (ValueError, KeyError, DecodeError) as exc:
                print(f"undecodable datagram from {sender}: {exc}", file=sys.stderr)
                continue
            gap = seq - expected.get(sender, seq)
            if gap > 0:
                lost += gap
                print(f"!! {gap} datagram(s) lost before seq {seq}", flush=True)
            expected[sender] = max(seq + 1, expected.get(sender, 0))
            whole = reassembler.add(sender, seq - index, index, count, payload)
            if whole is None:
                continue
            results += 1
            delay_ms = time.time() * 1000 - ts_us / 1000
            print(f"seq={seq} delay={delay_ms:.2f}ms {describe(whole, encoding)}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        print(f"{results} results, {lost} datagrams lost", file=sys.stderr)
        sock.close()
        if keep is not None:
            keep.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
