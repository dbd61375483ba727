"""The asyncio side of the connection budget (`connect_budget.py`): a future per waiting stream, one timer,
the log lines an operator reads while connections wait, and the state file that carries the budget over a
restart (systemd restarts a failed collector within seconds; each start must not get a fresh budget)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Hashable
from pathlib import Path

from collector.connect_budget import BudgetState, ConnectBudget, Kind

log = logging.getLogger("collector.budget")

BANNED = 418
TOO_MANY = 429
# While attempts wait, one line at most this often says how many and for what.
REPORT_SECONDS = 30.0


class ConnectGate:
    """Every connection attempt of the instance is admitted here first."""

    def __init__(self, budget: ConnectBudget, *, state_file: Path | None) -> None:
        self.budget = budget
        self.state_file = state_file
        self._save_failed = False
        self._futures: dict[Hashable, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._next_report = 0.0
        self._reported = False
        self._banned = False

    def load(self) -> None:
        """Go on from the previous run's budget, if it left one (before the first request)."""
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            saved = BudgetState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("connection budget: cannot read %s (%s); starting afresh", self.state_file, exc)
            return
        now = asyncio.get_running_loop().time()
        self.budget.restore(saved.shifted(now - time.time()))
        if self.budget.banned_until > now:
            self._banned = True
            log.critical("the previous run was banned by Binance (HTTP 418): no connection is attempted for %.0f s",
                         self.budget.banned_until - now)

    def _save(self) -> None:
        """Written before the attempts it allows are made, so a crash never forgets one."""
        if self.state_file is None:
            return
        state = self.budget.state().shifted(time.time() - asyncio.get_running_loop().time())
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps(dataclasses.asdict(state)))
            tmp.replace(self.state_file)
        except OSError as exc:
            if not self._save_failed:
                log.warning("connection budget: cannot write %s (%s); a restart would start afresh",
                            self.state_file, exc)
            self._save_failed = True

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
                    "HTTP 418 from Binance: this IP is banned from connecting for %g s (Retry-After); no "
                    "connection is attempted until then; open connections and the spool are kept", retry_after)
        elif self.budget.too_many(now, retry_after):
            log.warning("HTTP 429 from Binance: too many connection attempts; no connection is attempted for "
                        "%g s (Retry-After), then at a slower pace", retry_after)
        self._save()
        self._pump()

    def _pump(self, timer: bool = False) -> None:
        """Grant what the budget allows now. `timer`: called by the timer, i.e. attempts have been waiting
        (a request that is granted at once, or the start-up's requests while they come in, are not reported)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._banned and now >= self.budget.banned_until:
            self._banned = False
            log.warning("the ban from Binance has passed: connecting again")
        grants = self.budget.poll(now)
        if grants.keys:
            self._save()
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
        self._timer = loop.call_at(grants.next_at, self._pump, True)
        if timer and now >= self._next_report:
            self._next_report = now + REPORT_SECONDS
            self._reported = True
            waiting = self.budget.waiting()
            log.info("connection budget: %d attempt(s) waiting (%d reconnect, %d handover, %d first connect); "
                     "the next in %.1f s", waiting.total(), waiting[Kind.RECONNECT], waiting[Kind.HANDOVER],
                     waiting[Kind.FIRST], grants.next_at - now)
