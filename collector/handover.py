"""Joining a new connection onto an old one without a gap or a duplicate. No I/O."""

from __future__ import annotations

from collector.frames import Trade


class Handover:
    """While both connections are open, the old one's trades pass; the new one's are held until the
    new stream reaches back to the last id passed (the two overlap), then released past that id."""

    __slots__ = ("held", "joined", "last_id")

    def __init__(self, last_id: int | None) -> None:
        self.last_id = last_id
        self.held: list[Trade] = []
        self.joined = False

    def from_old(self, trade: Trade) -> bool:
        """Whether the old connection's trade is to be kept (false once the new one has taken over)."""
        if self.joined:
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
