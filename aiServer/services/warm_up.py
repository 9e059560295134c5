"""The models' start and stop: load and warm every model, then freeze gc; stop their timers."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from aiServer.services.ordered import Milestone

if TYPE_CHECKING:
    from aiServer.service import Daemon

log = Logger()


class WarmUp(Service):
    """Loads every enabled model and runs its warm-up batches; ``warm`` is reached after.

    Then (inference.gc_freeze) it moves everything alive out of the collector's sight
    and starts admission by delay (commonlib/admission.py), which must not measure the
    slow first batches. Its stop stops the models' timers: version polling, admission
    probes and stream tick clocks.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.setName("warm-up")
        self.daemon = daemon
        self.warm = Milestone("warm")

    def startService(self) -> None:
        super().startService()
        warmed: Deferred[None] = self.daemon.facade.warm_up()
        warmed.addCallback(self._warmed).addCallbacks(self.warm.reach, self.warm.fail)

    def _warmed(self, _: object) -> None:
        for model, version, path in self.daemon.facade.compute_paths():
            log.info(
                "model {model} version {version}: forward pass on {path}",
                model=model,
                version=version,
                path=path,
            )
        if self.daemon.config.inference.gc_freeze:
            # Full collections over torch's objects and the models cost 100+ ms under load.
            gc.collect()
            gc.freeze()
        self.daemon.facade.admission.start()

    def stopService(self) -> None:
        super().stopService()
        facade = self.daemon.facade
        facade.versions.stop()
        facade.admission.stop()
        facade.streams.stop()
