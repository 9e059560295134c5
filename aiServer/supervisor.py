"""The supervisor: one TCP port served by several daemon processes (server.workers > 1).

Python runs one reactor thread per process, so on a machine with more than one core
a single daemon leaves cores idle. With ``server.workers: N`` the process started
as ``python -m aiServer`` becomes a supervisor: it starts N worker processes (each a
complete daemon: its own models, batchers, thread pool and UDP sender), waits until
every one has warmed up, then listens on ``server.tcp_port`` and hands each accepted
connection to the worker holding the fewest (netlib/handoff.py). A connection stays
with its worker for its whole life, so its UDP subscriptions and in-flight limits
live there too.

It restarts a worker that dies (after ``server.worker_restart_delay_s``; the
clients connected to it must reconnect), forwards SIGTERM to every worker so each
drains, and serves the HTTP port: /healthz, /readyz, /workers, and /metrics and
/status gathered from the workers' own HTTP ports (each sample labelled ``worker``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IListeningPort, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

from aiServer.facade import model_specs
from aiServer.metrics_merge import merge_worker_metrics
from aiServer.service import connectable_host, write_port_file
from aiServer.startup import StartupError, cannot_bind, listening
from commonlib.models.registry import model_factory
from factory.codec import encode_envelope, error_envelope
from netlib.handoff import Acceptor, SocketReader, WorkerChannel, channel_pair
from netlib.http_server import HttpResponse, Route, make_site
from util.config import PROJECT_ROOT, Config, ConfigError, resolve_path
from util.errors import ErrorCode

log = Logger()

WORKER_CHANNEL_FD = 3  # where a worker finds its end of the channel
WORKER_SCRAPE_TIMEOUT_S = 2.0


def worker_count(configured: int) -> int:
    """server.workers resolved: 0 means one per CPU core this process may use."""
    return configured or len(os.sched_getaffinity(0))


def describe_exit(reason: Failure) -> str:
    """How a process ended: "exit code N" or "killed by signal N"."""
    signal_number = getattr(reason.value, "signal", None)
    if signal_number is not None:
        return f"killed by signal {signal_number}"
    return f"exit code {getattr(reason.value, 'exitCode', None)}"


@dataclass
class _Worker:
    index: int
    channel: WorkerChannel | None = None
    reader: SocketReader | None = None
    process: IProcessTransport | None = None
    pid: int = 0
    ever_ready: bool = False
    restarts: int = 0


class _WorkerProcess(ProcessProtocol):
    def __init__(self, ended: Callable[[Failure], None]) -> None:
        self._ended = ended

    def processEnded(self, reason: Failure) -> None:
        self._ended(reason)


class Supervisor(Service):
    """Starts and watches the workers, accepts on the TCP port, hands connections over.

    Each worker runs ``worker_command`` plus ``--worker-channel 3 --worker-index I``,
    with its channel on descriptor 3 and this process's stdout and stderr.
    """

    KILL_GRACE_S = 5.0

    def __init__(
        self,
        config: Config,
        reactor: Any,
        count: int,
        worker_command: list[str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.worker_command = list(worker_command)
        self.env = dict(os.environ if env is None else env)
        self.workers = [_Worker(i) for i in range(count)]
        self.listener: socket.socket | None = None
        self.acceptor: Acceptor | None = None
        self.http_port: IListeningPort | None = None
        self.tcp_port = 0
        self.listening = False
        self.stopping = False
        self.ready: Deferred[None] = Deferred()
        self._all_ended: Deferred[None] | None = None
        self._agent = Agent(reactor)

    # -- start -------------------------------------------------------------------------
    def startService(self) -> None:
        """Bind the TCP and HTTP ports and start the workers; a port in use fails ``ready``."""
        super().startService()
        try:
            self._bind()
        except StartupError:
            self.ready.errback(Failure())
            return
        log.info("supervisor starting {count} workers", count=len(self.workers))
        for worker in self.workers:
            self._spawn(worker)

    def _bind(self) -> None:
        server = self.config.server
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((server.host, server.tcp_port))
        except OSError as exc:
            listener.close()
            raise cannot_bind("server.tcp_port", server.host, server.tcp_port, exc) from None
        self.listener = listener
        self.tcp_port = listener.getsockname()[1]
        if self.config.http.enabled:
            http = self.config.http
            site = make_site(self._routes(), access_log=self.config.logging.access_log)
            self.http_port = listening(
                "http.port", lambda: self.reactor.listenTCP(http.port, site, interface=http.host)
            )
        self.acceptor = Acceptor(self.reactor, listener, self._channels, self._refuse)

    def _spawn(self, worker: _Worker) -> None:
        if self.stopping:
            return
        supervisor_end, worker_end = channel_pair()
        channel = WorkerChannel(worker.index, supervisor_end)
        worker.channel = channel
        worker.reader = SocketReader(
            self.reactor, supervisor_end, lambda: self._on_message(worker), f"worker-{worker.index}"
        )
        worker.reader.start()
        worker.process = self.reactor.spawnProcess(
            _WorkerProcess(lambda reason: self._ended(worker, reason)),
            sys.executable,
            [
                *self.worker_command,
                "--worker-channel",
                str(WORKER_CHANNEL_FD),
                "--worker-index",
                str(worker.index),
            ],
            env=self.env,
            path=str(PROJECT_ROOT),
            childFDs={0: "w", 1: 1, 2: 2, WORKER_CHANNEL_FD: worker_end.fileno()},
        )
        worker.pid = worker.process.pid or 0
        worker_end.close()

    def _channels(self) -> list[WorkerChannel]:
        return [w.channel for w in self.workers if w.channel is not None]

    def _on_message(self, worker: _Worker) -> None:
        channel = worker.channel
        if channel is None:
            return
        was_ready = channel.ready
        if not channel.read_messages() and worker.reader is not None:
            worker.reader.stop()  # the process's end follows
            worker.reader = None
        if channel.ready and not was_ready:
            worker.ever_ready = True
            log.info(
                "worker {index} (pid {pid}) ready: own tcp {tcp}, http {http}",
                index=worker.index,
                pid=worker.pid,
                tcp=channel.info.get("tcp"),
                http=channel.info.get("http"),
            )
            self._listen_when_all_ready()

    def _listen_when_all_ready(self) -> None:
        if self.listening or self.stopping or not all(w.ever_ready for w in self.workers):
            return
        assert self.listener is not None and self.acceptor is not None
        self.listener.listen(self.config.server.listen_backlog)
        self.acceptor.start()
        self.listening = True
        host = self.config.server.host
        http: Any = self.http_port.getHost() if self.http_port is not None else None
        log.info(
            "InferenceServer ready: tcp {host}:{port} served by {count} workers, http {http}",
            host=host,
            port=self.tcp_port,
            count=len(self.workers),
            http=f"{http.host}:{http.port}" if http is not None else "disabled",
        )
        if self.config.server.port_file:
            write_port_file(
                resolve_path(self.config.server.port_file),
                {
                    "tcp": self.tcp_port,
                    "udp": None,
                    "http": http.port if http is not None else None,
                    "pid": os.getpid(),
                    "workers": self.describe_workers(),
                },
            )
        self.ready.callback(None)

    def _refuse(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        message = "no worker is ready (restarting); retry shortly"
        conn.send(encode_envelope(error_envelope(0, ErrorCode.UNAVAILABLE, message)))

    # -- a worker ended ----------------------------------------------------------------
    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if worker.reader is not None:
            worker.reader.stop()
            worker.reader = None
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        worker.process = None
        status = describe_exit(reason)
        if self.stopping:
            log.info("worker {index} exited: {status}", index=worker.index, status=status)
            if self._all_ended is not None and all(w.process is None for w in self.workers):
                self._all_ended.callback(None)
            return
        if not self.listening:
            log.error(
                "worker {index} exited during start-up: {status}", index=worker.index, status=status
            )
            if not self.ready.called:
                message = (
                    f"worker {worker.index} exited during start-up ({status}; "
                    "its reason is logged above)"
                )
                code = getattr(reason.value, "exitCode", None)
                # A worker's configuration error is the supervisor's too (exit status 2).
                error = ConfigError(message) if code == 2 else RuntimeError(message)
                self.ready.errback(Failure(error))
            return
        worker.restarts += 1
        delay = self.config.server.worker_restart_delay_s
        log.error(
            "worker {index} (pid {pid}) exited unexpectedly: {status}; restarting in {delay} s",
            index=worker.index,
            pid=worker.pid,
            status=status,
            delay=delay,
        )
        self.reactor.callLater(delay, self._spawn, worker)

    # -- stop --------------------------------------------------------------------------
    def stopService(self) -> Deferred[None]:
        """Stop accepting, SIGTERM every worker (each drains), SIGKILL the late ones."""
        super().stopService()
        self.stopping = True
        if self.acceptor is not None:
            self.acceptor.stop()
        elif self.listener is not None:
            self.listener.close()
        ended: Deferred[None] = Deferred()
        self._all_ended = ended
        alive = [w for w in self.workers if w.process is not None]
        for worker in alive:
            assert worker.process is not None
            worker.process.signalProcess("TERM")
        if not alive:
            ended.callback(None)
        grace = self.config.server.drain_timeout_s + self.KILL_GRACE_S
        killer = self.reactor.callLater(grace, self._kill_remaining)

        def finish(_: object) -> None:
            if killer.active():
                killer.cancel()
            if self.http_port is not None:
                self.http_port.stopListening()

        return ended.addCallback(finish)

    def reload_workers(self) -> None:
        """SIGHUP: forward it to every worker (each re-reads the model repository)."""
        for worker in self.workers:
            if worker.process is not None:
                worker.process.signalProcess("HUP")

    def _kill_remaining(self) -> None:
        for worker in self.workers:
            if worker.process is not None:
                log.warn("worker {index} did not drain in time: SIGKILL", index=worker.index)
                worker.process.signalProcess("KILL")

    # -- HTTP --------------------------------------------------------------------------
    def describe_workers(self) -> list[dict[str, Any]]:
        """Each worker: pid, readiness, connections, restarts and its own ports."""
        out = []
        for w in self.workers:
            channel = w.channel
            out.append(
                {
                    "index": w.index,
                    "pid": w.pid if w.process is not None else None,
                    "ready": bool(channel and channel.ready),
                    "connections": channel.connections if channel else 0,
                    "handed_off": channel.handed_off if channel else 0,
                    "restarts": w.restarts,
                    "ports": dict(channel.info) if channel else {},
                }
            )
        return out

    def not_ready_reason(self) -> str | None:
        """Why /readyz is 503, or None."""
        if self.stopping:
            return "draining: shutting down"
        if not self.listening:
            return "warming up: starting workers"
        waiting = [str(w.index) for w in self.workers if not (w.channel and w.channel.ready)]
        if waiting:
            return f"worker {', '.join(waiting)} not ready (restarting)"
        return None

    def _routes(self) -> dict[str, Route]:
        def healthz() -> HttpResponse:
            alive = sum(1 for w in self.workers if w.process is not None)
            return HttpResponse.json(200, {"status": "alive", "workers_alive": alive})

        def readyz() -> HttpResponse:
            reason = self.not_ready_reason()
            if reason is not None:
                return HttpResponse.json(503, {"ready": False, "reason": reason})
            return HttpResponse.json(200, {"ready": True})

        def workers() -> HttpResponse:
            return HttpResponse.json(200, {"workers": self.describe_workers()})

        def metrics() -> Deferred[HttpResponse]:
            def merge(texts: dict[str, str]) -> HttpResponse:
                body = merge_worker_metrics(texts, self._own_metrics(texts))
                return HttpResponse(200, CONTENT_TYPE_LATEST, body)

            return self._gather("/metrics").addCallback(merge)

        def status() -> Deferred[HttpResponse]:
            def combine(texts: dict[str, str]) -> HttpResponse:
                return HttpResponse.json(
                    200, {"workers": {k: json.loads(v) for k, v in sorted(texts.items())}}
                )

            return self._gather("/status").addCallback(combine)

        return {
            "/healthz": healthz,
            "/readyz": readyz,
            "/workers": workers,
            "/metrics": metrics,
            "/status": status,
        }

    def _gather(self, path: str) -> Deferred[dict[str, str]]:
        """GET ``path`` from every ready worker's HTTP port; {worker index: body}."""
        host = connectable_host(self.config.http.host)
        fetches: list[Deferred[tuple[str, str | None]]] = []
        for w in self.workers:
            port = w.channel.info.get("http") if w.channel and w.channel.ready else None
            if port:
                fetches.append(self._fetch(str(w.index), f"http://{host}:{port}{path}"))
        gathered: Deferred[list[tuple[str, str | None]]] = gatherResults(fetches)
        return gathered.addCallback(lambda pairs: {k: v for k, v in pairs if v is not None})

    def _fetch(self, name: str, url: str) -> Deferred[tuple[str, str | None]]:
        d = self._agent.request(b"GET", url.encode())
        d.addCallback(readBody)
        d.addTimeout(WORKER_SCRAPE_TIMEOUT_S, self.reactor)

        def ok(body: bytes) -> tuple[str, str | None]:
            return name, body.decode("utf-8", "replace")

        def failed(failure: Failure) -> tuple[str, str | None]:
            log.warn(
                "worker {name}: GET {url} failed: {error}", name=name, url=url, error=failure.value
            )
            return name, None

        return d.addCallbacks(ok, failed)

    def _own_metrics(self, scraped: Mapping[str, str]) -> list[Any]:
        ready = GaugeMetricFamily(
            "inference_supervisor_workers_ready", "Workers serving handed-over connections"
        )
        ready.add_metric([], sum(1 for w in self.workers if w.channel and w.channel.ready))
        restarts = CounterMetricFamily(
            "inference_supervisor_worker_restarts", "Workers restarted after exiting unexpectedly"
        )
        restarts.add_metric([], sum(w.restarts for w in self.workers))
        handed = CounterMetricFamily(
            "inference_supervisor_connections",
            "Connections accepted by the supervisor",
            labels=["outcome"],
        )
        acceptor = self.acceptor
        accepted = acceptor.accepted if acceptor else 0
        refused = acceptor.refused if acceptor else 0
        handed.add_metric(["handed_off"], accepted - refused)
        handed.add_metric(["refused"], refused)
        scrape = GaugeMetricFamily(
            "inference_supervisor_worker_scrape_ok",
            "1 when this scrape read the worker's /metrics",
            labels=["worker"],
        )
        for w in self.workers:
            scrape.add_metric([str(w.index)], 1.0 if str(w.index) in scraped else 0.0)
        return [ready, restarts, handed, scrape]


def make_supervisor_service(
    config: Config, reactor: Any, count: int, worker_command: list[str]
) -> MultiService:
    """The supervisor as a Twisted service (nothing is bound or spawned until it starts).

    The models' settings are checked here first (ConfigError naming the key), so a
    misspelt setting stops the daemon before any worker starts, as in one process.
    """
    model_specs(config.inference, model_factory)
    root = MultiService()
    Supervisor(config, reactor, count, worker_command).setServiceParent(root)
    return root
