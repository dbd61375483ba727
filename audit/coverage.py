"""Which trade ids of one symbol's day each replica holds, their union, and the holes nobody holds. No I/O.

A day is the trades whose trade time `T` falls in [00:00, 24:00) UTC. Ids grow with trade time, so a hole is
in the day when the trade times around it reach into the day; a day's start (or end) is bracketed when some
file holds ids on both sides of midnight, or a hole there says how many are missing. When nothing at all is
known before the day's first trade (or after its last), that edge is an open hole: how many ids it holds is
not known from the data, and the backfill finds out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from audit.days import reaches_into
from audit.entries import Entry
from audit.ranges import Hole, Span, holes_between, merge, total


@dataclass
class InstanceCoverage:
    files: int = 0
    records: int = 0
    spans: list[Span] = field(default_factory=list)  # its own union, over its files that reach into the day
    uptime_ms: int = 0  # trade time spanned by its own continuous id runs, within the day

    @property
    def ids(self) -> int:
        return total(self.spans)


@dataclass
class DayCoverage:
    start_ms: int
    end_ms: int
    instances: dict[str, InstanceCoverage]
    union: list[Span]  # of the files that reach into the day
    holes: list[Hole]  # nobody holds these (open edges included)
    records: int  # records in the files that reach into the day, all replicas
    unique_ids: int

    @property
    def complete(self) -> bool:
        """Every id of the day is held. A day without a single trade is complete when both sides are held."""
        return not self.holes

    @property
    def duplicates_ratio(self) -> float:
        """Records held per distinct id: 3.0 when three replicas hold everything once."""
        return self.records / self.unique_ids if self.unique_ids else 0.0

    @property
    def first_id(self) -> int | None:
        return self.union[0].first if self.union else None

    @property
    def last_id(self) -> int | None:
        return self.union[-1].last if self.union else None


def _spans_of(entry: Entry, exact: Mapping[str, list[Span]]) -> list[Span]:
    return exact[entry.data_key] if entry.inner_missing else [entry.span]


def _hole_in_day(hole: Hole, start_ms: int, end_ms: int) -> bool:
    # The missing trades' times lie between those around the hole; an unknown side is unbounded.
    return reaches_into(start_ms - 1 if hole.after_time is None else hole.after_time,
                        end_ms if hole.before_time is None else hole.before_time, start_ms, end_ms)


def _uptime(spans: Iterable[Span], start_ms: int, end_ms: int) -> int:
    return sum(max(0, min(s.last_time, end_ms) - max(s.first_time, start_ms)) for s in spans)


def day_coverage(entries: Iterable[Entry], exact: Mapping[str, list[Span]], start_ms: int, end_ms: int
                 ) -> DayCoverage:
    """`entries` are the believed manifests of the partitions around the day (`days.hours_to_read`);
    `exact` holds the ids actually read from the data objects whose manifests cannot say (`inner_missing`)."""
    by_instance: dict[str, list[Span]] = {}
    everything: list[Span] = []
    in_day: list[Span] = []
    records = 0
    files: dict[str, int] = {}
    instance_records: dict[str, int] = {}
    for entry in entries:
        spans = _spans_of(entry, exact)
        everything += spans
        if reaches_into(entry.min_trade_time, entry.max_trade_time, start_ms, end_ms):
            in_day += spans
            by_instance.setdefault(entry.instance_id, []).extend(spans)
            records += entry.record_count
            files[entry.instance_id] = files.get(entry.instance_id, 0) + 1
            instance_records[entry.instance_id] = instance_records.get(entry.instance_id, 0) + entry.record_count
    instances = {}
    for instance, spans in by_instance.items():
        own = merge(spans)
        instances[instance] = InstanceCoverage(files[instance], instance_records[instance], own,
                                               _uptime(own, start_ms, end_ms))

    # Holes come from everything read, so that the files of the neighbouring days bracket the day's edges;
    # counts come from the files that reach into the day, so that ids and records are counted alike.
    merged = merge(everything)
    if not merged:
        holes = [Hole(None, None, None, None)]
    else:
        holes = [h for h in holes_between(merged) if _hole_in_day(h, start_ms, end_ms)]
        if merged[0].first_time >= start_ms:
            holes.insert(0, Hole(None, merged[0].first - 1, None, merged[0].first_time))
        if merged[-1].last_time < end_ms:
            holes.append(Hole(merged[-1].last + 1, None, merged[-1].last_time, None))
    union = merge(in_day)
    return DayCoverage(start_ms, end_ms, instances, union, holes, records, total(union))
