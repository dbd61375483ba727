"""Rotation decisions for one symbol's spool file: 2 MiB or 5 s, whichever comes first. No I/O, no clock.

Time comes in as the shell's monotonic clock, so a wall clock that steps neither stops nor hurries rotation;
file names (and so keys) take the wall clock, as `now + wall_offset_ms`, and never go back.

A trade id that does not increase (a server replaying trades) also starts a new file, so the ids in every
file strictly increase and its manifest's first/last ids and record count describe exactly what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from collector.frames import Trade
from collector.keys import Part
from collector.stats import FileStats, Gap, IdTracker


@dataclass(slots=True)
class SpoolFile:
    """The open spool file of a symbol, as the core sees it."""

    part: Part
    # When it opened on the monotonic clock: its age is measured on that clock.
    opened_mono_ms: int
    stats: FileStats = field(default_factory=FileStats)
    # A write or close of the file failed: `stats` may count lines that never reached the disk, so the
    # manifest must be derived from the file itself.
    recount: bool = False


class Placement(NamedTuple):
    """What placing a trade asks of the shell: close `closes` (if any) before appending the line to the
    rotator's `current` file; log `gap` or `replayed_after` (if any)."""

    closes: SpoolFile | None
    gap: Gap | None
    # The last id taken before this trade, when this trade's id is not above it: the server replayed trades.
    replayed_after: int | None = None


# Nearly every trade needs nothing but its line written: no object is built for those.
_APPEND = Placement(None, None)


class Rotator:
    """Files are opened lazily on the first trade, so a rotated file always holds at least one record."""

    def __init__(self, *, symbol: str, instance_id: str, rotate_bytes: int, rotate_seconds: float,
                 last_stamp_ms: int = -1) -> None:
        self.symbol = symbol
        self.instance_id = instance_id
        self.rotate_bytes = rotate_bytes
        self.rotate_ms = int(rotate_seconds * 1000)
        self.current: SpoolFile | None = None
        self.ids = IdTracker()
        # The newest name stamp used (a previous run's too, which the shell passes in): names only go up.
        self.last_stamp_ms = last_stamp_ms
        # Wall clock minus the clock `now_ms` is read from; the shell keeps it current.
        self.wall_offset_ms = 0
        # Counted while no file is open; they belong to the next file (public: tests check the accounting).
        self.pending_malformed = 0
        self._pending_reconnects = 0

    def _open(self, now_ms: int) -> SpoolFile:
        # Names carry the opening millisecond; keep them strictly increasing so keys never collide.
        opened = max(now_ms + self.wall_offset_ms, self.last_stamp_ms + 1)
        self.last_stamp_ms = opened
        spool = SpoolFile(Part(self.symbol, self.instance_id, opened), now_ms)
        spool.stats.malformed_messages, self.pending_malformed = self.pending_malformed, 0
        spool.stats.reconnects, self._pending_reconnects = self._pending_reconnects, 0
        return spool

    def place(self, trade: Trade, now_ms: int) -> Placement:
        line_bytes = len(trade.raw) + 1
        last_id = self.ids.last_id
        replayed = last_id is not None and trade.trade_id <= last_id
        closes = current = self.current
        if current is None or (
            replayed  # the open file's last id is the run's last id
            or current.stats.uncompressed_bytes + line_bytes > self.rotate_bytes
            or now_ms - current.opened_mono_ms >= self.rotate_ms
        ):
            current = self.current = self._open(now_ms)
        else:
            closes = None
        gap = self.ids.advance(trade.trade_id)
        current.stats.add(trade, line_bytes, gap)
        if closes is None and gap is None and not replayed:
            return _APPEND
        return Placement(closes, gap, last_id if replayed else None)

    def place_run(self, trades: list[Trade], nbytes: int, now_ms: int) -> Placement | None:
        """`place` for trades that arrived together (one socket read), as one append of `nbytes`: the usual
        case of ids that continue the run and fit the open (or the next) file. None when the batch needs
        `place` trade by trade: an id gap or repeat, or a size rotation that falls inside it."""
        first = trades[0].trade_id
        last = self.ids.last_id
        if (last is not None and first != last + 1) or [t.trade_id for t in trades] != list(
                range(first, first + len(trades))):
            return None
        current = self.current
        closes = None
        if current is None or now_ms - current.opened_mono_ms >= self.rotate_ms:
            if nbytes > self.rotate_bytes:
                return None
            closes, current = current, self._open(now_ms)
            self.current = current
        elif current.stats.uncompressed_bytes + nbytes > self.rotate_bytes:
            return None
        self.ids.advance_run(trades[-1].trade_id)
        current.stats.add_run(trades, nbytes)
        return _APPEND if closes is None else Placement(closes, None)

    def expire(self, now_ms: int) -> SpoolFile | None:
        """The open file, detached, if it is due by age; called by the shell's timer."""
        current = self.current
        if current is not None and now_ms - current.opened_mono_ms >= self.rotate_ms:
            self.current = None
            return current
        return None

    def detach(self) -> SpoolFile | None:
        """The open file, detached, whatever its age (shutdown)."""
        current, self.current = self.current, None
        return current

    def note_malformed(self) -> None:
        if self.current is not None:
            self.current.stats.malformed_messages += 1
        else:
            self.pending_malformed += 1

    def note_reconnect(self) -> None:
        if self.current is not None:
            self.current.stats.reconnects += 1
        else:
            self._pending_reconnects += 1
