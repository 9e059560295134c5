"""The daemon's threads: the batch runner, the model loader and the result cache's tiers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
        for pool in self._pools():
            pool.start()

    def stopService(self) -> None:
        super().stopService()
        for pool in self._pools():
            pool.stop()

    def _pools(self) -> list[Any]:
        """The batch runner, the model loader's thread and the result cache's tiers, if any."""
        facade = self.daemon.facade
        pools: list[Any] = [self.daemon.runner, facade.versions.load_runner]
        if facade.result_cache is not None:
            pools.append(facade.result_cache)
        return pools
