"""Hello → HelloAck: authenticate a connection with a token."""

from __future__ import annotations

from twisted.logger import Logger

from aiServer.commands.registry import CommandHandler, commands
from aiServer.session import Session
from commonlib.wire import pb
from util.errors import ErrorCode, ServiceError

log = Logger()


@commands.register("hello")
class HelloHandler(CommandHandler):
    """Checks the token; after auth.max_failures failures the connection is closed."""

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Authenticate, or count a failure."""
        auth = self.context.auth
        reply = pb.Envelope(request_id=envelope.request_id)
        if auth is None or not auth.required:
            reply.hello_ack.authentication_required = False
            session.send_envelope(reply)
            return
        if session.authenticated:
            reply.hello_ack.authentication_required = True
            session.send_envelope(reply)
            return
        if auth.check(envelope.hello.token):
            session.authenticate()
            log.info(
                "connection {id} authenticated as {client!r}",
                id=session.connection_id,
                client=envelope.hello.client_name[:100],
            )
            reply.hello_ack.authentication_required = True
            session.send_envelope(reply)
            return
        session.auth_failures += 1
        raise ServiceError(ErrorCode.UNAUTHENTICATED, "invalid token")
