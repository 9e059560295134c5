"""Admission by expected delay: refuse a model's new requests while they would wait too long.

A request the server accepts waits in its model's batcher behind the requests
already queued or running (its *backlog*). Counting requests in flight bounds that
wait in requests, not in time. This module bounds it in time:

    predicted wait = backlog / service rate

where the service rate is the model's measured requests per second, an
exponentially weighted mean over batches that finished with more work waiting,
weighted by batch size (so it measures what the model can do when busy, not how
little arrived at light load).
Whenever the backlog changes, the model is listed in :attr:`AdmissionBoard.refusing`
exactly while it is *overloaded* (below), the prediction exceeds its
``max_queue_delay_s`` and more than one full batch (``max_batch_size``) is queued or
running. Each connection's session checks that mapping (one truth test per frame)
and, when it already has a request in flight (aiServer/session.py: one waiting for
its answer is always served), answers the model's new ``InferRequest`` frames BUSY
before decoding them, which costs a small fraction of serving them, so the server
keeps its capacity for the accepted ones.

Overloaded tells a standing queue from a burst, as CoDel does (Nichols & Jacobson,
"Controlling Queue Delay"): a burst (a client's pause, the reactor descheduled for a
few ms at half load) queues and drains, and refusing it would refuse a load the
server can serve. So the model becomes overloaded only when its backlog, averaged
over time across a whole ``interval_s`` window, is over the limit; once overloaded
the decision is per request (the first request over the limit is refused, the first
that fits is taken), and the model stays overloaded until a whole ``interval_s``
passes without its backlog going over the limit. ``interval_s`` 0 judges every
request at once, as if always overloaded (this policy's first version).

The board also probes the reactor's lag (how late a 5 ms timer fires) and exports
it as a metric. The lag is not part of the prediction: a reactor kept busy by
instant-retrying clients reads as late by itself, and refusing on it starved the
model (this policy's first version: 187 req/s served against 9,491 without it).

Time comes only from the injected clock, so tests drive all of it with ``task.Clock``.
"""

from __future__ import annotations

import math

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from commonlib.wire import pb
from util.errors import ErrorCode

RATE_WEIGHT = 0.2  # weight of the newest batch in the service-rate mean


def busy_body(model: str, target_s: float) -> bytes:
    """The serialized Error sent to a request refused for ``model``'s delay target."""
    return pb.Error(
        code=ErrorCode.BUSY.value,  # type: ignore[arg-type]
        message=f"{model}: overloaded, the predicted queue wait exceeds "
        f"max_queue_delay_ms={target_s * 1000:g}; retry later or elsewhere",
    ).SerializeToString()


class ModelAdmission:
    """One model's delay prediction: its backlog and measured service rate.

    The batcher calls :meth:`set_backlog` whenever its queued + running count
    changes and :meth:`batch_done` when a batch finishes; each call re-decides
    whether the model is refusing. ``max_queue_delay_s`` 0 disables it.
    """

    __slots__ = (
        "_area",
        "_board",
        "_body",
        "_busy_since",
        "_changed",
        "_clock",
        "_key",
        "_last_over",
        "_window_start",
        "backlog",
        "full_batch",
        "interval_s",
        "limit",
        "max_queue_delay_s",
        "overloaded",
        "rate",
    )

    def __init__(
        self,
        board: AdmissionBoard,
        model: str,
        max_queue_delay_s: float,
        interval_s: float = 0.0,
    ) -> None:
        if max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_s must not be negative")
        if interval_s < 0:
            raise ValueError("interval_s must not be negative")
        self._board = board
        self._clock = board.clock
        self._key = model.encode()
        self._body = busy_body(model, max_queue_delay_s)
        self.max_queue_delay_s = max_queue_delay_s
        self.interval_s = interval_s
        self.backlog = 0
        self.full_batch = 1  # the model's max_batch_size (the batcher sets it)
        self.rate = 0.0  # requests/s; 0 until a batch finishes with more work waiting
        self.limit = math.inf  # the backlog over which new requests are refused
        self._busy_since: float | None = None
        self.overloaded = not interval_s  # with no interval, every request is judged
        self._window_start = self._changed = self._last_over = self._clock.seconds()
        self._area = 0.0  # backlog x seconds since the window started

    def predicted_wait_s(self) -> float:
        """The time to serve the backlog at the measured rate (0 while no rate is known)."""
        if not self.rate:
            return 0.0
        return self.backlog / self.rate

    @property
    def refusing(self) -> bool:
        """True while new requests for this model are refused."""
        return self._key in self._board.refusing

    def set_backlog(self, backlog: int, now: float | None = None) -> None:
        """The model's requests queued or running changed to ``backlog``.

        ``now``: the clock's time, when the caller has just read it. Called per request
        accepted, so the usual case (not overloaded, not refusing) stops early:
        :meth:`decide` would change nothing then.
        """
        if now is None:
            now = self._clock.seconds()
        interval_s = self.interval_s
        if interval_s:
            # _observe, inlined: a window closes only once per interval_s.
            self._area += self.backlog * (now - self._changed)
            self._changed = now
            if now - self._window_start >= interval_s:
                self._close_window(now)
        self.backlog = backlog
        if backlog and self._busy_since is None:
            self._busy_since = now
        if self.overloaded or self._key in self._board.refusing:
            self.decide(now)

    def batch_done(self, size: int, dispatched: float, backlog: int) -> None:
        """A batch of ``size`` finished, leaving ``backlog``; update the service rate.

        The batch's service time runs from its dispatch, or from the previous
        batch's completion if the model was busy all along (batches overlap). Only a
        batch that leaves work waiting is a sample: one that leaves the model idle
        measured how little arrived. A small batch's time is mostly per-batch cost,
        so batches under half of ``full_batch`` are no sample and the others
        weigh in proportion to their size: at light load, small batches would
        otherwise read as a slow model and refuse the next burst (measured: 22 % of
        a half-capacity load refused).
        """
        now = self._clock.seconds()
        if self.interval_s:
            self._observe(now)
        start = dispatched
        if self._busy_since is not None and self._busy_since > start:
            start = self._busy_since
        elapsed = now - start
        if backlog and elapsed > 0 and size * 2 >= self.full_batch:
            sample = size / elapsed
            weight = RATE_WEIGHT * min(1.0, size / self.full_batch)
            self.rate = sample if not self.rate else self.rate + weight * (sample - self.rate)
            self.limit = max(self.full_batch, self.rate * self.max_queue_delay_s)
        self.backlog = backlog
        self._busy_since = now if backlog else None
        self.decide(now)

    def forget_rate(self) -> None:
        """Drop the measured rate and the overload state (warm-up is not the model's speed)."""
        self.rate = 0.0
        self.limit = math.inf
        self.overloaded = not self.interval_s
        self._window_start = self._changed = self._clock.seconds()
        self._area = 0.0

    def _observe(self, now: float) -> None:
        """Add the backlog held since the last change to the window; close a full window.

        A window whose time-weighted mean backlog is over the limit makes the model
        overloaded: the queue stood over the target for the whole window, not for a
        burst.
        """
        self._area += self.backlog * (now - self._changed)
        self._changed = now
        if now - self._window_start >= self.interval_s:
            self._close_window(now)

    def _close_window(self, now: float) -> None:
        """End the window at ``now``: overloaded if its mean backlog was over the limit."""
        if self._area > self.limit * (now - self._window_start) and not self.overloaded:
            self.overloaded = True
            self._last_over = now
        self._window_start = now
        self._area = 0.0

    def decide(self, now: float) -> None:
        """List the model in the board's refusing map exactly while its wait is over target.

        Only while overloaded (see the module docstring), which ends once a whole
        ``interval_s`` passed with the backlog never over the limit.

        Never while at most one full batch is queued or running: a model whose batch
        takes longer than the target would otherwise refuse down to ever smaller,
        ever slower batches (measured at 2 ms, a closed-loop LSTM client: 4,689 req/s
        and 254,831 BUSY without the floor, 13,162 and none with it), and clients
        holding at most a batch in flight between them are never refused for delay.
        """
        if not self.max_queue_delay_s or not self._board.active:
            return
        over = self.backlog > self.limit
        if self.interval_s and self.overloaded:
            if over:
                self._last_over = now
            elif now - self._last_over >= self.interval_s:
                self.overloaded = False
        if over and self.overloaded:
            self._board.refusing[self._key] = self._body
        else:
            self._board.refusing.pop(self._key, None)


class AdmissionBoard:
    """The daemon-wide part: the map of refusing models and the reactor-lag probe.

    The lag (how late the probe's timer last fired) is exported as a metric of how
    far behind the reactor runs; refusing does not depend on it.

    ``refusing`` maps a model name (UTF-8 bytes, as on the wire) to the serialized
    BUSY Error its refused requests get; it is empty unless some model is over its
    target, so the protocol's per-frame check is one truth test.
    """

    PROBE_INTERVAL_S = 0.005

    def __init__(self, clock: IReactorTime, probe_interval_s: float = PROBE_INTERVAL_S) -> None:
        if probe_interval_s <= 0:
            raise ValueError("probe_interval_s must be positive")
        self.clock = clock
        self.probe_interval_s = probe_interval_s
        self.refusing: dict[bytes, bytes] = {}
        self.lag_s = 0.0
        self.models: dict[str, ModelAdmission] = {}
        self._call: IDelayedCall | None = None
        self._due = 0.0
        self.active = False

    def model(self, name: str, max_queue_delay_s: float, interval_s: float = 0.0) -> ModelAdmission:
        """The admission state of ``name`` (created on first use)."""
        admission = self.models.get(name)
        if admission is None:
            admission = self.models[name] = ModelAdmission(
                self, name, max_queue_delay_s, interval_s
            )
        return admission

    @property
    def enabled(self) -> bool:
        """True when some model has a delay target."""
        return any(m.max_queue_delay_s for m in self.models.values())

    def start(self) -> None:
        """Start admitting by delay: probe the lag, forget the rates measured so far.

        Until then (model warm-up) nothing is refused, and warm-up batches, slow
        because frameworks are slow on their first calls, leave no rate behind.
        """
        if self.active or not self.enabled:
            return
        self.active = True
        for admission in self.models.values():
            admission.forget_rate()
        self._schedule(self.clock.seconds())

    def stop(self) -> None:
        """Stop probing and refusing."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.active = False
        self.lag_s = 0.0
        self.refusing.clear()

    def _schedule(self, now: float) -> None:
        self._due = now + self.probe_interval_s
        self._call = self.clock.callLater(self.probe_interval_s, self._probe)

    def _probe(self) -> None:
        now = self.clock.seconds()
        lag = now - self._due
        self.lag_s = lag if lag > 0 else 0.0
        self._schedule(now)
