"""Subscribe / Unsubscribe: add or drop a UDP target for results."""

from __future__ import annotations

from aiServer.commands.registry import CommandHandler, commands
from commonlib.wire import pb
from factory.packet_protocol import PacketConnection
from netlib.udp_broadcast import Encoding
from util.errors import InvalidInput

_ENCODINGS: dict[int, Encoding] = {pb.ENCODING_PROTOBUF: "protobuf", pb.ENCODING_JSON: "json"}


@commands.register("subscribe")
class SubscribeHandler(CommandHandler):
    """Registers host:port to receive results (optionally of some models only).

    The target is a lease of udp.lease_s seconds, renewed by subscribing again, and
    ends with the connection that added it.
    """

    def handle(self, envelope: pb.Envelope, connection: PacketConnection) -> None:
        """Add the target and acknowledge."""
        request = envelope.subscribe
        encoding = _ENCODINGS.get(request.encoding)
        if encoding is None:
            raise InvalidInput(
                f"unknown UDP encoding {request.encoding}; use 0 (protobuf) or 1 (json)"
            )
        target = self.facade.subscribe(
            request.host, request.port, encoding, frozenset(request.models), owner=connection
        )
        reply = pb.Envelope(request_id=envelope.request_id)
        reply.subscribe_ack.host = target.host
        reply.subscribe_ack.port = target.port
        reply.subscribe_ack.active = True
        reply.subscribe_ack.changed = True
        if target.expires_at is not None:
            reply.subscribe_ack.lease_s = target.expires_at - self.clock.seconds()
        connection.send_envelope(reply)


@commands.register("unsubscribe")
class UnsubscribeHandler(CommandHandler):
    """Removes a UDP target added by Subscribe."""

    def handle(self, envelope: pb.Envelope, connection: PacketConnection) -> None:
        """Drop the target and acknowledge."""
        request = envelope.unsubscribe
        changed = self.facade.unsubscribe(request.host, request.port)
        reply = pb.Envelope(request_id=envelope.request_id)
        reply.subscribe_ack.host = request.host
        reply.subscribe_ack.port = request.port
        reply.subscribe_ack.active = False
        reply.subscribe_ack.changed = changed
        connection.send_envelope(reply)
