"""The daemon's listening ports, one service each: UDP sender, HTTP, and the client TCP port.

Each binds in its start (a port it cannot bind is a StartupError naming its config
key) and closes in its stop; the TCP listener binds only once the self-check before
it has passed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort

from aiServer.ops_http import make_admin_routes, make_routes
from aiServer.services.ordered import GatedService, Milestone
from aiServer.startup import listening
from netlib.http_server import make_site

if TYPE_CHECKING:
    from aiServer.service import Daemon


def connectable_host(bind_host: str) -> str:
    """Where this host reaches a listener bound to ``bind_host`` (any-address → loopback)."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "") else bind_host


def close(port: IListeningPort | None) -> Deferred[None] | None:
    """Stop listening on ``port`` (if bound); fires once it is closed."""
    if port is None:
        return None
    stop: Any = port.stopListening  # a Deferred from a real port, None from some fakes
    closed: Deferred[None] = maybeDeferred(stop)
    return closed


class UdpSender(Service):
    """Binds udp.bind_port for the broadcaster (results and snapshots go out from it)."""

    def __init__(self, daemon: Daemon) -> None:
        self.setName("udp")
        self.daemon = daemon
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        broadcaster, udp = self.daemon.broadcaster, self.daemon.config.udp
        if broadcaster is None:
            return
        self.port = listening(
            "udp.bind_port",
            lambda: self.daemon.reactor.listenUDP(
                udp.bind_port, broadcaster, interface=udp.bind_host
            ),
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return close(self.port)


class OpsHttp(Service):
    """Binds http.port: /healthz, /readyz, /metrics, /models, /status and the admin routes."""

    def __init__(self, daemon: Daemon) -> None:
        self.setName("http")
        self.daemon = daemon
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        daemon = self.daemon
        http, admin = daemon.config.http, daemon.config.admin
        if not http.enabled:
            return
        routes = make_routes(
            daemon.facade, daemon.metrics_registry(), daemon.not_ready_reason, daemon.status
        )
        site = make_site(
            routes,
            access_log=daemon.config.logging.access_log,
            post_routes=make_admin_routes(
                daemon.facade.versions, admin.enabled, admin.http_allowed_cidrs
            ),
        )
        self.port = listening(
            "http.port", lambda: daemon.reactor.listenTCP(http.port, site, interface=http.host)
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return close(self.port)


class TcpListener(GatedService):
    """Listens on server.tcp_port (TLS when configured) once ``after`` is reached.

    Until then no client can connect; when ``after`` fails it never listens. Its
    stop closes the port (first step of the drain: accept nothing more).
    """

    def __init__(self, daemon: Daemon, after: Milestone) -> None:
        super().__init__("tcp", after)
        self.daemon = daemon
        self.port: IListeningPort | None = None

    def begin(self) -> None:
        daemon = self.daemon
        server = daemon.config.server
        reactor: Any = daemon.reactor
        tls_options = daemon.tls_options
        if tls_options is not None:
            self.port = listening(
                "server.tcp_port",
                lambda: reactor.listenSSL(
                    server.tcp_port,
                    daemon.factory,
                    tls_options,
                    backlog=server.listen_backlog,
                    interface=server.host,
                ),
            )
        else:
            self.port = listening(
                "server.tcp_port",
                lambda: reactor.listenTCP(
                    server.tcp_port,
                    daemon.factory,
                    backlog=server.listen_backlog,
                    interface=server.host,
                ),
            )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return close(self.port)
