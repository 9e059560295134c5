"""The packet dispatcher: Envelope body → command handler, errors → Error packets.

Transport-agnostic: TCP protocols (and any later door) call ``packet_received``
with the connection to answer through.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from twisted.logger import Logger

from aiServer.commands.registry import CommandContext, CommandHandler
from commonlib.wire import pb
from factory.packet_protocol import PacketConnection
from util.errors import ErrorCode, ServiceError, new_error_id

log = Logger()
# StreamClose only frees state, so it is allowed too; StreamOpen and Tick are new work.
_ALLOWED_WHILE_DRAINING = frozenset({"ping", "get_status", "hello", "unsubscribe", "stream_close"})


class Dispatcher:
    """Routes each packet to the handler registered for its body type."""

    def __init__(self, handlers: Mapping[str, CommandHandler], context: CommandContext) -> None:
        self._handlers = dict(handlers)
        self._context = context
        self._state = context.state
        self._accepted = ", ".join(sorted(handlers))
        self._auth = context.auth if context.auth is not None and context.auth.required else None
        self.commands: Counter[str] = Counter()

    @property
    def handlers(self) -> Mapping[str, CommandHandler]:
        """The handler instance for each accepted body name."""
        return self._handlers

    def connection_made(self, connection: PacketConnection) -> None:
        """A client connected (the transport keeps the record of open connections)."""

    def connection_lost(self, connection: PacketConnection) -> None:
        """Forget the UDP targets the connection subscribed and its streams."""
        self._context.facade.drop_subscriptions(connection)
        self._context.facade.drop_streams(connection)

    def packet_received(self, envelope: pb.Envelope, connection: PacketConnection) -> None:
        """Dispatch one packet; every failure is answered on the same connection."""
        body = envelope.WhichOneof("body")
        self.commands[body or "unset"] += 1
        if not connection.authenticated and body != "hello":
            self._refuse_unauthenticated(envelope.request_id, connection)
            return
        if self._state.draining and body not in _ALLOWED_WHILE_DRAINING:
            connection.send_error(
                envelope.request_id,
                ErrorCode.UNAVAILABLE,
                "server is draining (shutting down); send new work to another server",
            )
            return
        handler = self._handlers.get(body) if body is not None else None
        if handler is None:
            what = "no body set" if body is None else f"'{body}' is not a client command"
            connection.send_error(
                envelope.request_id,
                ErrorCode.UNKNOWN_COMMAND,
                f"{what}; accepted: {self._accepted}",
            )
            return
        try:
            handler.handle(envelope, connection)
        except ServiceError as exc:
            connection.send_error(envelope.request_id, exc.code, exc.message, exc.character_ids)
            if exc.code == ErrorCode.UNAUTHENTICATED:
                self._close_after_too_many_failures(connection)
        except Exception:
            error_id = new_error_id()
            log.failure(
                "handler {handler} failed (error id {error_id})",
                handler=type(handler).__name__,
                error_id=error_id,
            )
            connection.send_error(
                envelope.request_id,
                ErrorCode.INTERNAL,
                f"internal error (error id {error_id}; the server log has the details)",
            )

    def _refuse_unauthenticated(self, request_id: int, connection: PacketConnection) -> None:
        connection.auth_failures += 1
        connection.send_error(
            request_id, ErrorCode.UNAUTHENTICATED, "authenticate first: send a Hello with a token"
        )
        self._close_after_too_many_failures(connection)

    def _close_after_too_many_failures(self, connection: PacketConnection) -> None:
        limit = self._auth.max_failures if self._auth is not None else 1
        if connection.auth_failures >= limit:
            connection.close()
