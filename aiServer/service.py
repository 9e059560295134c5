"""Daemon wiring: ``make_service(config, reactor)`` builds everything, binds nothing.

``build_daemon`` assembles the application (facade, dispatcher, protocol factory,
broadcaster); ``daemon_service`` composes its lifecycle from the small services of
``aiServer/services/`` as children of one :class:`DaemonService`, started in order
and stopped in reverse, each stop waiting for the one before: the TCP port opens
only after every model has loaded and run its warm-up batches and the self-check
has passed (so the first client request is served as fast as steady state), and on
stop the drain finishes before the HTTP and UDP ports close.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, succeed
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure

import aiServer.commands  # noqa: F401 - registers the bundled command handlers
import commonlib.models  # noqa: F401 - registers the bundled models
from aiServer.auth import TokenAuth
from aiServer.commands.registry import CommandContext, ServerState, commands
from aiServer.commands.status import build_status
from aiServer.dispatcher import Dispatcher
from aiServer.facade import AIFacade
from aiServer.metrics import MetricSources, make_registry
from aiServer.model_versions import AdminResult
from aiServer.services.check import SelfCheck
from aiServer.services.drain import Drain
from aiServer.services.handoff import HandoffChannel
from aiServer.services.ordered import Milestone, OrderedServices
from aiServer.services.pool import WorkerPool
from aiServer.services.ports import OpsHttp, TcpListener, UdpSender, connectable_host
from aiServer.services.readiness import Readiness, write_port_file
from aiServer.services.warm_up import WarmUp
from aiServer.startup import StartupError, describe_failure, startup_cause
from aiServer.tls import server_tls_options
from aiServer.udp_policy import TargetPolicy
from commonlib.batcher import BatchRunner
from commonlib.device import resolve_device
from commonlib.models.registry import ModelFactory, model_factory
from commonlib.result_cache import ResultCache
from commonlib.runner import ThreadPoolRunner
from commonlib.streams import StreamLimits
from factory import fastcodec
from factory.packet_protocol import ConnectionLimits, PacketFactory
from netlib import fastudp
from netlib.udp_broadcast import UdpBroadcaster
from util.config import Config
from util.errors import ServiceError
from util.native import PURE_PYTHON_ENV

__all__ = [
    "Daemon",
    "DaemonService",
    "build_daemon",
    "connectable_host",  # aiServer/supervisor.py uses these two as well
    "daemon_service",
    "make_service",
    "protobuf_backend",
    "result_cache",
    "write_port_file",
]

log = Logger()


@dataclass
class Daemon:
    """The assembled application, before any port is bound."""

    config: Config
    reactor: Any
    facade: AIFacade
    dispatcher: Dispatcher
    factory: PacketFactory
    broadcaster: UdpBroadcaster | None
    runner: BatchRunner
    state: ServerState
    tls_options: CertificateOptions | None = None

    def not_ready_reason(self) -> str | None:
        """Why /readyz is 503, or None when the server takes traffic."""
        if self.state.draining:
            return "draining: shutting down, finishing accepted requests"
        if not self.state.ready:
            return "warming up: loading models and running a warm-up batch"
        return None

    def status(self) -> dict[str, Any]:
        """The Status message (as for the TCP GetStatus command) as JSON-able data."""
        status = build_status(self.facade, self.state, self.reactor.seconds())
        return MessageToDict(status, always_print_fields_with_no_presence=True)

    def metrics_registry(self) -> CollectorRegistry:
        """A Prometheus registry reading this daemon's counters at scrape time."""
        return make_registry(
            MetricSources(
                facade=self.facade,
                dispatcher=self.dispatcher,
                factory=self.factory,
                broadcaster=self.broadcaster,
                state=self.state,
                is_ready=lambda: self.not_ready_reason() is None,
            )
        )

    def pending_requests(self) -> int:
        """Requests accepted and not yet answered (queued or running)."""
        on_connections = self.dispatcher.inflight()
        in_batchers = sum(q.depth + q.inflight_batches for q in self.facade.get_queue_status())
        return max(on_connections, in_batchers)


def build_daemon(
    config: Config,
    reactor: Any,
    factory: ModelFactory = model_factory,
    runner: BatchRunner | None = None,
) -> Daemon:
    """Build the facade, dispatcher, protocol factory and broadcaster for ``config``.

    ``runner`` defaults to the daemon's own thread pool of inference.worker_threads.
    """
    inference = config.inference
    load_runner: BatchRunner | None = None
    if runner is None:
        runner = ThreadPoolRunner(reactor, inference.worker_threads)
        load_runner = ThreadPoolRunner(reactor, 1, name="model-load")
    broadcaster = (
        UdpBroadcaster(
            reactor,
            config.udp.max_datagram_bytes,
            config.udp.max_subscribers,
            config.udp.max_subscriptions_per_connection,
            config.udp.lease_s,
        )
        if config.udp.enabled
        else None
    )
    facade = AIFacade(
        inference,
        factory,
        runner,
        reactor,
        broadcaster=broadcaster,
        device=resolve_device(inference.device),
        streams=StreamLimits(**config.streams.model_dump()),
        result_cache=result_cache(config, reactor),
        load_runner=load_runner,
    )
    state = ServerState(started_at=reactor.seconds())
    auth = TokenAuth.from_config(config.auth)
    context = CommandContext(
        facade=facade,
        clock=reactor,
        state=state,
        max_inflight_per_connection=config.server.max_inflight_per_connection,
        auth=auth,
        log_requests=config.logging.level == "debug" or config.logging.access_log,
        access_log=config.logging.access_log,
        udp_policy=TargetPolicy.from_config(config.udp, auth.required),
        admin_enabled=config.admin.enabled,
    )
    dispatcher = Dispatcher(commands.build(context), context)
    server = config.server
    limits = ConnectionLimits(
        max_frame_bytes=server.max_frame_bytes,
        max_connections=server.max_connections,
        idle_timeout_s=server.idle_timeout_s,
        frame_timeout_s=server.frame_timeout_s,
        frame_grace_s=server.frame_grace_s,
        min_receive_rate_bytes_per_s=server.min_receive_rate_bytes_per_s,
        max_output_buffer_bytes=server.max_output_buffer_bytes,
        slow_reader_timeout_s=server.slow_reader_timeout_s,
        socket_send_buffer_bytes=server.socket_send_buffer_bytes,
        abort_timeout_s=server.abort_timeout_s,
        auth_required=auth.required,
        pre_auth_max_frame_bytes=config.auth.pre_auth_max_frame_bytes,
        auth_deadline_s=config.auth.deadline_s,
        tls_handshake_timeout_s=server.tls.handshake_timeout_s,
    )
    packet_factory = PacketFactory(dispatcher, limits, reactor)
    state.open_connections = lambda: len(packet_factory.connections)
    tls_options = server_tls_options(config.server.tls) if config.server.tls.enabled else None
    return Daemon(
        config, reactor, facade, dispatcher, packet_factory, broadcaster, runner, state, tls_options
    )


def result_cache(config: Config, reactor: Any) -> ResultCache | None:
    """The result cache ``config.cache`` asks for (None when disabled)."""
    cache = config.cache
    if not cache.enabled:
        return None
    ttls = {
        name: model.cache_ttl_s if model.cache_ttl_s is not None else cache.ttl_s
        for name, model in config.inference.models.items()
        if model.enabled
    }
    remote = None
    if cache.redis_url is not None:
        from commonlib.redis_cache import redis_tier  # imports redis (0.1 s): only when used

        remote = redis_tier(
            cache.redis_url,
            cache.redis_timeout_ms / 1000.0,
            cache.redis_threads,
            cache.redis_max_pending,
            cache.redis_retry_s,
            cache.redis_key_prefix,
            reactor,
            lambda threads: ThreadPoolRunner(reactor, threads, name="redis-cache"),
        )
    return ResultCache(cache.max_entries, ttls, reactor, remote)


class DaemonService(OrderedServices):
    """The daemon: its services started in order, stopped in reverse (see make_service).

    ``ready`` fires once the daemon serves, or fails with the first start-up failure
    (a port that cannot be bound, a model that cannot load, a failed self-check), which
    is logged once here; none leaves the daemon up but never ready. A failure after
    the stop began (e.g. a warm-up cut short by SIGTERM) is not a start-up failure.
    """

    def __init__(self, daemon: Daemon, ready_when: Milestone) -> None:
        super().__init__()
        self.daemon = daemon
        self.ready: Deferred[None] = Deferred()
        self._ready_when = ready_when

    def startService(self) -> None:
        """Start every child in order (the ports bind), then wait for ``ready_when``."""
        log_runtime()
        try:
            super().startService()
        except Exception:
            self._failed_to_start(Failure())
            return
        self._ready_when.wait().addCallbacks(self.ready.callback, self._failed_to_start)

    def _failed_to_start(self, failure: Failure) -> None:
        if not self.running or self.ready.called:
            return
        if isinstance(startup_cause(failure), StartupError):
            log.critical("InferenceServer cannot start: {error}", error=describe_failure(failure))
        else:
            log.failure("InferenceServer failed to start", failure)
        self.ready.errback(failure)

    def reload_repository(self) -> Deferred[None]:
        """SIGHUP: re-read the model repository and apply each model's version policy.

        Logs what changed per model; a refused version is logged (naming its file)
        and the versions served before keep serving.
        """
        if not self.daemon.state.ready or self.daemon.state.draining:
            log.warn("SIGHUP ignored: the server is not ready (warming up or draining)")
            return succeed(None)
        log.info("SIGHUP: re-reading the model repository")

        def report(results: list[AdminResult | ServiceError]) -> None:
            for result in results:
                if isinstance(result, ServiceError):
                    log.warn("model reload refused: {error}", error=result.message)
                else:
                    log.info(
                        "model {model}: {message}; serving {versions} (default {default})",
                        model=result.model,
                        message=result.message,
                        versions=", ".join(result.versions),
                        default=result.default_version,
                    )

        return self.daemon.facade.versions.reload_all().addCallback(report)


def log_runtime() -> None:
    """Log which protobuf backend and which codec path (C or pure Python) this process runs."""
    backend = protobuf_backend()
    if backend != "upb":
        log.warn(
            "protobuf is using its slow '{backend}' backend, not upb: decoding will cost "
            "several times more CPU (check the protobuf wheel and PROTOCOL_BUFFERS_PYTHON_"
            "IMPLEMENTATION)",
            backend=backend,
        )
    log.info(
        "codec: {path}",
        path="C hot path (factory/_fastcodec" + (", netlib/_fastudp)" if fastudp.native else ")")
        if fastcodec.native
        else f"pure Python (make native builds the C hot path; {PURE_PYTHON_ENV}=1 "
        "forces this one)",
    )


def protobuf_backend() -> str:
    """The protobuf runtime in use: 'upb' (fast, expected), 'cpp' or 'python'."""
    from google.protobuf.internal import api_implementation

    return str(api_implementation.Type())


def daemon_service(daemon: Daemon, worker_channel: socket.socket | None = None) -> DaemonService:
    """``daemon``'s services, in start order (each stops after the ones started later).

    ===========  ==========================================  =============================
    service      start                                       stop
    ===========  ==========================================  =============================
    worker-pool  worker threads, result cache                (last) threads stop
    udp          bind udp.bind_port                          close it
    http         bind http.port                              close it
    warm-up      load, warm every model; gc.freeze           the models' timers stop
    drain        -                                           answer what was accepted
    self-check   once warm: through a private loopback port  close that port if still open
    tcp          once checked: listen on server.tcp_port     stop accepting
    readiness    once listening: ready, log, port file       draining (/readyz 503) at once
    handoff      (a worker) once ready: tell the supervisor  take no more connections
                 and adopt the connections it hands over
    ===========  ==========================================  =============================
    """
    udp, http, warm_up = UdpSender(daemon), OpsHttp(daemon), WarmUp(daemon)
    check = SelfCheck(daemon, after=warm_up.warm)
    tcp = TcpListener(daemon, after=check.done)
    readiness = Readiness(daemon, tcp.done, tcp, udp, http)
    handoff = (
        HandoffChannel(daemon, worker_channel, readiness.done, readiness)
        if worker_channel is not None
        else None
    )
    root = DaemonService(daemon, ready_when=(handoff or readiness).done)
    for service in (WorkerPool(daemon), udp, http, warm_up, Drain(daemon), check, tcp, readiness):
        service.setServiceParent(root)
    if handoff is not None:
        handoff.setServiceParent(root)
    return root


def make_service(
    config: Config, reactor: Any, worker_channel: socket.socket | None = None
) -> DaemonService:
    """The daemon as a Twisted service; binding happens only when it starts.

    ``worker_channel``: run as a worker of a supervisor (aiServer/supervisor.py).
    """
    return daemon_service(build_daemon(config, reactor), worker_channel)
