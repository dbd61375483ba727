"""Trade-id ranges with the trade times at their ends: union, holes, counts. No I/O."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from typing import NamedTuple


class Span(NamedTuple):
    """Ids `first..last` (inclusive) are held; `first_time`/`last_time` are the trade times (`T`) there."""

    first: int
    last: int
    first_time: int
    last_time: int

    @property
    def ids(self) -> int:
        return self.last - self.first + 1


class Hole(NamedTuple):
    """Ids `first..last` are held by nobody; `after_time` is the trade time of id `first - 1` and
    `before_time` that of id `last + 1` (None where that side is not known: an open edge of the day)."""

    first: int | None
    last: int | None
    after_time: int | None
    before_time: int | None

    @property
    def ids(self) -> int | None:
        return None if self.first is None or self.last is None else self.last - self.first + 1


def merge(spans: Iterable[Span]) -> list[Span]:
    """The union, as disjoint spans in id order; touching spans (`a.last + 1 == b.first`) become one."""
    merged: list[Span] = []
    for span in sorted(spans):
        if merged and span.first <= merged[-1].last + 1:
            top = merged[-1]
            if span.last > top.last:
                merged[-1] = Span(top.first, span.last, top.first_time, span.last_time)
        else:
            merged.append(span)
    return merged


def holes_between(merged: list[Span]) -> list[Hole]:
    """The ids missing between consecutive spans of a union."""
    return [Hole(a.last + 1, b.first - 1, a.last_time, b.first_time) for a, b in pairwise(merged)]


def total(spans: Iterable[Span]) -> int:
    return sum(span.ids for span in spans)
