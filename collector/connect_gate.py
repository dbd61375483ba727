"""The asyncio side of the connection budget (`connect_budget.py`): a future per waiting stream, one timer,
and the log lines an operator reads while connections wait."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

from collector.connect_budget import ConnectBudget, Kind

log = logging.getLogger("collector.budget")

BANNED = 418
TOO_MANY = 429
# While attempts wait, one line at most this often says how many and for what.
REPORT_SECONDS = 30.0


class ConnectGate:
    """Every connection attempt of the instance is admitted here first."""

    def __init__(self, budget: ConnectBudget) -> None:
        self.budget = budget
        self._futures: dict[Hashable, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._next_report = 0.0
        self._reported = False
        self._banned = False

    def request(self, key: Hashable, kind: Kind) -> asyncio.Future[None]:
        """Done when `key` may make one attempt; withdraw it if the attempt is no longer wanted."""
        loop = asyncio.get_running_loop()
        self.withdraw(key)
        future = self._futures[key] = loop.create_future()
        self.budget.request(key, kind, loop.time())
        self._pump()
        return future

    def withdraw(self, key: Hashable) -> None:
        self.budget.withdraw(key)
        future = self._futures.pop(key, None)
        if future is not None:
            future.cancel()

    def refused(self, status: int, retry_after: float) -> None:
        """Binance answered a handshake with 429 (too many attempts) or 418 (this IP is banned)."""
        now = asyncio.get_running_loop().time()
        if status == BANNED:
            if self.budget.banned(now, retry_after):
                self._banned = True
                log.critical(
                    "HTTP 418 from Binance: this IP is banned from connecting for %.0f s (Retry-After); no "
                    "connection is attempted until then; open connections and the spool are kept", retry_after)
        elif self.budget.too_many(now, retry_after):
            log.warning("HTTP 429 from Binance: too many connection attempts; no connection is attempted for "
                        "%.0f s (Retry-After), then at a slower pace", retry_after)
        self._pump()

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._banned and now >= self.budget.banned_until:
            self._banned = False
            log.warning("the ban from Binance has passed: connecting again")
        grants = self.budget.poll(now)
        for key in grants.keys:
            future = self._futures.pop(key, None)
            if future is not None and not future.done():
                future.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if grants.next_at is None:
            if self._reported:
                self._reported = False
                log.info("connection budget: no attempt waiting")
            return
        self._timer = loop.call_at(grants.next_at, self._pump)
        if now >= self._next_report:
            self._next_report = now + REPORT_SECONDS
            self._reported = True
            waiting = self.budget.waiting()
            log.info("connection budget: %d attempt(s) waiting (%d reconnect, %d handover, %d first connect); "
                     "the next in %.1f s", waiting.total(), waiting[Kind.RECONNECT], waiting[Kind.HANDOVER],
                     waiting[Kind.FIRST], grants.next_at - now)
