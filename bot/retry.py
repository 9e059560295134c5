"""How a well-behaved client retries a request the server did not run.

``BUSY`` (the model's queue is full, or its predicted wait is over target) and
``DEADLINE_EXCEEDED`` (the request waited ``queue_timeout_ms`` without starting)
both mean the request was *not run* (docs/protocol.md), so re-sending it is safe.
A client retries them after an exponentially growing pause with full jitter
(a uniform draw in ``[0, min(cap, base * 2**attempt)]``): a burst of clients
refused at once then comes back spread out instead of in lockstep, and the
server gets time to drain instead of re-reading the same storm.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

RETRYABLE = ("BUSY", "DEADLINE_EXCEEDED")


@dataclass
class RetryPolicy:
    """Which error codes are retried, the backoff, and the time budget; counts retries.

    One instance serves every virtual client of a run (the reactor is one thread),
    so ``retried`` is the run's tally by error code.
    """

    base_s: float = 0.05
    cap_s: float = 2.0
    budget_s: float = 30.0  # from the first send; a retry that would start later gives up
    codes: tuple[str, ...] = RETRYABLE
    seed: int = 0
    retried: Counter[str] = field(default_factory=Counter)
    gave_up: Counter[str] = field(default_factory=Counter)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def pause(self, code: str, attempt: int, elapsed_s: float) -> float | None:
        """The pause before retry ``attempt + 1`` after ``code``; None: do not retry.

        ``elapsed_s`` is the time since the first send. Counts the retry (or the
        give-up of a retryable code whose budget is spent).
        """
        if code not in self.codes:
            return None
        pause = self._rng.uniform(0.0, min(self.cap_s, self.base_s * 2.0**attempt))
        if elapsed_s + pause > self.budget_s:
            self.gave_up[code] += 1
            return None
        self.retried[code] += 1
        return pause

    def to_json(self) -> dict[str, Any]:
        """The policy and its tallies, for the report."""
        return {
            "codes": list(self.codes),
            "base_s": self.base_s,
            "cap_s": self.cap_s,
            "budget_s": self.budget_s,
            "retried": dict(self.retried),
            "gave_up": dict(self.gave_up),
        }
