"""Command handlers, one class per client→server packet type.

Importing this package registers every bundled handler with ``commands``.
"""

from aiServer.commands import (
    admin,
    hello,
    infer,
    list_models,
    ping,
    status,
    streams,
    subscribe,
)
from aiServer.commands.registry import (
    CommandContext,
    CommandHandler,
    CommandRegistry,
    ServerState,
    commands,
)

__all__ = [
    "CommandContext",
    "CommandHandler",
    "CommandRegistry",
    "ServerState",
    "admin",
    "commands",
    "hello",
    "infer",
    "list_models",
    "ping",
    "status",
    "streams",
    "subscribe",
]
