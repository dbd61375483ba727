"""Delays between retries: exponential, capped, with full jitter. The random source is passed in."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Binance allows 300 connection attempts per 5 minutes per IP; this many per symbol keeps every
# symbol of a multi-symbol instance well inside it even if all of them flap at once.
RECONNECT_CAP_SECONDS = 30.0
# A connection that stayed up this long was healthy: the next failure starts from the first delay again.
STABLE_CONNECTION_SECONDS = 60.0
# Binance answers 451/403 to a refused location; retrying faster changes nothing.
REFUSED_LOCATION_DELAY_SECONDS = 300.0
# After an upload has used all its attempts, it waits on disk this long (doubling, capped) before another round.
# The cap is what a backlog may wait once S3 answers again: one small PUT every few seconds costs S3 nothing.
UPLOAD_REQUEUE_FIRST_SECONDS = 2.0
UPLOAD_REQUEUE_CAP_SECONDS = 5.0


@dataclass(slots=True)
class Backoff:
    """`next()` gives the first delay unjittered, then doubles up to `cap` with jitter in [d/2, d]."""

    first: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)
    _failures: int = 0

    def next(self) -> float:
        self._failures += 1
        if self._failures == 1:
            return self.first
        delay = min(self.cap, self.first * 2 ** (self._failures - 1))
        return self.rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._failures = 0
