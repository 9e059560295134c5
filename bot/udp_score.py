"""Scores UDP broadcast delivery: received, lost, reordered, duplicated, and delay."""

from __future__ import annotations

import json
import time
from typing import Any

from google.protobuf.message import DecodeError
from twisted.internet.protocol import DatagramProtocol

from bot.stats import new_histogram, summary_ms
from commonlib.wire import pb


class UdpScorer(DatagramProtocol):
    """Listens like a game engine and scores what arrives by its sequence numbers."""

    def __init__(self) -> None:
        self.received = 0
        self.duplicates = 0
        self.reordered = 0
        self.undecodable = 0
        self.highest = 0
        self.seen: set[int] = set()
        self.delay = new_histogram()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Score one datagram."""
        try:
            if datagram[:1] == b"{":
                message = json.loads(datagram)
                seq, ts_us = int(message["seq"]), int(message["ts_us"])
            else:
                parsed = pb.Datagram.FromString(datagram)
                seq, ts_us = parsed.sequence, parsed.server_time_us
        except (ValueError, KeyError, DecodeError):
            self.undecodable += 1
            return
        self.received += 1
        if seq in self.seen:
            self.duplicates += 1
            return
        if seq < self.highest:
            self.reordered += 1
        self.seen.add(seq)
        self.highest = max(self.highest, seq)
        delay_us = time.time() * 1e6 - ts_us
        self.delay.record_value(max(1, int(delay_us)))

    def report(self) -> dict[str, Any]:
        """Counts and delay percentiles; lost = sequence numbers never seen up to the highest."""
        return {
            "received": self.received,
            "lost": self.highest - len(self.seen),
            "reordered": self.reordered,
            "duplicates": self.duplicates,
            "undecodable": self.undecodable,
            "delay": summary_ms(self.delay),
        }
