"""UDP broadcast of results to game-engine listeners (Unreal, Unity, scripts).

Every datagram carries a per-target sequence number and the server's timestamp,
and stays within ``max_datagram_bytes`` (1,200 by default, safe under common
MTUs): a larger result is split into ``chunk_count`` datagrams with consecutive
sequence numbers. Sending never blocks: when the socket cannot take a datagram
it is dropped and counted. The payload encodings are described in
docs/protocol.md ("UDP broadcast").
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

from commonlib.wire import pb
from netlib import fastudp

Encoding = Literal["protobuf", "json"]
# Worst-case bytes of a protobuf Datagram around its payload: five tagged fields,
# three uint64 varints (10 bytes each) and two uint32 varints (5 each), plus the
# payload's length prefix.
_PB_OVERHEAD = 5 + 3 * 10 + 2 * 5 + 5
MIN_DATAGRAM_BYTES = 128
MAX_DATAGRAM_BYTES = 65_507  # the largest UDP payload over IPv4


class TargetLimitReached(Exception):
    """No more dynamic UDP targets may be added."""


class InvalidTarget(ValueError):
    """The host is not an IP address the socket can send to, or the port is bad."""


class TargetTaken(Exception):
    """The address is already another owner's target (or a static one): it is not taken over."""


@dataclass
class UdpTarget:
    """One listener: where it is, how it wants results, and its counters."""

    host: str
    port: int
    encoding: Encoding = "protobuf"
    models: frozenset[str] = frozenset()
    static: bool = False
    max_datagram_bytes: int = 1200
    sequence: int = 0
    sent: int = 0
    dropped: int = 0
    owner: object | None = field(default=None, repr=False)
    expires_at: float | None = None

    def wants(self, model: str) -> bool:
        """Whether this target receives results of ``model``."""
        return not self.models or model in self.models


def _packed(snapshot: TickSnapshot) -> tuple[bytes, bytes, bytes]:
    """The snapshot's model name, ids and outputs as the bytes its datagrams carry."""
    ids = np.ascontiguousarray(snapshot.ids, dtype="<u4").tobytes()
    outputs = np.ascontiguousarray(snapshot.outputs, dtype="<f4").tobytes()
    return snapshot.model.encode("utf-8"), ids, outputs


def normalise_host(host: str) -> str:
    """An IPv4 literal to send to; 'localhost' means 127.0.0.1. Raises InvalidTarget."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidTarget(f"UDP target host must be an IPv4 address, got {host!r}") from None
    if address.version != 4:
        raise InvalidTarget(f"UDP target host must be an IPv4 address, got {host!r}")
    return str(address)


class UdpBroadcaster(DatagramProtocol):
    """Sends each published result to every target that wants its model."""

    def __init__(
        self,
        clock: IReactorTime,
        max_datagram_bytes: int = 1200,
        max_subscribers: int = 64,
        max_per_owner: int = 4,
        lease_s: float = 60.0,
    ) -> None:
        self._clock = clock
        self.max_datagram_bytes = max_datagram_bytes
        self.max_subscribers = max_subscribers
        self.max_per_owner = max_per_owner
        self.lease_s = lease_s
        self.leases_expired = 0
        self._targets: dict[tuple[str, int], UdpTarget] = {}
        self.datagrams_sent = 0
        self.datagrams_dropped = 0
        self.results_chunked = 0

    # -- targets ----------------------------------------------------------------
    def add_target(
        self,
        host: str,
        port: int,
        encoding: Encoding = "protobuf",
        models: frozenset[str] = frozenset(),
        *,
        static: bool = False,
        owner: object | None = None,
        max_datagram_bytes: int | None = None,
    ) -> UdpTarget:
        """Add (or renew) a target. Raises InvalidTarget, TargetTaken or TargetLimitReached.

        ``max_datagram_bytes`` (MIN_DATAGRAM_BYTES..MAX_DATAGRAM_BYTES) caps this target's
        datagrams; None means the broadcaster's ``max_datagram_bytes``.

        A dynamic target is a lease: it expires ``lease_s`` after it was last added
        unless added again. Static targets (from the config) never expire. A dynamic
        target belongs to its ``owner``: only that owner renews or removes it, and
        adding an address that is another owner's (or static) raises TargetTaken.
        """
        if not 1 <= port <= 65535:
            raise InvalidTarget(f"UDP target port must be 1..65535, got {port}")
        size = self.max_datagram_bytes if max_datagram_bytes is None else max_datagram_bytes
        if not MIN_DATAGRAM_BYTES <= size <= MAX_DATAGRAM_BYTES:
            raise InvalidTarget(
                f"max_datagram_bytes must be {MIN_DATAGRAM_BYTES}..{MAX_DATAGRAM_BYTES} "
                f"(0 for the server's {self.max_datagram_bytes}), got {size}"
            )
        address = (normalise_host(host), port)
        now = self._clock.seconds()
        self.expire(now)
        existing = self._targets.get(address)
        if existing is not None and not static and (existing.static or existing.owner is not owner):
            whose = "a static target (udp.targets)" if existing.static else "another connection's"
            raise TargetTaken(f"UDP target {address[0]}:{port} is {whose}")
        if existing is None and not static:
            dynamic = sum(1 for t in self._targets.values() if not t.static)
            if dynamic >= self.max_subscribers:
                raise TargetLimitReached(
                    f"{dynamic} UDP subscribers already "
                    f"(udp.max_subscribers={self.max_subscribers})"
                )
            if owner is not None:
                owned = sum(1 for t in self._targets.values() if t.owner is owner)
                if owned >= self.max_per_owner:
                    raise TargetLimitReached(
                        f"this connection has {owned} UDP subscriptions "
                        f"(udp.max_subscriptions_per_connection={self.max_per_owner})"
                    )
        target = UdpTarget(address[0], port, encoding, models, static, size, owner=owner)
        if existing is not None:
            target.sequence = existing.sequence
            target.static = existing.static or static
        if not target.static:
            target.expires_at = now + self.lease_s
        self._targets[address] = target
        return target

    def remove_target(self, host: str, port: int, owner: object | None = None) -> bool:
        """Drop ``owner``'s dynamic target; False if it has none there (static ones stay)."""
        address = (normalise_host(host), port)
        target = self._targets.get(address)
        if target is None or target.static or target.owner is not owner:
            return False
        del self._targets[address]
        return True

    def expire(self, now: float) -> int:
        """Drop dynamic targets whose lease has run out; how many."""
        doomed = [
            a for a, t in self._targets.items() if t.expires_at is not None and t.expires_at <= now
        ]
        for address in doomed:
            del self._targets[address]
        self.leases_expired += len(doomed)
        return len(doomed)

    def remove_owned_by(self, owner: object) -> int:
        """Drop every dynamic target added by ``owner`` (e.g. a closed connection)."""
        doomed = [a for a, t in self._targets.items() if t.owner is owner and not t.static]
        for address in doomed:
            del self._targets[address]
        return len(doomed)

    def targets(self) -> list[UdpTarget]:
        """All current targets."""
        return list(self._targets.values())

    @property
    def has_targets(self) -> bool:
        """Whether any target is registered at all (the cheap check on the hot path)."""
        return bool(self._targets)

    def wants(self, model: str) -> bool:
        """Whether any target receives ``model`` (so encoding can be skipped)."""
        return any(t.wants(model) for t in self._targets.values())

    # -- sending ----------------------------------------------------------------
    def publish(
        self,
        model: str,
        protobuf_payload: Callable[[], bytes],
        json_payload: Callable[[], Mapping[str, Any]],
    ) -> None:
        """Send one result to the targets that want ``model``.

        The payload callables are called at most once each, and only when some
        target uses that encoding.
        """
        if not self._targets:
            return
        pb_bytes: bytes | None = None
        json_text: str | None = None
        now = self._clock.seconds()
        now_us = int(now * 1_000_000)
        self.expire(now)
        for target in list(self._targets.values()):
            if not target.wants(model):
                continue
            if target.encoding == "json":
                if json_text is None:
                    json_text = json.dumps(json_payload(), separators=(",", ":"))
                datagrams = self._json_datagrams(target, json_text, now_us)
            else:
                if pb_bytes is None:
                    pb_bytes = protobuf_payload()
                datagrams = self._protobuf_datagrams(target, pb_bytes, now_us)
            if len(datagrams) > 1:
                self.results_chunked += 1
            for datagram in datagrams:
                self._send(target, datagram)

    def _protobuf_datagrams(self, target: UdpTarget, payload: bytes, now_us: int) -> list[bytes]:
        size = target.max_datagram_bytes - _PB_OVERHEAD
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        out = []
        for index, chunk in enumerate(chunks):
            datagram = pb.Datagram(
                sequence=self._next_sequence(target),
                server_time_us=now_us,
                chunk_index=index,
                chunk_count=len(chunks),
                payload=chunk,
            )
            out.append(datagram.SerializeToString())
        return out

    def _json_datagrams(self, target: UdpTarget, text: str, now_us: int) -> list[bytes]:
        first = target.sequence + 1
        whole = _json_datagram(first, now_us, 0, 1, '"result":' + text)
        if len(whole) <= target.max_datagram_bytes:
            self._next_sequence(target)
            return [whole]
        parts = self._split_json(text, first, now_us, target.max_datagram_bytes)
        out = []
        for index, part in enumerate(parts):
            seq = self._next_sequence(target)
            out.append(_json_datagram(seq, now_us, index, len(parts), '"part":' + json.dumps(part)))
        return out

    def _split_json(self, text: str, first_seq: int, now_us: int, limit: int) -> list[str]:
        # Headers of the largest sequence/chunk numbers bound the room for each part.
        probe = _json_datagram(first_seq + len(text), now_us, len(text), len(text), '"part":""')
        room = limit - len(probe)
        parts: list[str] = []
        start = 0
        while start < len(text):
            end = min(len(text), start + room)
            while len(json.dumps(text[start:end])) - 2 > room:
                end -= max(1, (end - start) // 8)
            parts.append(text[start:end])
            start = end
        return parts

    def _next_sequence(self, target: UdpTarget) -> int:
        target.sequence += 1
        return target.sequence

    def _send(self, target: UdpTarget, datagram: bytes) -> None:
        transport = self.transport
        if transport is None:
            target.dropped += 1
            self.datagrams_dropped += 1
            return
        try:
            transport.write(datagram, (target.host, target.port))
        except OSError:
            # Socket buffer full (EAGAIN/ENOBUFS) or the route is gone: drop, never wait.
            target.dropped += 1
            self.datagrams_dropped += 1
            return
        target.sent += 1
        self.datagrams_sent += 1

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Ignored: this socket only sends, so nothing received is ever answered."""

    # -- character-stream snapshots (docs/streams.md) --------------------------------------
    snapshots_sent = 0
    snapshot_rows_dropped = 0

    def publish_snapshot(self, snapshot: TickSnapshot) -> None:
        """Send one server tick's outputs of a model to the targets that want it.

        Each datagram is a self-contained part (``chunk_index`` of ``chunk_count``,
        consecutive sequence numbers) holding as many whole characters as fit in the
        target's ``max_datagram_bytes``; each part is built once per encoding and
        datagram size, whatever the number of targets. A character whose row cannot
        fit in any datagram is dropped and counted (``snapshot_rows_dropped``).
        """
        if not self._targets or not len(snapshot.ids):
            return
        now = self._clock.seconds()
        now_us = int(now * 1_000_000)
        self.expire(now)
        rows_by_size: dict[int, int] = {}
        json_by_size: dict[int, list[str]] = {}
        packed: tuple[bytes, bytes, bytes] | None = None
        for target in list(self._targets.values()):
            if not target.wants(snapshot.model):
                continue
            size = target.max_datagram_bytes
            if target.encoding == "json":
                json_parts = json_by_size.get(size)
                if json_parts is None:
                    # Room for the longest header any target's datagrams can have.
                    longest = _json_snapshot_header(
                        max(t.sequence for t in self._targets.values()) + len(snapshot.ids),
                        now_us,
                        len(snapshot.ids),
                        len(snapshot.ids),
                    )
                    json_parts = json_by_size[size] = self._snapshot_json_parts(
                        snapshot, len(longest), size
                    )
                count = len(json_parts)
                datagrams = [
                    (
                        _json_snapshot_header(self._next_sequence(target), now_us, i, count) + part
                    ).encode()
                    for i, part in enumerate(json_parts)
                ]
            else:
                rows = rows_by_size.get(size)
                if rows is None:
                    rows = rows_by_size[size] = self._snapshot_rows(snapshot, size)
                if packed is None:
                    packed = _packed(snapshot)
                datagrams = (
                    fastudp.snapshot_datagrams(
                        packed[0],
                        snapshot.tick,
                        snapshot.tick_time_us,
                        snapshot.width,
                        packed[1],
                        packed[2],
                        rows,
                        target.sequence + 1,
                        now_us,
                    )
                    if rows
                    else []
                )
                target.sequence += len(datagrams)
                count = len(datagrams)
            if count > 1:
                self.results_chunked += 1
            self._send_all(target, datagrams)
            self.snapshots_sent += 1

    def _snapshot_rows(self, snapshot: TickSnapshot, limit: int) -> int:
        """Characters per protobuf part in datagrams of ``limit`` bytes (0: none fits)."""
        # Worst case around the rows: model, two uint64s, width, two length prefixes.
        head = 6 + len(snapshot.model.encode()) + 2 * 11 + 6 + 2 * 6
        rows = (limit - _PB_OVERHEAD - head) // (4 + 4 * snapshot.width)
        if rows < 1:
            self.snapshot_rows_dropped += len(snapshot.ids)
            return 0
        return int(rows)

    def _send_all(self, target: UdpTarget, datagrams: list[bytes]) -> None:
        """Send a target's datagrams: one sendmmsg per 64 with the C extension."""
        send = fastudp.send_datagrams
        fileno = getattr(self.transport, "fileno", None)
        if send is None or fileno is None or len(datagrams) < 2:
            for datagram in datagrams:
                self._send(target, datagram)
            return
        sent = send(fileno(), target.host, target.port, datagrams)
        target.sent += sent
        self.datagrams_sent += sent
        dropped = len(datagrams) - sent
        target.dropped += dropped
        self.datagrams_dropped += dropped

    def _snapshot_json_parts(
        self, snapshot: TickSnapshot, header_bytes: int, limit: int
    ) -> list[str]:
        """JSON ``snapshot`` objects (and the closing brace), each fitting one datagram."""
        prefix = (
            f'{{"model":{json.dumps(snapshot.model)},"tick":{snapshot.tick},'
            f'"tick_time_us":{snapshot.tick_time_us},"width":{snapshot.width},'
        )
        room = limit - header_bytes - len(prefix) - len('"ids":[],"outputs":[]}}')
        id_texts = [str(i) for i in snapshot.ids.tolist()]
        row_texts = _json_rows(snapshot.outputs)
        parts: list[str] = []
        start, used = 0, 0
        for i, (id_text, row_text) in enumerate(zip(id_texts, row_texts, strict=True)):
            cost = len(id_text) + len(row_text) + 2  # the two commas
            if cost > room:
                self.snapshot_rows_dropped += 1
                if start < i:
                    parts.append(_json_part(prefix, id_texts[start:i], row_texts[start:i]))
                start, used = i + 1, 0
                continue
            if used + cost > room:
                parts.append(_json_part(prefix, id_texts[start:i], row_texts[start:i]))
                start, used = i, 0
            used += cost
        if start < len(id_texts):
            parts.append(_json_part(prefix, id_texts[start:], row_texts[start:]))
        return parts


@dataclass(frozen=True)
class TickSnapshot:
    """One server tick's outputs of one model: what a snapshot carries."""

    model: str
    tick: int
    tick_time_us: int
    width: int
    ids: npt.NDArray[np.uint32]
    outputs: npt.NDArray[np.float32]


def _json_rows(outputs: npt.NDArray[np.float32]) -> list[str]:
    """Each row as a JSON array, every float32 as the shortest text that reads back exactly.

    numpy's float32-to-text conversion (its shortest round-trip algorithm) runs in C,
    but still costs about 1 µs per value: JSON snapshots of large scenes are costly.
    """
    texts = np.asarray(outputs, dtype=np.float32).astype(str)
    finite = np.isfinite(outputs)
    if not finite.all():
        texts[~finite] = "null"
    return ["[" + ",".join(row) + "]" for row in texts.tolist()]


def _json_snapshot_header(seq: int, now_us: int, index: int, count: int) -> str:
    """The start of a JSON snapshot datagram, up to its ``"snapshot":`` key."""
    return f'{{"seq":{seq},"ts_us":{now_us},"chunk":{index},"chunks":{count},"snapshot":'


def _json_part(prefix: str, ids: list[str], rows: list[str]) -> str:
    return prefix + '"ids":[' + ",".join(ids) + '],"outputs":[' + ",".join(rows) + "]}}"


def _json_datagram(seq: int, now_us: int, index: int, count: int, body: str) -> bytes:
    """One JSON datagram; ``body`` is the already-encoded last member ("result" or "part")."""
    head = f'{{"seq":{seq},"ts_us":{now_us},"chunk":{index},"chunks":{count},'
    return (head + body + "}").encode()
