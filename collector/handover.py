"""Planned handovers: when each connection hands over, and joining the new connection onto the old one
without a gap or a duplicate. No I/O."""

from __future__ import annotations

import random

from collector.frames import Trade

# Planned handovers fall at random over this long before a connection's lifetime ends (at most half of it),
# so an instance's connections, opened together, do not hand over together.
HANDOVER_SPREAD_SECONDS = 3600.0


def planned_lifetime(lifetime: float, rng: random.Random) -> float:
    """How long one connection serves before its planned handover: in the spread before `lifetime`."""
    return lifetime - rng.uniform(0.0, min(HANDOVER_SPREAD_SECONDS, lifetime / 2))


class Handover:
    """While both connections are open, the old one's trades pass; the new one's are held until the
    new stream reaches back to the last id passed (the two overlap), then released past that id. Once they
    overlap, a trade from either passes if it is past the last id passed: until the switch, the old one may
    still be ahead."""

    __slots__ = ("held", "joined", "last_id")

    def __init__(self, last_id: int | None) -> None:
        self.last_id = last_id
        self.held: list[Trade] = []
        self.joined = False

    def from_old(self, trade: Trade) -> bool:
        """Whether the old connection's trade is to be kept: past the last id passed (from either)."""
        if self.last_id is not None and trade.trade_id <= self.last_id:
            return False
        self.last_id = trade.trade_id
        self._check_joined()
        return True

    def from_new(self, trade: Trade) -> list[Trade]:
        """Trades of the new connection to keep now, in order."""
        self.held.append(trade)
        self._check_joined()
        return self.release() if self.joined else []

    def _check_joined(self) -> None:
        if self.held and (self.last_id is None or self.held[0].trade_id <= self.last_id + 1):
            self.joined = True

    def release(self) -> list[Trade]:
        """Everything held past the last id passed; used when joining, or when the wait is given up."""
        last = self.last_id
        out = [t for t in self.held if last is None or t.trade_id > last]
        self.held = []
        if out:
            self.last_id = out[-1].trade_id
        self.joined = True
        return out
