"""Bare reference servers: the floor the daemon's hot path is measured against.

Issue #2 states its targets next to two bare Twisted servers measured on the same
machine class; this script is those two servers, so that every benchmark run can
measure them side by side with the daemon (the machines drift by up to 35 %, so
only ratios within one run mean anything):

* ``echo``: an ``Int32StringReceiver`` that writes every frame straight back.
* ``decode``: the same protocol parsing each frame as an ``Envelope``, computing
  one moving average (with its trend, like the daemon's model) over the request's
  last ``window_size`` values in plain Python, and encoding an ``InferResponse``.
  No batching, no thread hand-off, no limits, no metrics.

    .venv/bin/python bench/reference_server.py --kind decode --port-file /tmp/p
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import Int32StringReceiver

from commonlib.wire import pb


class EchoProtocol(Int32StringReceiver):
    """Writes every frame back unchanged."""

    MAX_LENGTH = 1_048_576

    def stringReceived(self, string: bytes) -> None:
        self.sendString(string)


class DecodeProtocol(Int32StringReceiver):
    """Envelope in, one moving average (with trend), Envelope out."""

    MAX_LENGTH = 1_048_576

    def stringReceived(self, string: bytes) -> None:
        envelope = pb.Envelope.FromString(string)
        request = envelope.infer_request
        config = request.config
        window = config["window_size"].int_value if "window_size" in config else 5
        steps = config["forecast_steps"].int_value if "forecast_steps" in config else 5
        tail = list(request.input.values[-window:])
        level = sum(tail) / len(tail)
        centre = (len(tail) - 1) / 2.0
        denominator = sum((i - centre) ** 2 for i in range(len(tail))) or 1.0
        slope = sum((i - centre) * v for i, v in enumerate(tail)) / denominator
        reply = pb.Envelope(request_id=envelope.request_id)
        response = reply.infer_response
        response.model = request.model
        response.version = "1"
        response.predictions.extend(level + slope * (centre + k) for k in range(1, steps + 1))
        response.timings.batch_size = 1
        self.sendString(reply.SerializeToString())


def main() -> None:
    """Listen on 127.0.0.1 and write the port to --port-file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["echo", "decode"], required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    factory = ServerFactory()
    factory.protocol = EchoProtocol if args.kind == "echo" else DecodeProtocol
    port = reactor.listenTCP(args.port, factory, backlog=4096, interface="127.0.0.1")
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    args.port_file.write_text(json.dumps({"tcp": address.port}))
    reactor.run()


if __name__ == "__main__":
    main()
