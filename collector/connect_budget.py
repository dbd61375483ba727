"""One budget for every connection attempt of an instance (start-up, reconnects, handovers, retries). No I/O.

Binance allows 300 connection attempts per IP per rolling 5 minutes and answers more with 429, then bans the
IP with 418. Each instance has its own IP, so one budget per instance keeps it under that limit:

- no window of `window` seconds (ends included) ever holds more than `limit` granted attempts: `burst` (a
  fifth of the limit) may go at once, the rest one every `window / (limit - burst)` seconds, a generic cell
  rate algorithm. A window then holds at most the burst and `limit - burst` paced attempts; a start-up of
  many symbols is spread out, and a network blip still finds attempts to spend;
- order: a reconnect of a dead link before a planned handover before a new symbol's first connect; each step
  down that order counts as one window of waiting, so a request that has waited longer still goes first and
  none waits forever;
- 429: no attempt before its Retry-After, then half speed (down to an eighth) until a window passes without one;
- 418: no attempt at all until the ban's Retry-After has passed.

Time is passed in (the event loop's clock); the asyncio side (`connect_gate.py`) carries out the grants, and
carries `state()` over a restart, so that a collector restarting in a loop cannot spend the burst each time.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from enum import IntEnum

# With one attempt per window there is nothing left to pace after the first.
MIN_LIMIT = 2
# The share of the budget that may be spent at once; the rest is paced over the window.
BURST_DIVISOR = 5
# After a 429 the pace halves per further 429, down to this fraction of normal.
MAX_SLOWDOWN = 8
# Binance sends Retry-After with every 429 and 418; without one (or unreadable) wait this long, its shortest ban.
RETRY_AFTER_DEFAULT_SECONDS = 120.0


class Kind(IntEnum):
    """Why a connection is wanted, in the order attempts are granted."""

    RECONNECT = 0
    HANDOVER = 1
    FIRST = 2


@dataclass(frozen=True, slots=True)
class BudgetState:
    """What a restarted collector needs to go on where the last one stopped; times on the budget's clock."""

    tat: float
    paused_until: float
    banned_until: float
    slow_until: float
    slowdown: int

    def shifted(self, seconds: float) -> BudgetState:
        """The same state on a clock `seconds` ahead."""
        return BudgetState(self.tat + seconds, self.paused_until + seconds, self.banned_until + seconds,
                           self.slow_until + seconds, self.slowdown)


@dataclass(frozen=True, slots=True)
class Grants:
    """What `poll` decided: who may connect now, and when to poll again (None: nobody is waiting)."""

    keys: list[Hashable]
    next_at: float | None


def burst(limit: int) -> int:
    return max(1, limit // BURST_DIVISOR)


def pace_seconds(limit: int, window: float) -> float:
    """The interval between paced attempts once the burst is spent."""
    return window / (limit - burst(limit))


def startup_seconds(symbols: int, limit: int, window: float) -> float:
    """How long until the last of `symbols` first connects are granted, with nothing else going on."""
    return max(0, symbols - burst(limit)) * pace_seconds(limit, window)


def retry_after_seconds(value: str | None) -> float:
    """Retry-After as Binance sends it (whole seconds); anything else gets the default."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        seconds = math.nan
    return seconds if 0 <= seconds < math.inf else RETRY_AFTER_DEFAULT_SECONDS


class ConnectBudget:
    """Requests wait in a queue; `poll(now)` grants what the budget allows now. One request per key."""

    def __init__(self, *, limit: int, window: float) -> None:
        if limit < MIN_LIMIT or not window > 0:
            raise ValueError(f"the budget needs at least {MIN_LIMIT} attempts per positive window")
        self.limit = limit
        self.window = window
        self._tolerance = (burst(limit) - 1) * pace_seconds(limit, window)
        # Generic cell rate algorithm: an attempt may go at `now` if now >= _tat - _tolerance.
        self._tat = -math.inf
        self._queue: list[tuple[float, int, Hashable]] = []
        self._waiting: dict[Hashable, tuple[float, int, Kind]] = {}
        self._seq = 0
        self.paused_until = -math.inf  # 429
        self.banned_until = -math.inf  # 418
        self._slowdown = 1
        self._slow_until = -math.inf

    # requests

    def request(self, key: Hashable, kind: Kind, now: float) -> None:
        """Queue an attempt for `key` (replacing one it already has queued)."""
        self._seq += 1
        rank = now + kind * self.window
        self._waiting[key] = (rank, self._seq, kind)
        heapq.heappush(self._queue, (rank, self._seq, key))

    def withdraw(self, key: Hashable) -> None:
        """`key` no longer wants to connect (stopping, pausing, or its link died while its handover waited)."""
        self._waiting.pop(key, None)

    def state(self) -> BudgetState:
        return BudgetState(self._tat, self.paused_until, self.banned_until, self._slow_until, self._slowdown)

    def restore(self, state: BudgetState) -> None:
        """Go on from a previous run's state (never less strict than this one's)."""
        self._tat = max(self._tat, state.tat)
        self.paused_until = max(self.paused_until, state.paused_until)
        self.banned_until = max(self.banned_until, state.banned_until)
        if state.slow_until > self._slow_until:
            self._slow_until, self._slowdown = state.slow_until, max(1, min(MAX_SLOWDOWN, state.slowdown))

    def waiting(self) -> Counter[Kind]:
        return Counter(kind for _, _, kind in self._waiting.values())

    # Binance's answers

    def too_many(self, now: float, retry_after: float) -> bool:
        """A 429: pause every attempt for `retry_after` and slow the pace. True when this starts a pause
        (attempts already in flight may bring more 429s for the same one)."""
        new = now >= self.paused_until
        if new:
            self._slowdown = min(MAX_SLOWDOWN, self._slowdown * 2) if now < self._slow_until else 2
        self._slow_until = now + retry_after + self.window
        self.paused_until = max(self.paused_until, now + retry_after)
        self._empty_bucket_at(self.paused_until)
        return new

    def banned(self, now: float, retry_after: float) -> bool:
        """A 418: no attempt until `retry_after` has passed. True when this starts a ban."""
        new = now >= self.banned_until
        self.banned_until = max(self.banned_until, now + retry_after)
        self._empty_bucket_at(self.banned_until)
        return new

    def _empty_bucket_at(self, when: float) -> None:
        # Whatever had accumulated is not spent in one go the moment the wait ends.
        self._tat = max(self._tat, when + self._tolerance)

    # grants

    def poll(self, now: float) -> Grants:
        keys: list[Hashable] = []
        while self._head() is not None and self._next_possible() <= now:
            _, _, key = heapq.heappop(self._queue)
            del self._waiting[key]
            keys.append(key)
            self._tat = max(self._tat, now) + self._interval(now)
        return Grants(keys, None if self._head() is None else self._next_possible())

    def _head(self) -> Hashable | None:
        """The key whose request goes next, dropping withdrawn and replaced entries."""
        queue = self._queue
        while queue:
            _, seq, key = queue[0]
            entry = self._waiting.get(key)
            if entry is not None and entry[1] == seq:
                return key
            heapq.heappop(queue)
        return None

    def _next_possible(self) -> float:
        return max(self.banned_until, self.paused_until, self._tat - self._tolerance)

    def _interval(self, now: float) -> float:
        if now >= self._slow_until:
            self._slowdown = 1
        return pace_seconds(self.limit, self.window) * self._slowdown
