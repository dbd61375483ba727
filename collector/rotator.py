"""Rotation decisions for one symbol's spool file: 2 MiB or 5 s, whichever comes first. No I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from collector.frames import Trade
from collector.keys import Part
from collector.stats import FileStats, Gap, IdTracker


@dataclass(slots=True)
class SpoolFile:
    """The open spool file of a symbol, as the core sees it."""

    part: Part
    stats: FileStats = field(default_factory=FileStats)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a trade's line goes: first seal `seal` (if any), then append the line to `target`."""

    seal: SpoolFile | None
    target: SpoolFile
    gap: Gap | None


class Rotator:
    """Files are opened lazily on the first trade, so a rotated file always holds at least one record."""

    def __init__(self, *, symbol: str, instance_id: str, rotate_bytes: int, rotate_seconds: float) -> None:
        self.symbol = symbol
        self.instance_id = instance_id
        self.rotate_bytes = rotate_bytes
        self.rotate_ms = int(rotate_seconds * 1000)
        self.current: SpoolFile | None = None
        self.ids = IdTracker()
        self._last_opened_ms = -1
        # Counted while no file is open; they belong to the next file.
        self._pending_malformed = 0
        self._pending_reconnects = 0

    def _open(self, now_ms: int) -> SpoolFile:
        # Names carry the opening millisecond; keep them strictly increasing so keys never collide.
        opened = max(now_ms, self._last_opened_ms + 1)
        self._last_opened_ms = opened
        spool = SpoolFile(Part(self.symbol, self.instance_id, opened))
        spool.stats.malformed_messages, self._pending_malformed = self._pending_malformed, 0
        spool.stats.reconnects, self._pending_reconnects = self._pending_reconnects, 0
        return spool

    def place(self, trade: Trade, now_ms: int) -> Placement:
        line_bytes = len(trade.raw) + 1
        seal = None
        current = self.current
        if current is not None and (
            current.stats.uncompressed_bytes + line_bytes > self.rotate_bytes
            or now_ms - current.part.opened_at_ms >= self.rotate_ms
        ):
            seal, current = current, None
        if current is None:
            current = self.current = self._open(now_ms)
        gap = self.ids.advance(trade.trade_id)
        current.stats.add(trade, line_bytes, gap)
        return Placement(seal, current, gap)

    def expire(self, now_ms: int) -> SpoolFile | None:
        """The open file, detached, if it is due by age; called by the shell's timer."""
        current = self.current
        if current is not None and now_ms - current.part.opened_at_ms >= self.rotate_ms:
            self.current = None
            return current
        return None

    def detach(self) -> SpoolFile | None:
        """The open file, detached, whatever its age (shutdown, pause for the disk budget)."""
        current, self.current = self.current, None
        return current

    def note_malformed(self) -> None:
        if self.current is not None:
            self.current.stats.malformed_messages += 1
        else:
            self._pending_malformed += 1

    def note_reconnect(self) -> None:
        if self.current is not None:
            self.current.stats.reconnects += 1
        else:
            self._pending_reconnects += 1
