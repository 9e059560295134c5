"""The hand-off channel of a worker process: connections its supervisor accepted."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from aiServer.services.ordered import GatedService, Milestone
from aiServer.services.readiness import Readiness
from factory.packet_protocol import HandedOffFactory
from netlib.handoff import HandoffReceiver

if TYPE_CHECKING:
    from aiServer.service import Daemon

log = Logger(namespace="aiServer.service")


class HandoffChannel(GatedService):
    """Once the worker is ready, serves the connections the supervisor hands over.

    It tells the supervisor it is ready (with its own ports, see aiServer/supervisor.py)
    and adopts each connection passed on ``channel`` into the clients' factory (through
    TLS when configured). Its stop takes no more; if the supervisor goes away first,
    the worker drains and exits.
    """

    def __init__(
        self, daemon: Daemon, channel: socket.socket, after: Milestone, readiness: Readiness
    ) -> None:
        super().__init__("handoff", after)
        self.daemon = daemon
        self.readiness = readiness
        self.receiver = HandoffReceiver(daemon.reactor, channel, self._adopt, self._supervisor_gone)
        handed_off = HandedOffFactory(daemon.factory, self.receiver.connection_closed)
        self._factory: Any = (
            TLSMemoryBIOFactory(daemon.tls_options, False, handed_off)
            if daemon.tls_options is not None
            else handed_off
        )

    def begin(self) -> None:
        self.receiver.start()
        self.receiver.announce_ready(self.readiness.ports)

    def _adopt(self, fd: int, family: int) -> None:
        self.daemon.reactor.adoptStreamConnection(fd, family, self._factory)

    def _supervisor_gone(self) -> None:
        if self.daemon.state.draining:
            return  # already stopping
        log.warn("the supervisor has gone: draining and exiting")
        self.daemon.reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        self.receiver.stop()
