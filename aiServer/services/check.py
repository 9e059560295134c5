"""The start-up self-check, run on a private loopback port before the TCP port opens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from aiServer.self_check import SelfCheckFailed, self_check, self_check_requests
from aiServer.services.ordered import GatedService, Milestone
from aiServer.services.ports import close, connectable_host
from aiServer.startup import StartupError, listening

if TYPE_CHECKING:
    from aiServer.service import Daemon


class SelfCheck(GatedService):
    """Once the models are warm, sends one request per model through the real data path.

    It listens with the clients' factory on a private ephemeral port of
    ``connectable_host(server.host)``, checks every reply (aiServer/self_check.py)
    and closes that port, so the server.tcp_port listener opens only after it passed.
    Skipped with TLS or token authentication (the check speaks neither). A failure is
    a StartupError naming server.host.
    """

    def __init__(self, daemon: Daemon, after: Milestone) -> None:
        super().__init__("self-check", after)
        self.daemon = daemon
        self.port: IListeningPort | None = None

    def begin(self) -> Deferred[None] | None:
        daemon = self.daemon
        if daemon.tls_options is not None or daemon.factory.limits.auth_required:
            return None
        reactor: Any = daemon.reactor
        host = connectable_host(daemon.config.server.host)
        self.port = listening(
            "server.host", lambda: reactor.listenTCP(0, daemon.factory, interface=host)
        )
        port: Any = self.port.getHost()
        check = self_check(
            reactor, host, port.port, self_check_requests(daemon.facade.warmup_requests())
        )
        return check.addErrback(self._failed, f"{host}:{port.port}").addBoth(self._close)

    @staticmethod
    def _failed(failure: Failure, where: str) -> Failure:
        if failure.check(SelfCheckFailed):
            message = f"the start-up self-check through {where} failed: {failure.getErrorMessage()}"
            return Failure(StartupError("server.host", message))
        return failure

    def _close(self, result: object) -> object:
        port, self.port = self.port, None
        close(port)  # not waited for: the TCP listener opens at once
        return result

    def stopService(self) -> None:
        super().stopService()
        self._close(None)
