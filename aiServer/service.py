"""Daemon wiring: ``make_service(config, reactor)`` builds everything, binds nothing.

Ports are bound in ``startService``: first the UDP sender, then (after every model
has loaded and run a warm-up batch) the TCP listener, so the first client request
is served as fast as steady state.
"""

from __future__ import annotations

import gc
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
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
from aiServer.ops_http import make_admin_routes, make_routes
from aiServer.self_check import SelfCheckFailed, self_check, self_check_requests
from aiServer.startup import StartupError, describe_failure, listening, startup_cause
from aiServer.tls import server_tls_options
from aiServer.udp_policy import TargetPolicy
from commonlib.batcher import BatchRunner
from commonlib.device import resolve_device
from commonlib.models.registry import ModelFactory, model_factory
from commonlib.result_cache import ResultCache
from commonlib.runner import ThreadPoolRunner
from commonlib.streams import StreamLimits
from commonlib.wire import pb
from factory import fastcodec
from factory.packet_protocol import (
    ConnectionLimits,
    HandedOffFactory,
    PacketFactory,
    PacketProtocol,
)
from netlib import fastudp
from netlib.handoff import HandoffReceiver
from netlib.http_server import make_site
from netlib.udp_broadcast import UdpBroadcaster
from util.config import Config, resolve_path
from util.errors import ServiceError
from util.native import PURE_PYTHON_ENV

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


class InferenceService(Service):
    """Starts the worker pool, warms the models, then listens; stops in reverse.

    With ``worker_channel`` (a socket from the supervisor, see aiServer/supervisor.py)
    it is one of several worker processes: it still listens on its own port (the
    config given to workers makes that an ephemeral loopback one), and once ready it
    also serves the connections the supervisor accepts and hands over.
    """

    DRAIN_POLL_S = 0.02

    def __init__(self, daemon: Daemon, worker_channel: socket.socket | None = None) -> None:
        self.daemon = daemon
        self.tcp_port: IListeningPort | None = None
        self.udp_port: IListeningPort | None = None
        self.http_port: IListeningPort | None = None
        self.ready: Deferred[None] = Deferred()
        self.handoff: HandoffReceiver | None = None
        if worker_channel is not None:
            self.handoff = HandoffReceiver(
                daemon.reactor, worker_channel, self._adopt, self._supervisor_gone
            )
            handed_off = HandedOffFactory(daemon.factory, self.handoff.connection_closed)
            self._handed_off_factory: Any = (
                TLSMemoryBIOFactory(daemon.tls_options, False, handed_off)
                if daemon.tls_options is not None
                else handed_off
            )

    def _adopt(self, fd: int, family: int) -> None:
        self.daemon.reactor.adoptStreamConnection(fd, family, self._handed_off_factory)

    def _supervisor_gone(self) -> None:
        if self.daemon.state.draining:
            return  # already stopping
        log.warn("the supervisor has gone: draining and exiting")
        self.daemon.reactor.stop()

    # -- readiness and introspection ---------------------------------------------------
    def not_ready_reason(self) -> str | None:
        """Why /readyz is 503, or None when the server takes traffic."""
        if self.daemon.state.draining:
            return "draining: shutting down, finishing accepted requests"
        if not self.daemon.state.ready:
            return "warming up: loading models and running a warm-up batch"
        return None

    def status(self) -> dict[str, Any]:
        """The Status message (as for the TCP GetStatus command) as JSON-able data."""
        daemon = self.daemon
        status = build_status(daemon.facade, daemon.state, daemon.reactor.seconds())
        return MessageToDict(status, always_print_fields_with_no_presence=True)

    def metrics_registry(self) -> CollectorRegistry:
        """A Prometheus registry reading this daemon's counters at scrape time."""
        daemon = self.daemon
        return make_registry(
            MetricSources(
                facade=daemon.facade,
                dispatcher=daemon.dispatcher,
                factory=daemon.factory,
                broadcaster=daemon.broadcaster,
                state=daemon.state,
                is_ready=lambda: self.not_ready_reason() is None,
            )
        )

    def _start_http(self) -> None:
        daemon = self.daemon
        registry = self.metrics_registry()
        routes = make_routes(daemon.facade, registry, self.not_ready_reason, self.status)
        http = daemon.config.http
        admin = daemon.config.admin
        site = make_site(
            routes,
            access_log=daemon.config.logging.access_log,
            post_routes=make_admin_routes(
                daemon.facade.versions, admin.enabled, admin.http_allowed_cidrs
            ),
        )
        self.http_port = listening(
            "http.port", lambda: daemon.reactor.listenTCP(http.port, site, interface=http.host)
        )

    def startService(self) -> None:
        """Bind UDP and HTTP, warm the models, then listen; ``ready`` fires or fails.

        Any failure (a port in use, a model that cannot load) fails ``ready`` at
        once; none leaves the daemon up but never ready.
        """
        super().startService()
        try:
            self._start()
        except Exception:
            self._failed_to_start(Failure())

    def _start(self) -> None:
        daemon = self.daemon
        config = daemon.config
        daemon.runner.start()
        daemon.facade.versions.load_runner.start()
        if daemon.facade.result_cache is not None:
            daemon.facade.result_cache.start()
        broadcaster = daemon.broadcaster
        if broadcaster is not None:
            udp = config.udp
            self.udp_port = listening(
                "udp.bind_port",
                lambda: daemon.reactor.listenUDP(
                    udp.bind_port, broadcaster, interface=udp.bind_host
                ),
            )
        if config.http.enabled:
            self._start_http()
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
            path="C hot path (factory/_fastcodec"
            + (", netlib/_fastudp)" if fastudp.native else ")")
            if fastcodec.native
            else f"pure Python (make native builds the C hot path; {PURE_PYTHON_ENV}=1 "
            "forces this one)",
        )
        started = daemon.reactor.seconds()
        warm = daemon.facade.warm_up()
        warm.addCallback(lambda _: self._listen(started))
        warm.addErrback(self._failed_to_start)

    def _listen(self, started: float) -> None:
        daemon = self.daemon
        config = daemon.config
        if config.inference.gc_freeze:
            # Move everything alive now (torch, models) out of the collector's sight:
            # full collections over it cost 100+ ms under load.
            gc.collect()
            gc.freeze()
        daemon.facade.admission.start()
        server = config.server
        tls_options = daemon.tls_options
        if tls_options is not None:
            self.tcp_port = listening(
                "server.tcp_port",
                lambda: daemon.reactor.listenSSL(
                    server.tcp_port,
                    daemon.factory,
                    tls_options,
                    backlog=server.listen_backlog,
                    interface=server.host,
                ),
            )
        else:
            self.tcp_port = listening(
                "server.tcp_port",
                lambda: daemon.reactor.listenTCP(
                    server.tcp_port,
                    daemon.factory,
                    backlog=server.listen_backlog,
                    interface=server.host,
                ),
            )
        tcp: Any = self.tcp_port.getHost()
        if tls_options is None and not daemon.factory.limits.auth_required:
            host = connectable_host(server.host)
            check = self_check(daemon.reactor, host, tcp.port, self._self_check_requests())
            check.addErrback(self._self_check_failed, f"{host}:{tcp.port}")
            check.addCallback(lambda _: self._announce(started))
            check.addErrback(self._failed_to_start)
        else:
            self._announce(started)

    @staticmethod
    def _self_check_failed(failure: Failure, where: str) -> Failure:
        if failure.check(SelfCheckFailed):
            message = f"the start-up self-check through {where} failed: {failure.getErrorMessage()}"
            return Failure(StartupError("server.host", message))
        return failure

    def _self_check_requests(self) -> list[pb.Envelope]:
        return self_check_requests(self.daemon.facade.warmup_requests())

    def _announce(self, started: float) -> None:
        daemon = self.daemon
        config = daemon.config
        assert self.tcp_port is not None
        if daemon.broadcaster is not None:
            # Only now: warm-up and self-check results are not broadcast to engines.
            for target in config.udp.targets:
                daemon.broadcaster.add_target(
                    target.host, target.port, target.encoding, frozenset(target.models), static=True
                )
        daemon.state.ready = True
        tcp: Any = self.tcp_port.getHost()
        udp: Any = self.udp_port.getHost() if self.udp_port is not None else None
        http: Any = self.http_port.getHost() if self.http_port is not None else None
        log.info(
            "InferenceServer ready in {seconds:.2f}s: tcp {host}:{port}, udp sender {udp}, "
            "http {http}, models {models} on {device}",
            seconds=daemon.reactor.seconds() - started,
            host=tcp.host,
            port=tcp.port,
            udp=f"{udp.host}:{udp.port}" if udp is not None else "disabled",
            http=f"{http.host}:{http.port}" if http is not None else "disabled",
            models=", ".join(daemon.facade.model_names()),
            device=daemon.facade.device,
        )
        ports = {
            "tcp": tcp.port,
            "udp": udp.port if udp is not None else None,
            "http": http.port if http is not None else None,
            "pid": os.getpid(),
        }
        if config.server.port_file:
            write_port_file(resolve_path(config.server.port_file), ports)
        if self.handoff is not None:
            self.handoff.start()
            self.handoff.announce_ready(ports)
        self.ready.callback(None)

    def _failed_to_start(self, failure: Failure) -> None:
        if isinstance(startup_cause(failure), StartupError):
            log.critical("InferenceServer cannot start: {error}", error=describe_failure(failure))
        else:
            log.failure("InferenceServer failed to start", failure)
        if not self.ready.called:
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

    # -- graceful drain ------------------------------------------------------------------
    DRAIN_QUIET_S = 0.05
    DRAIN_LINGER_S = 1.0

    def stopService(self) -> Deferred[None]:
        """Drain: not ready at once, stop accepting, answer everything, then stop.

        Every frame a client sent before its connection is half-closed gets a reply:
        work accepted before the drain is answered, anything read after it is answered
        UNAVAILABLE (the dispatcher). A connection is half-closed
        (:meth:`PacketProtocol.finish_draining`) once nothing is in flight on it and
        it has been quiet for ``DRAIN_QUIET_S`` (or for at most ``DRAIN_LINGER_S``
        after its last accepted request was answered, if it keeps sending); it
        closes when the client closes its side. All of it is bounded by
        server.drain_timeout_s, after which what is left is aborted; the reactor
        waits for the returned Deferred.
        """
        super().stopService()
        daemon = self.daemon
        daemon.state.draining = True
        if self.handoff is not None:
            self.handoff.stop()
        if self.tcp_port is not None:
            self.tcp_port.stopListening()
        factory = daemon.factory
        clock = daemon.reactor
        started = clock.seconds()
        timeout = daemon.config.server.drain_timeout_s
        log.info(
            "draining: {pending} requests in flight on {connections} connections",
            pending=self.pending_requests(),
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
            if (factory.connections or self.pending_requests()) and now - started < timeout:
                clock.callLater(self.DRAIN_POLL_S, step)
                return
            self._end_drain(now - started)
            done.callback(None)

        step()
        return done

    def _end_drain(self, waited: float) -> None:
        factory = self.daemon.factory
        pending = self.pending_requests()
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
        self._stop_everything()

    def pending_requests(self) -> int:
        """Requests accepted and not yet answered (queued or running)."""
        daemon = self.daemon
        on_connections = daemon.dispatcher.inflight()
        in_batchers = sum(q.depth + q.inflight_batches for q in daemon.facade.get_queue_status())
        return max(on_connections, in_batchers)

    def _stop_everything(self) -> None:
        self.daemon.facade.versions.stop()
        self.daemon.facade.admission.stop()
        self.daemon.facade.streams.stop()
        for port in (self.udp_port, self.http_port):
            if port is not None:
                port.stopListening()
        self.daemon.runner.stop()
        self.daemon.facade.versions.load_runner.stop()
        if self.daemon.facade.result_cache is not None:
            self.daemon.facade.result_cache.stop()


def protobuf_backend() -> str:
    """The protobuf runtime in use: 'upb' (fast, expected), 'cpp' or 'python'."""
    from google.protobuf.internal import api_implementation

    return str(api_implementation.Type())


def connectable_host(bind_host: str) -> str:
    """Where this host reaches a listener bound to ``bind_host`` (any-address → loopback)."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "") else bind_host


def write_port_file(path: Path, ports: dict[str, Any]) -> None:
    """Write the bound ports as JSON, atomically (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ports), encoding="utf-8")
    tmp.replace(path)


def make_service(
    config: Config, reactor: Any, worker_channel: socket.socket | None = None
) -> MultiService:
    """The daemon as a Twisted service; binding happens only when it starts.

    ``worker_channel``: run as a worker of a supervisor (aiServer/supervisor.py).
    """
    root = MultiService()
    InferenceService(build_daemon(config, reactor), worker_channel).setServiceParent(root)
    return root
