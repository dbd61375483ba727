"""Statistics of one spool file, and trade-id continuity across the files of one run."""

from __future__ import annotations

from dataclasses import dataclass

from collector.frames import Trade


@dataclass(frozen=True, slots=True)
class Gap:
    """Trade ids `first..last` (inclusive) were never received."""

    first: int
    last: int

    @property
    def missing(self) -> int:
        return self.last - self.first + 1


class IdTracker:
    """The last and the highest trade id taken for a symbol in this run, so that gaps across files and
    reconnects are found. A gap is a jump above the highest id: after trades replayed from further back,
    the next new trade does not look like it follows a gap."""

    __slots__ = ("highest_id", "last_id")

    def __init__(self) -> None:
        self.last_id: int | None = None
        self.highest_id: int | None = None

    def advance(self, trade_id: int) -> Gap | None:
        highest, self.last_id = self.highest_id, trade_id
        if highest is None or trade_id > highest:
            self.highest_id = trade_id
            if highest is not None and trade_id > highest + 1:
                return Gap(highest + 1, trade_id - 1)
        return None

    def advance_run(self, last_id: int) -> None:
        """`advance` for a run of ids that continues `last_id` without a gap (the caller checked)."""
        self.last_id = last_id
        if self.highest_id is None or last_id > self.highest_id:
            self.highest_id = last_id


@dataclass(slots=True)
class FileStats:
    """What the manifest says about one data file; `add` is on the hot path, so it stays minimal."""

    record_count: int = 0
    uncompressed_bytes: int = 0
    min_event_time: int = 0
    max_event_time: int = 0
    min_trade_time: int = 0
    max_trade_time: int = 0
    first_trade_id: int = 0
    last_trade_id: int = 0
    malformed_messages: int = 0
    trade_id_gaps: int = 0
    missing_trade_ids: int = 0
    reconnects: int = 0

    def add(self, trade: Trade, line_bytes: int, gap: Gap | None) -> None:
        if self.record_count == 0:
            self.min_event_time = self.max_event_time = trade.event_time
            self.min_trade_time = self.max_trade_time = trade.trade_time
            self.first_trade_id = trade.trade_id
        else:
            if trade.event_time < self.min_event_time:
                self.min_event_time = trade.event_time
            elif trade.event_time > self.max_event_time:
                self.max_event_time = trade.event_time
            if trade.trade_time < self.min_trade_time:
                self.min_trade_time = trade.trade_time
            elif trade.trade_time > self.max_trade_time:
                self.max_trade_time = trade.trade_time
        self.last_trade_id = trade.trade_id
        self.record_count += 1
        self.uncompressed_bytes += line_bytes
        if gap is not None:
            self.trade_id_gaps += 1
            self.missing_trade_ids += gap.missing

    def add_run(self, trades: list[Trade], nbytes: int) -> None:
        """`add` for trades that arrived together with consecutive ids (no gap): one pass per field in C."""
        events = [t.event_time for t in trades]
        times = [t.trade_time for t in trades]
        if self.record_count == 0:
            self.min_event_time, self.max_event_time = min(events), max(events)
            self.min_trade_time, self.max_trade_time = min(times), max(times)
            self.first_trade_id = trades[0].trade_id
        else:
            self.min_event_time = min(self.min_event_time, *events)
            self.max_event_time = max(self.max_event_time, *events)
            self.min_trade_time = min(self.min_trade_time, *times)
            self.max_trade_time = max(self.max_trade_time, *times)
        self.last_trade_id = trades[-1].trade_id
        self.record_count += len(trades)
        self.uncompressed_bytes += nbytes
