"""Readiness: once every listener is up the daemon is ready; on stop, draining at once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from aiServer.services.ordered import GatedService, Milestone
from aiServer.services.ports import OpsHttp, TcpListener, UdpSender
from util.config import resolve_path

if TYPE_CHECKING:
    from aiServer.service import Daemon

log = Logger(namespace="aiServer.service")


def write_port_file(path: Path, ports: dict[str, Any]) -> None:
    """Write the bound ports as JSON, atomically (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ports), encoding="utf-8")
    tmp.replace(path)


def bound_address(listener: TcpListener | UdpSender | OpsHttp) -> Any:
    """The address ``listener`` is bound to (host, port), or None when it is not."""
    return listener.port.getHost() if listener.port is not None else None


class Readiness(GatedService):
    """Once ``after`` (the TCP listener) is reached, makes the daemon ready and says so.

    In that order: the static UDP targets of udp.targets start receiving results
    (warm-up and self-check results never reach them), /readyz and the ``ready``
    metric turn ready, the ready line is logged and server.port_file written. Its
    stop, the first step of the daemon's, turns /readyz to "draining" at once.
    """

    def __init__(
        self,
        daemon: Daemon,
        after: Milestone,
        tcp: TcpListener,
        udp: UdpSender,
        http: OpsHttp,
    ) -> None:
        super().__init__("readiness", after)
        self.daemon = daemon
        self.listeners = (tcp, udp, http)
        self.started_at = 0.0
        self.ports: dict[str, Any] = {}
        """What the port file says: tcp, udp and http ports (None when off) and pid."""

    def startService(self) -> None:
        self.started_at = self.daemon.reactor.seconds()
        super().startService()

    def begin(self) -> None:
        daemon = self.daemon
        config = daemon.config
        if daemon.broadcaster is not None:
            for target in config.udp.targets:
                daemon.broadcaster.add_target(
                    target.host, target.port, target.encoding, frozenset(target.models), static=True
                )
        daemon.state.ready = True
        tcp, udp, http = (bound_address(listener) for listener in self.listeners)
        assert tcp is not None
        log.info(
            "InferenceServer ready in {seconds:.2f}s: tcp {host}:{port}, udp sender {udp}, "
            "http {http}, models {models} on {device}",
            seconds=daemon.reactor.seconds() - self.started_at,
            host=tcp.host,
            port=tcp.port,
            udp=f"{udp.host}:{udp.port}" if udp is not None else "disabled",
            http=f"{http.host}:{http.port}" if http is not None else "disabled",
            models=", ".join(daemon.facade.model_names()),
            device=daemon.facade.device,
        )
        self.ports = {
            "tcp": tcp.port,
            "udp": udp.port if udp is not None else None,
            "http": http.port if http is not None else None,
            "pid": os.getpid(),
        }
        if config.server.port_file:
            write_port_file(resolve_path(config.server.port_file), self.ports)

    def stopService(self) -> None:
        super().stopService()
        self.daemon.state.draining = True
