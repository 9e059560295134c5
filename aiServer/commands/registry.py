"""Command pattern: one handler class per client→server packet type.

A handler joins the registry with ``@commands.register("infer_request")``, named
by the Envelope ``body`` oneof case it handles. Only registered (client→server)
cases are dispatched: a server→client packet sent by a client, an unset body or
an unknown case is answered UNKNOWN_COMMAND and the connection stays open.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime

from aiServer.auth import TokenAuth
from aiServer.facade import AIFacade
from aiServer.session import Session
from aiServer.udp_policy import TargetPolicy
from commonlib.wire import pb

H = TypeVar("H", bound=type["CommandHandler"])
_BODY_FIELDS = frozenset(f.name for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields)


def _no_connections() -> int:
    return 0


@dataclass
class ServerState:
    """Process-wide facts handlers report (start time, readiness, open connections).

    ``open_connections`` reads the transport's one record of open connections
    (factory.packet_protocol.PacketFactory.connections), wired by the service.
    """

    started_at: float
    draining: bool = False
    ready: bool = False  # every model warm
    open_connections: Callable[[], int] = _no_connections


@dataclass
class CommandContext:
    """What every handler gets: the facade, the clock and the server state."""

    facade: AIFacade
    clock: IReactorTime
    state: ServerState
    max_inflight_per_connection: int = 32
    auth: TokenAuth | None = None
    log_requests: bool = False
    access_log: bool = False  # log_requests at info level, not debug
    udp_policy: TargetPolicy = field(default_factory=TargetPolicy)
    admin_enabled: bool = True  # admin.enabled: the ModelAdmin command


class CommandHandler(ABC):
    """Handles one packet type. Raise ServiceError to answer the client with an Error."""

    body: str = ""

    def __init__(self, context: CommandContext) -> None:
        self.context = context
        self.facade = context.facade
        self.clock = context.clock

    @abstractmethod
    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Handle one packet from ``connection``; reply through it."""


class CommandRegistry:
    """Maps Envelope body names to handler classes."""

    def __init__(self) -> None:
        self._classes: dict[str, type[CommandHandler]] = {}

    def register(self, body: str) -> Callable[[H], H]:
        """Class decorator registering a handler for the ``body`` oneof case."""
        if body not in _BODY_FIELDS:
            raise ValueError(f"'{body}' is not an Envelope body field")

        def decorate(cls: H) -> H:
            if body in self._classes:
                raise ValueError(f"a handler for '{body}' is already registered")
            cls.body = body
            self._classes[body] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        """The accepted client→server body names."""
        return sorted(self._classes)

    def build(self, context: CommandContext) -> dict[str, CommandHandler]:
        """One handler instance per registered packet type."""
        return {body: cls(context) for body, cls in self._classes.items()}


commands = CommandRegistry()
"""The registry the bundled handlers join (see aiServer.commands.handlers)."""
