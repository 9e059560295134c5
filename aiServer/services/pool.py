"""The daemon's threads: the batch runner, the model loader and the result cache's tiers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import Service

if TYPE_CHECKING:
    from aiServer.service import Daemon


class WorkerPool(Service):
    """Starts the worker threads first (the warm-up runs on them) and stops them last."""

    def __init__(self, daemon: Daemon) -> None:
        self.setName("worker-pool")
        self.daemon = daemon

    def startService(self) -> None:
        super().startService()
        daemon = self.daemon
        daemon.runner.start()
        daemon.facade.versions.load_runner.start()
        if daemon.facade.result_cache is not None:
            daemon.facade.result_cache.start()

    def stopService(self) -> None:
        super().stopService()
        daemon = self.daemon
        daemon.runner.stop()
        daemon.facade.versions.load_runner.stop()
        if daemon.facade.result_cache is not None:
            daemon.facade.result_cache.stop()
