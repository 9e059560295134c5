"""Subscribe / Unsubscribe: add or drop a UDP target for results."""

from __future__ import annotations

from aiServer.commands.registry import CommandHandler, commands
from aiServer.session import Session
from commonlib.wire import pb
from netlib.udp_broadcast import Encoding
from util.errors import InvalidInput

_ENCODINGS: dict[int, Encoding] = {pb.ENCODING_PROTOBUF: "protobuf", pb.ENCODING_JSON: "json"}


@commands.register("subscribe")
class SubscribeHandler(CommandHandler):
    """Registers host:port to receive results (optionally of some models only).

    The host must be the connection's own address (empty = that address) unless
    aiServer.udp_policy allows more. The target is a lease of udp.lease_s seconds,
    renewed by subscribing again, owned by the connection that added it and ended
    with it.
    """

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Add the target and acknowledge with the resolved host."""
        request = envelope.subscribe
        encoding = _ENCODINGS.get(request.encoding)
        if encoding is None:
            raise InvalidInput(
                f"unknown UDP encoding {request.encoding}; use 0 (protobuf) or 1 (json)"
            )
        host = self.context.udp_policy.check(request.host, request.port, session)
        target = self.facade.subscribe(
            host,
            request.port,
            encoding,
            frozenset(request.models),
            owner=session.connection,
            max_datagram_bytes=request.max_datagram_bytes or None,
        )
        reply = pb.Envelope(request_id=envelope.request_id)
        reply.subscribe_ack.host = target.host
        reply.subscribe_ack.port = target.port
        reply.subscribe_ack.active = True
        reply.subscribe_ack.changed = True
        reply.subscribe_ack.max_datagram_bytes = target.max_datagram_bytes
        if target.expires_at is not None:
            reply.subscribe_ack.lease_s = target.expires_at - self.clock.seconds()
        session.send_envelope(reply)


@commands.register("unsubscribe")
class UnsubscribeHandler(CommandHandler):
    """Removes a UDP target this connection added (another's is left alone: changed=false)."""

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Drop the target and acknowledge."""
        request = envelope.unsubscribe
        host = self.context.udp_policy.resolve(request.host, session)
        changed = self.facade.unsubscribe(host, request.port, owner=session.connection)
        reply = pb.Envelope(request_id=envelope.request_id)
        reply.subscribe_ack.host = host
        reply.subscribe_ack.port = request.port
        reply.subscribe_ack.active = False
        reply.subscribe_ack.changed = changed
        session.send_envelope(reply)
