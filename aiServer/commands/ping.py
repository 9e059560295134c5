"""Ping → Pong: liveness and round-trip time."""

from __future__ import annotations

from aiServer.commands.registry import CommandHandler, commands
from aiServer.session import Session
from commonlib.wire import pb


@commands.register("ping")
class PingHandler(CommandHandler):
    """Echoes the client's timestamp with the server's."""

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Reply Pong at once."""
        reply = pb.Envelope(request_id=envelope.request_id)
        reply.pong.client_time_ns = envelope.ping.client_time_ns
        reply.pong.server_time_ns = int(self.clock.seconds() * 1e9)
        session.send_envelope(reply)
