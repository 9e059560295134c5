"""Admission by expected delay: refuse a model's new requests while they would wait too long.

A request the server accepts waits twice before its batch starts: first for the
reactor thread to get round to its frame (the reactor's *lag*), then in its model's
batcher behind the requests already queued or running (its *backlog*). Counting
requests in flight bounds neither in time. This module predicts the wait instead:

    predicted wait = reactor lag + backlog / service rate

where the lag is measured by a probe timer on the injected clock (how late it
fires) and the service rate is the model's measured requests per second, an
exponentially weighted mean over its recent batches. While the prediction exceeds
the model's ``max_queue_delay_s`` (once that has lasted ``INTERVAL_S``, so a short
burst is queued, not shed), the model is listed in :attr:`AdmissionBoard.refusing`.
The TCP protocol checks that mapping (one truth test per frame) and answers the
model's new ``InferRequest`` frames BUSY before decoding them, which costs a small
fraction of serving them, so the server keeps its capacity for the accepted ones.

Time comes only from the injected clock, so tests drive all of it with ``task.Clock``.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from commonlib.wire import pb
from util.errors import ErrorCode

RATE_WEIGHT = 0.2  # weight of the newest batch in the service-rate mean
# A burst is not overload (CoDel's "good queue"): a model starts refusing only once its
# prediction has stayed over target this long, and stops once it has stayed under it as long.
INTERVAL_S = 0.1


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
        "_above_since",
        "_below_since",
        "_board",
        "_body",
        "_busy_since",
        "_clock",
        "_key",
        "backlog",
        "max_queue_delay_s",
        "message",
        "min_backlog",
        "overloaded",
        "rate",
        "refused",
    )

    def __init__(self, board: AdmissionBoard, model: str, max_queue_delay_s: float) -> None:
        if max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_s must not be negative")
        self._board = board
        self._clock = board.clock
        self._key = model.encode()
        self._body = busy_body(model, max_queue_delay_s)
        self.message = pb.Error.FromString(self._body).message
        self.max_queue_delay_s = max_queue_delay_s
        # Refuse only while more than this is queued or running (the batcher sets it to
        # max_batch_size): the model keeps a full batch, so however late the reactor is,
        # refusing cannot starve it, and clients holding at most that many in flight
        # between them are never refused for delay.
        self.min_backlog = 1
        self.backlog = 0
        self.rate = 0.0  # requests/s; 0 until the first batch finishes
        self.refused = 0
        self._busy_since: float | None = None
        self._above_since: float | None = None
        self._below_since: float | None = None
        self.overloaded = False

    def predicted_wait_s(self) -> float:
        """Reactor lag plus the time to serve the backlog at the measured rate."""
        lag = self._board.lag_s
        if not self.rate:
            return lag
        return lag + self.backlog / self.rate

    @property
    def refusing(self) -> bool:
        """True while new requests for this model are refused."""
        return self._key in self._board.refusing

    def set_backlog(self, backlog: int) -> None:
        """The model's requests queued or running changed to ``backlog``."""
        self.backlog = backlog
        if backlog and self._busy_since is None:
            self._busy_since = self._clock.seconds()
        self.decide()

    def batch_done(self, size: int, dispatched: float, backlog: int) -> None:
        """A batch of ``size`` finished, leaving ``backlog``; update the service rate.

        The batch's service time runs from its dispatch, or from the previous
        batch's completion if the model was busy all along (batches overlap).
        """
        now = self._clock.seconds()
        start = dispatched
        if self._busy_since is not None and self._busy_since > start:
            start = self._busy_since
        elapsed = now - start
        if elapsed > 0:
            sample = size / elapsed
            self.rate = sample if not self.rate else self.rate + RATE_WEIGHT * (sample - self.rate)
        self.backlog = backlog
        self._busy_since = now if backlog else None
        self.decide()

    def decide(self) -> None:
        """List or unlist the model in the board's refusing map.

        The model is *overloaded* once its prediction has been over target for
        ``INTERVAL_S`` and stays so until it has been under target for as long;
        while overloaded, each request is refused only if the prediction is over
        target at that moment and more than ``min_backlog`` requests are queued or
        running, so only the excess is shed and the model never runs dry.
        """
        if not self.max_queue_delay_s or not self._board.active:
            return
        now = self._clock.seconds()
        over = bool(self.backlog) and self.predicted_wait_s() > self.max_queue_delay_s
        if over:
            self._below_since = None
            if self._above_since is None:
                self._above_since = now
            if not self.overloaded and now - self._above_since >= INTERVAL_S:
                self.overloaded = True
        else:
            self._above_since = None
            if self.overloaded:
                if self._below_since is None:
                    self._below_since = now
                elif now - self._below_since >= INTERVAL_S:
                    self.overloaded = False
        if over and self.overloaded and self.backlog > self.min_backlog:
            self._board.refusing[self._key] = self._body
        else:
            self._board.refusing.pop(self._key, None)


class AdmissionBoard:
    """The daemon-wide part: the reactor-lag probe and the map of refusing models.

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

    def model(self, name: str, max_queue_delay_s: float) -> ModelAdmission:
        """The admission state of ``name`` (created on first use)."""
        admission = self.models.get(name)
        if admission is None:
            admission = self.models[name] = ModelAdmission(self, name, max_queue_delay_s)
        return admission

    def refused(self, model: bytes) -> None:
        """Count one request refused for ``model`` (called by the protocol)."""
        admission = self.models.get(model.decode("utf-8", "replace"))
        if admission is not None:
            admission.refused += 1

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
            admission.rate = 0.0
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
        self._redecide()
        self._schedule(now)

    def _redecide(self) -> None:
        for admission in self.models.values():
            admission.decide()
