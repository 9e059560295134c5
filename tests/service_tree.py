"""The daemon's service tree in memory: a reactor that records ports, and a start driver.

``PortsReactor`` is Twisted's MemoryReactorClock plus UDP, with ports that remember
whether they still listen and log each listen and stop in order; ``start_in_memory``
starts a tree built by ``aiServer.service.daemon_service`` on it, running the
warm-up batches on a ManualRunner and the self-check over an in-memory connection
(``twisted.test.iosim``) to the real PacketFactory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import ConnectionCompleter, IOPump
from zope.interface import implementer

from aiServer.service import DaemonService
from tests.support import ManualRunner


@implementer(IListeningPort)
class RecordingPort:
    """A listening port that records its stop in the reactor's ``log``."""

    def __init__(self, log: list[str], name: str, address: IPv4Address) -> None:
        self.log = log
        self.name = name
        self.address = address
        self.listening = True
        log.append(f"listen {name}")

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.listening = False
        self.log.append(f"stop {self.name}")

    def getHost(self) -> IPv4Address:
        return self.address


class PortsReactor(MemoryReactorClock):
    """MemoryReactorClock with listenUDP; every port it returns is a RecordingPort.

    Ports are named ``tcp:PORT``, ``ssl:PORT`` and ``udp:PORT`` (as asked, so 0 for
    an ephemeral one) in ``log`` and ``ports``; a name in ``in_use`` cannot be bound
    (CannotListenError, address in use).
    """

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []
        self.ports: dict[str, RecordingPort] = {}
        self.udpServers: list[tuple[int, Any, str]] = []
        self.in_use: set[str] = set()

    def _port(self, kind: str, port: int, interface: str) -> RecordingPort:
        name = f"{kind}:{port}"
        if name in self.in_use:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        address = IPv4Address("UDP" if kind == "udp" else "TCP", interface or "0.0.0.0", port)
        self.ports[name] = RecordingPort(self.log, name, address)
        return self.ports[name]

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        bound = self._port("tcp", port, interface)
        super().listenTCP(port, factory, backlog, interface)
        return bound

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        bound = self._port("ssl", port, interface)
        super().listenSSL(port, factory, contextFactory, backlog, interface)
        return bound

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> Any:
        bound = self._port("udp", port, interface)
        self.udpServers.append((port, protocol, interface))
        return bound

    def listening(self) -> list[str]:
        """Names of the ports listening now, in the order they were bound."""
        return [name for name, port in self.ports.items() if port.listening]


def drive(reactor: PortsReactor, runner: ManualRunner) -> None:
    """Run what is pending: batches, timers, and connections to the in-memory listeners.

    Each connection the daemon opens to itself (the self-check) is completed against
    the listener on its port and pumped until quiet.
    """
    pumps: list[IOPump] = []
    for _ in range(200):
        reactor.advance(0)
        busy = runner.run_pending() > 0
        pump = ConnectionCompleter(reactor).succeedOnce()
        if pump is not None:
            pumps.append(pump)
            busy = True
        for pump in pumps:
            busy = pump.pump() or busy
        if not busy:
            return


def start_in_memory(service: DaemonService, reactor: PortsReactor, runner: ManualRunner) -> None:
    """Start ``service`` and drive its start-up (warm-up, self-check) to its end."""
    service.startService()
    drive(reactor, runner)
