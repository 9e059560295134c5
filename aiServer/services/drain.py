"""The graceful drain: on stop, answer everything accepted and close every connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from factory.packet_protocol import PacketProtocol

if TYPE_CHECKING:
    from aiServer.service import Daemon

log = Logger(namespace="aiServer.service")


class Drain(Service):
    """Nothing to start; its stop drains the client connections (the daemon's stop waits).

    It stops after the TCP listener and the hand-off channel (nothing new arrives)
    and before the HTTP and UDP ports close (replies to accepted requests still
    broadcast; /readyz says draining). Every frame a client sent before its
    connection is half-closed gets a reply: work accepted before the drain is
    answered, anything read after it is answered UNAVAILABLE (the dispatcher). A
    connection is half-closed (:meth:`PacketProtocol.finish_draining`) once nothing
    is in flight on it and it has been quiet for ``DRAIN_QUIET_S`` (or for at most
    ``DRAIN_LINGER_S`` after its last accepted request was answered, if it keeps
    sending); it closes when the client closes its side. All of it is bounded by
    server.drain_timeout_s, after which what is left is aborted.
    """

    DRAIN_POLL_S = 0.02
    DRAIN_QUIET_S = 0.05
    DRAIN_LINGER_S = 1.0

    def __init__(self, daemon: Daemon) -> None:
        self.setName("drain")
        self.daemon = daemon

    def stopService(self) -> Deferred[None]:
        super().stopService()
        daemon = self.daemon
        factory = daemon.factory
        clock = daemon.reactor
        started = clock.seconds()
        timeout = daemon.config.server.drain_timeout_s
        log.info(
            "draining: {pending} requests in flight on {connections} connections",
            pending=daemon.pending_requests(),
            connections=len(factory.connections),
        )
        settled: dict[PacketProtocol, float] = {}  # when each had nothing in flight
        done: Deferred[None] = Deferred()

        def step() -> None:
            now = clock.seconds()
            for protocol in list(factory.connections):
                if protocol.closing or protocol.handler.pending:
                    continue
                since = settled.setdefault(protocol, now)
                if (
                    now - protocol.last_activity >= self.DRAIN_QUIET_S
                    or now - since >= self.DRAIN_LINGER_S
                ):
                    protocol.finish_draining()
            if (factory.connections or daemon.pending_requests()) and now - started < timeout:
                clock.callLater(self.DRAIN_POLL_S, step)
                return
            self._end(now - started)
            done.callback(None)

        step()
        return done

    def _end(self, waited: float) -> None:
        factory = self.daemon.factory
        pending = self.daemon.pending_requests()
        left = list(factory.connections)
        if left or pending:
            log.warn(
                "drain_timeout_s={timeout} reached: {pending} requests unanswered, "
                "{connections} connections aborted",
                timeout=self.daemon.config.server.drain_timeout_s,
                pending=pending,
                connections=len(left),
            )
        else:
            log.info("drained in {waited:.3f}s", waited=waited)
        for protocol in left:
            factory.stats.aborted_draining += 1
            protocol.abort("drain_timeout_s reached")
