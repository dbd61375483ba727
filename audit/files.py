"""Cutting a stream of trade lines into data files with the collector's own rotator, in memory. No I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from collector.frames import Trade, parse_message
from collector.rotator import Rotator, SpoolFile


def cut(rotator: Rotator, lines: Iterable[bytes], clock: Callable[[Trade], int]) -> Iterator[tuple[SpoolFile, bytes]]:
    """(file, its JSONL bytes) for each file the rotator makes of `lines`, each yielded as soon as the next
    one opens, so that a caller can store it while the stream goes on. `clock` says when each trade
    "arrived" (what the collector's wall clock would have read). A line that is not a trade of the
    rotator's symbol is an error: the caller made it."""
    current: SpoolFile | None = None
    pending: list[bytes] = []
    for line in lines:
        trade = parse_message(line, True, rotator.symbol)
        if not isinstance(trade, Trade):
            raise ValueError(f"not a {rotator.symbol} trade event: {line!r} ({trade})")
        rotator.place(trade, clock(trade))
        if rotator.current is not current:
            if current is not None:
                yield current, b"".join(pending)
            current, pending = rotator.current, []
        pending.append(line + b"\n")
    if current is not None:
        yield current, b"".join(pending)
