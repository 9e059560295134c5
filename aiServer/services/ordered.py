"""Start-up order made explicit: services stopped one after the other, and milestones.

Twisted's ``MultiService`` stops all its children at once; a daemon must finish its
drain before it closes the HTTP and UDP ports, so :class:`OrderedServices` waits for
each child's stop before starting the next one's. A child whose start is asynchronous
(the warm-up) reaches a :class:`Milestone`; a :class:`GatedService` starts its job
only once the milestone before it is reached, and never when it fails.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="aiServer.service")


class OrderedServices(MultiService):
    """Children start in the order they were added and stop in reverse, one at a time.

    A child whose ``startService`` raises leaves the ones after it unstarted (the
    exception propagates); ``stopService`` stops only the children that started,
    each once the previous one's stop has finished (a failed stop is logged and the
    next one still runs).
    """

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        for service in self:
            service.privilegedStartService()

    def startService(self) -> None:
        Service.startService(self)
        for service in self:
            service.startService()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        stopped: Deferred[Any] = succeed(None)
        for service in reversed(list(self)):
            if service.running:
                stopped.addCallback(self._stop, service)
        done: Deferred[None] = Deferred()  # not "called" until the last child has stopped
        stopped.addCallback(done.callback)
        return done

    @staticmethod
    def _stop(_: object, service: IService) -> Deferred[Any]:
        def failed(failure: Failure) -> None:
            log.failure("stopping {service} failed", failure, service=service.name)

        stopping: Deferred[Any] = maybeDeferred(service.stopService)
        return stopping.addErrback(failed)


class Milestone:
    """A point of the start-up that later services wait for: reached once, or failed once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._settled = False
        self._failure: Failure | None = None
        self._waiting: list[Deferred[None]] = []

    @property
    def reached(self) -> bool:
        """Whether the milestone was reached (False while pending and when it failed)."""
        return self._settled and self._failure is None

    def wait(self) -> Deferred[None]:
        """Fires once reached, fails with the milestone's failure; cancel it to stop waiting."""
        if self._settled:
            return succeed(None) if self._failure is None else fail(self._failure)
        waiting: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(waiting)
        return waiting

    def reach(self, _: object = None) -> None:
        """Mark it reached (ignored once settled)."""
        self._settle(None)

    def fail(self, failure: Failure) -> None:
        """Mark it failed with ``failure`` (ignored once settled)."""
        self._settle(failure)

    def _settle(self, failure: Failure | None) -> None:
        if self._settled:
            return
        self._settled = True
        self._failure = failure
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)


class GatedService(Service):
    """A service whose job begins once ``after`` is reached; ``done`` marks it finished.

    When ``after`` fails, the job never begins and ``done`` fails the same way; when
    the service stops first, the job never begins either (``done`` fails with
    CancelledError).
    """

    def __init__(self, name: str, after: Milestone) -> None:
        self.setName(name)
        self.after = after
        self.done = Milestone(name)
        self._begun: Deferred[Any] | None = None

    def begin(self) -> Deferred[Any] | None:
        """The job, once ``after`` is reached (may return a Deferred)."""
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        begun = self.after.wait()
        begun.addCallback(lambda _: self.begin())
        begun.addCallbacks(self.done.reach, self.done.fail)
        self._begun = begun

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._begun is not None and not self._begun.called:
            self._begun.cancel()  # still waiting for ``after``: never begin
        return None
