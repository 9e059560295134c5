"""The packet dispatcher: Envelope body → command handler, errors → Error packets.

Transport-agnostic: a transport (and any later door) opens a
:class:`aiServer.session.Session` per connection with :meth:`Dispatcher.open_session`;
the session's admitted packets come back to :meth:`Dispatcher.dispatch`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TypeVar

from twisted.logger import Logger

from aiServer.commands.infer import InferHandler
from aiServer.commands.registry import CommandContext, CommandHandler
from aiServer.session import AdmissionGate, Session
from commonlib.wire import pb
from factory.codec import decode_envelope
from factory.fastcodec import ParsedInfer
from factory.packet_protocol import PacketConnection
from util.errors import ErrorCode, ServiceError, new_error_id

log = Logger()
_P = TypeVar("_P")
# StreamClose only frees state, so it is allowed too; StreamOpen and Tick are new work.
_ALLOWED_WHILE_DRAINING = frozenset({"ping", "get_status", "hello", "unsubscribe", "stream_close"})


class Dispatcher:
    """Opens a session per connection and routes each packet to its body type's handler.

    ``sessions`` is the record of open sessions (the drain and metrics count the
    requests in flight on them).
    """

    def __init__(self, handlers: Mapping[str, CommandHandler], context: CommandContext) -> None:
        self._handlers = dict(handlers)
        self._context = context
        self._state = context.state
        self._accepted = ", ".join(sorted(handlers))
        self._auth = context.auth if context.auth is not None and context.auth.required else None
        self._commands: Counter[str] = Counter()
        self._infers = 0  # InferRequests read by the C fast path (counted apart: cheaper)
        self.gate = AdmissionGate(
            context.max_inflight_per_connection, context.facade.admission.refusing
        )
        self.sessions: set[Session] = set()
        infer = self._handlers.get("infer_request")
        self._infer = infer if isinstance(infer, InferHandler) else None

    @property
    def commands(self) -> Counter[str]:
        """Packets dispatched so far, by body name ("unset" for none)."""
        counts = Counter(self._commands)
        if self._infers:
            counts["infer_request"] += self._infers
        return counts

    @property
    def handlers(self) -> Mapping[str, CommandHandler]:
        """The handler instance for each accepted body name."""
        return self._handlers

    def open_session(self, connection: PacketConnection) -> Session:
        """A client connected: its session (the transport's PacketHandler)."""
        session = Session(
            connection,
            self.gate,
            self.dispatch,
            self.dispatch_infer,
            self._auth is None,
            self._session_lost,
        )
        self.sessions.add(session)
        return session

    def _session_lost(self, session: Session) -> None:
        """Forget the UDP targets the connection subscribed and its streams."""
        self.sessions.discard(session)
        self._context.facade.drop_subscriptions(session.connection)
        self._context.facade.drop_streams(session.connection)

    def inflight(self) -> int:
        """Requests accepted on open sessions and not answered yet."""
        return sum(len(s.inflight) for s in self.sessions)

    def dispatch(self, envelope: pb.Envelope, session: Session) -> None:
        """Dispatch one packet; every failure is answered on the same connection."""
        body = envelope.WhichOneof("body")
        request_id = envelope.request_id
        self._commands[body or "unset"] += 1
        if self._turned_away(body, request_id, session):
            return
        handler = self._handlers.get(body) if body is not None else None
        if handler is None:
            what = "no body set" if body is None else f"'{body}' is not a client command"
            session.send_error(
                request_id, ErrorCode.UNKNOWN_COMMAND, f"{what}; accepted: {self._accepted}"
            )
            return
        self._run(handler, handler.handle, envelope, request_id, session)

    def dispatch_infer(self, request: ParsedInfer, payload: bytes, session: Session) -> None:
        """Dispatch an InferRequest read by the C fast path, as :meth:`dispatch` would."""
        handler = self._infer
        if handler is None:  # no bundled InferHandler: the generic path
            self.dispatch(decode_envelope(payload), session)
            return
        self._infers += 1
        if (not session.authenticated or self._state.draining) and self._turned_away(
            "infer_request", request[0], session
        ):
            return
        try:
            handler.handle_parsed((request, payload), session)
        except Exception as exc:  # the usual request raises nothing
            self._answer_failure(handler, exc, request[0], session)

    def _turned_away(self, body: str | None, request_id: int, session: Session) -> bool:
        """Answer and return True when the connection may not send ``body`` now."""
        if not session.authenticated and body != "hello":
            self._refuse_unauthenticated(request_id, session)
            return True
        if self._state.draining and body not in _ALLOWED_WHILE_DRAINING:
            session.send_error(
                request_id,
                ErrorCode.UNAVAILABLE,
                "server is draining (shutting down); send new work to another server",
            )
            return True
        return False

    def _run(
        self,
        handler: CommandHandler,
        handle: Callable[[_P, Session], None],
        packet: _P,
        request_id: int,
        session: Session,
    ) -> None:
        """Call ``handle(packet, session)``; answer its failure (ServiceError or a bug)."""
        try:
            handle(packet, session)
        except Exception as exc:
            self._answer_failure(handler, exc, request_id, session)

    def _answer_failure(
        self, handler: CommandHandler, exc: Exception, request_id: int, session: Session
    ) -> None:
        """Answer what a handler raised (called in its ``except`` block, for the log)."""
        if isinstance(exc, ServiceError):
            session.send_error(request_id, exc.code, exc.message, exc.character_ids)
            if exc.code == ErrorCode.UNAUTHENTICATED:
                self._close_after_too_many_failures(session)
            return
        error_id = new_error_id()
        log.failure(
            "handler {handler} failed (error id {error_id})",
            handler=type(handler).__name__,
            error_id=error_id,
        )
        session.send_error(
            request_id,
            ErrorCode.INTERNAL,
            f"internal error (error id {error_id}; the server log has the details)",
        )

    def _refuse_unauthenticated(self, request_id: int, session: Session) -> None:
        session.auth_failures += 1
        session.send_error(
            request_id, ErrorCode.UNAUTHENTICATED, "authenticate first: send a Hello with a token"
        )
        self._close_after_too_many_failures(session)

    def _close_after_too_many_failures(self, session: Session) -> None:
        limit = self._auth.max_failures if self._auth is not None else 1
        if session.auth_failures >= limit:
            session.close()
