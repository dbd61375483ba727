"""Which copy of a trade the curated day keeps, and how well it is corroborated. No I/O.

Replicas name themselves (the instance id in a key is whatever the writer chose), so no single copy is believed
on its own word. A trade is certified when at least two distinct replicas hold identical bytes for it, or when
the exchange's own history (`historicalTrades`, or the operator's backfill fetched from it) confirms the copy.
Where copies disagree, the exchange decides; only when it cannot be asked does the majority of distinct replicas
decide, and the certificate says so. A tie, or a copy only one replica holds that nobody confirms, is written but
leaves the day uncertified. The exchange reports no event time, so `E` is the one field it cannot confirm.

`Exchange` asks a page function (`historicalTrades` in the shell) for the ids that need it, a page at a time, so
that a run of ids costs one call; an error stops the asking for the rest of the day and is reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import msgspec

from audit.backfill import event_line
from audit.binance_rest import PAGE_LIMIT, BackfillError
from collector.keys import BACKFILL_INSTANCE

# The certificate lists every disagreement up to this many (and counts them all), so that a writer who forges
# millions of trades cannot make the manifest, or the tool's memory, grow without bound.
DISAGREEMENTS_LISTED = 10_000


class Mode(StrEnum):
    """How much `compact --corroborate` asks the exchange."""

    NONE = "none"  # never: disputes go to the majority, single copies stay uncertified
    DISPUTED = "disputed"  # ids whose copies differ
    SINGLE = "single"  # those, and ids only one replica holds
    ALL = "all"  # every id (some 100 calls per million trades)


DEFAULT_MODE = Mode.SINGLE


class How(StrEnum):
    """What vouches for the line a curated day keeps for one id."""

    REPLICAS = "replicas"  # two or more distinct replicas hold it byte for byte
    REPLICA_AND_EXCHANGE = "replica_and_exchange"  # one replica, confirmed by the exchange
    EXCHANGE = "exchange"  # the exchange alone: the backfill, or the exchange overruling every replica
    MAJORITY = "majority"  # replicas disagreed and the exchange could not be asked: most distinct replicas
    UNCORROBORATED = "uncorroborated"  # one replica nobody confirms, or a tie


CERTIFIED = frozenset({How.REPLICAS, How.REPLICA_AND_EXCHANGE, How.EXCHANGE, How.MAJORITY})


class Copy(NamedTuple):
    """One source's line for an id."""

    instance_id: str
    key: str
    trade_time: int
    event_time: int
    line: bytes


class Missing(NamedTuple):
    """The exchange has no trade with this id."""


class Unasked(NamedTuple):
    """The exchange was not asked (the mode), or could not be (`reason`)."""

    reason: str | None = None


Answer = dict[str, Any] | Missing | Unasked  # a historicalTrades record, or why there is none


class Decision(NamedTuple):  # a tuple: made once per id, on the merge's hot path
    line: bytes | None  # None: the exchange refuted every copy, the id is left out
    trade_time: int
    event_time: int
    how: How | None
    resolution: str | None = None  # set when a copy lost: "exchange", "majority" or "unresolved"
    kept: tuple[str, ...] = ()  # when a copy lost: the replicas whose copy was kept
    lost: tuple[Copy, ...] = ()


def _agreed(copies: Sequence[Copy]) -> bool:
    """Identical bytes from two or more distinct replicas, and no backfill: the common case, nothing to decide."""
    first = copies[0]
    if first.instance_id == BACKFILL_INSTANCE:
        return False
    distinct = False
    for copy in copies:
        if copy.line != first.line or copy.instance_id == BACKFILL_INSTANCE:
            return False
        distinct = distinct or copy.instance_id != first.instance_id
    return distinct


def _versions(copies: Sequence[Copy]) -> dict[bytes, list[Copy]]:
    """Copies grouped by their bytes, in the order given (by source rank)."""
    versions: dict[bytes, list[Copy]] = {}
    for copy in copies:
        versions.setdefault(copy.line, []).append(copy)
    return versions


def _replicas(copies: Sequence[Copy]) -> int:
    return len({c.instance_id for c in copies})


def needs_exchange(copies: Sequence[Copy], mode: Mode) -> bool:
    """Whether `mode` asks the exchange about an id held by `copies` (a backfilled copy is its answer already)."""
    if mode is Mode.NONE or any(c.instance_id == BACKFILL_INSTANCE for c in copies):
        return False
    versions = _versions(copies)
    if mode is Mode.ALL or len(versions) > 1:
        return True
    return mode is Mode.SINGLE and _replicas(copies) < 2


def _fields(line: bytes) -> dict[str, Any]:
    """What the exchange can confirm of a line: everything but the event time."""
    doc = msgspec.json.decode(line)
    doc.pop("E", None)
    return doc


def decide(copies: Sequence[Copy], answer: Answer, symbol: str) -> Decision:
    """The line to keep for one id from `copies` (at least one, in source-rank order) and the exchange's answer."""
    backfilled = [c for c in copies if c.instance_id == BACKFILL_INSTANCE]
    replicas = [c for c in copies if c.instance_id != BACKFILL_INSTANCE]
    versions = _versions(replicas)
    word: tuple[bytes, int] | None = None  # the exchange's line and trade time
    if isinstance(answer, dict):
        word = event_line(symbol, answer), answer["time"]
    elif isinstance(answer, Missing):
        return Decision(None, 0, 0, None, "exchange", lost=tuple(copies))
    elif backfilled:
        word = backfilled[0].line, backfilled[0].trade_time

    if word is not None:
        truth = _fields(word[0])
        agreeing = [group for group in versions.values() if _fields(group[0].line) == truth]
        if agreeing:
            kept = max(agreeing, key=_replicas)  # the first of the best supported, by rank
            how = How.REPLICAS if _replicas(kept) >= 2 else How.REPLICA_AND_EXCHANGE
            chosen = kept[0]
            lost = tuple(c for c in copies if c.line != chosen.line and c.instance_id != BACKFILL_INSTANCE)
            return Decision(chosen.line, chosen.trade_time, chosen.event_time, how, "exchange" if lost else None,
                            _names(kept), lost)
        lost = tuple(c for c in copies if c.line != word[0])
        return Decision(word[0], word[1], word[1], How.EXCHANGE, "exchange" if lost else None, (), lost)

    ranked = sorted(versions.values(), key=_replicas, reverse=True)  # stable: rank breaks ties
    chosen = ranked[0][0]
    lost = tuple(c for group in ranked[1:] for c in group)
    if not lost:
        how = How.REPLICAS if _replicas(ranked[0]) >= 2 else How.UNCORROBORATED
        return Decision(chosen.line, chosen.trade_time, chosen.event_time, how, None, _names(ranked[0]))
    if _replicas(ranked[0]) > _replicas(ranked[1]):
        return Decision(chosen.line, chosen.trade_time, chosen.event_time, How.MAJORITY, "majority",
                        _names(ranked[0]), lost)
    return Decision(chosen.line, chosen.trade_time, chosen.event_time, How.UNCORROBORATED, "unresolved",
                    _names(ranked[0]), lost)


def _names(group: Sequence[Copy]) -> tuple[str, ...]:
    return tuple(sorted({c.instance_id for c in group}))


@dataclass
class Exchange:
    """The exchange's answers for single ids, from `page(from_id, limit)` a page at a time (ids are consecutive,
    so one page answers the next thousand ids). After the first error it answers `Unasked(reason)`."""

    page: Callable[[int, int], list[dict[str, Any]]] | None
    ids_asked: int = 0
    unreachable: str | None = None
    _first: int = 0
    _last: int = -1  # the ids a page covered, answered or not
    _records: dict[int, dict[str, Any]] = field(default_factory=dict)

    def answer(self, trade_id: int) -> Answer:
        if self.page is None:
            self.unreachable = "no exchange to ask"
        if self.unreachable is not None:
            return Unasked(self.unreachable)
        self.ids_asked += 1
        if not self._first <= trade_id <= self._last:
            try:
                records = self.page(trade_id, PAGE_LIMIT)
            except BackfillError as exc:
                self.unreachable = str(exc)
                return Unasked(self.unreachable)
            self._records = {r["id"]: r for r in records}
            # A short page reaches the end of the history: the ids after it do not exist (yet).
            self._first, self._last = trade_id, trade_id + PAGE_LIMIT - 1
        return self._records.get(trade_id, Missing())


Judge = Callable[[int, Sequence[Copy]], Decision]


def judge_with(mode: Mode, exchange: Exchange, symbol: str) -> Judge:
    """Decides each id, asking `exchange` where `mode` says to."""

    def judge(trade_id: int, copies: Sequence[Copy]) -> Decision:
        if mode is not Mode.ALL and _agreed(copies):  # what decide() would say, without its bookkeeping
            first = copies[0]
            return Decision(first.line, first.trade_time, first.event_time, How.REPLICAS)
        return decide(copies, exchange.answer(trade_id) if needs_exchange(copies, mode) else Unasked(), symbol)

    return judge


@dataclass
class Certificate:
    """What the curated manifest says about corroboration, accumulated id by id."""

    mode: Mode
    counts: Counter[str] = field(default_factory=Counter)  # of the day's lines, by How
    uncorroborated: list[list[int]] = field(default_factory=list)  # [first, last] runs of the day's ids
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    disagreements_total: int = 0
    overruled: Counter[str] = field(default_factory=Counter)  # instance → ids where its copy lost

    def count(self, trade_id: int, how: How) -> None:
        """One line of the day, kept as `how` vouches."""
        self.counts[how] += 1
        if how not in CERTIFIED:
            if self.uncorroborated and self.uncorroborated[-1][1] + 1 == trade_id:
                self.uncorroborated[-1][1] = trade_id
            else:
                self.uncorroborated.append([trade_id, trade_id])

    def dispute(self, trade_id: int, decision: Decision) -> None:
        """Record a decision in which some copy lost, naming the losers."""
        self.disagreements_total += 1
        for instance in {c.instance_id for c in decision.lost}:
            self.overruled[instance] += 1
        if len(self.disagreements) < DISAGREEMENTS_LISTED:
            dropped = _versions(decision.lost)
            self.disagreements.append({
                "trade_id": trade_id,
                "resolution": decision.resolution,
                "kept": None if decision.line is None else {
                    "instances": list(decision.kept), "exchange": decision.resolution == "exchange"},
                "dropped": [{"instances": sorted({c.instance_id for c in group}),
                             "keys": sorted({c.key for c in group})} for group in dropped.values()],
            })

    def as_json(self, uncorroborated: Sequence[tuple[int, int]], exchange: dict[str, Any]) -> dict[str, Any]:
        return {
            "mode": str(self.mode),
            "counts": {str(how): self.counts[how] for how in How},
            "uncorroborated": [{"first": first, "last": last} for first, last in uncorroborated],
            "disagreements_total": self.disagreements_total,
            "disagreements": self.disagreements,
            "overruled": dict(sorted(self.overruled.items())),
            "exchange": exchange,
        }
