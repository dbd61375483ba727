"""Corroboration, without any server: how one id's copies are decided, when the exchange is asked, and the
property that matters: honest replicas and one arbitrary writer never make a complete day that differs from the
exchange's history."""

from __future__ import annotations

import gzip
import hashlib
import io
from datetime import date

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from audit.backfill import event_line
from audit.binance_rest import PAGE_LIMIT, HistoryUnavailable
from audit.compact import merge_into
from audit.corroborate import (
    Certificate,
    Copy,
    Exchange,
    How,
    Missing,
    Mode,
    Unasked,
    decide,
    judge_with,
    needs_exchange,
)
from audit.days import day_bounds_ms
from audit.entries import Entry
from collector.keys import BACKFILL_INSTANCE
from sandbox.market import Market, MarketTrade

DAY = date(2026, 11, 28)
START, END = day_bounds_ms(DAY)
SYMBOL = "BTCUSDT"
FIRST = 1000


def _trade(trade_id: int, time: int) -> MarketTrade:
    return MarketTrade(trade_id, f"{43000 + trade_id}.50000000", "0.01000000", "430.00000000", time, trade_id % 2 == 0)


# Two trades before midnight, ten in the day, two after: ids FIRST..FIRST+13.
MARKET = Market(SYMBOL, [_trade(FIRST + i, t) for i, t in enumerate(
    [START - 20, START - 10, *(START + 1000 * k for k in range(10)), END, END + 10])])
TRUTH = {t.id: t.stream_line(SYMBOL) for t in MARKET.trades}
DAY_IDS = [t.id for t in MARKET.trades if START <= t.time < END]


def _copy(instance: str, trade_id: int, line: bytes | None = None) -> Copy:
    line = TRUTH[trade_id] if line is None else line
    doc = msgspec.json.decode(line)
    return Copy(instance, f"{instance}/x.jsonl.gz", doc["T"], doc["E"], line)


def _forged(trade_id: int, **fields: object) -> bytes:
    return msgspec.json.encode({**msgspec.json.decode(TRUTH[trade_id]), **fields})


def _record(trade_id: int) -> dict[str, object]:
    return MARKET.by_id(trade_id).rest_record()


# 1. decide


def test_two_replicas_holding_the_same_bytes_need_nobody_else():
    decision = decide([_copy("i-a", FIRST), _copy("i-b", FIRST)], Unasked(), SYMBOL)
    assert (decision.line, decision.how, decision.lost) == (TRUTH[FIRST], How.REPLICAS, ())


def test_one_replica_twice_is_still_one_replica():
    decision = decide([_copy("i-a", FIRST), _copy("i-a", FIRST)], Unasked(), SYMBOL)
    assert decision.how is How.UNCORROBORATED


def test_the_exchange_overrules_any_number_of_forged_replicas():
    forged = _forged(FIRST, p="1.00000000")
    copies = [_copy(f"i-{n}", FIRST, forged) for n in range(3)] + [_copy("i-honest", FIRST)]
    decision = decide(copies, _record(FIRST), SYMBOL)
    assert (decision.line, decision.how, decision.resolution) == (TRUTH[FIRST], How.REPLICA_AND_EXCHANGE, "exchange")
    assert decision.kept == ("i-honest",) and {c.instance_id for c in decision.lost} == {"i-0", "i-1", "i-2"}


def test_without_the_exchange_the_majority_decides_and_a_tie_certifies_nothing():
    forged = _forged(FIRST, q="9.00000000")
    majority = decide([_copy("i-a", FIRST), _copy("i-x", FIRST, forged), _copy("i-b", FIRST)], Unasked("down"),
                      SYMBOL)
    assert (majority.line, majority.how, majority.resolution) == (TRUTH[FIRST], How.MAJORITY, "majority")
    tie = decide([_copy("i-x", FIRST, forged), _copy("i-a", FIRST)], Unasked("down"), SYMBOL)
    assert (tie.line, tie.how, tie.resolution) == (forged, How.UNCORROBORATED, "unresolved")  # first by rank


def test_a_trade_the_exchange_does_not_have_is_left_out():
    decision = decide([_copy("i-x", FIRST + 99, _forged(FIRST, t=FIRST + 99))], Missing(), SYMBOL)
    assert decision.line is None and decision.resolution == "exchange"


def test_a_replica_copy_the_exchange_confirms_keeps_its_own_event_time():
    streamed = _forged(FIRST, E=START - 5)  # the stream's E; the exchange reports none
    decision = decide([_copy("i-a", FIRST, streamed)], _record(FIRST), SYMBOL)
    assert (decision.line, decision.how, decision.event_time) == (streamed, How.REPLICA_AND_EXCHANGE, START - 5)


def test_the_backfill_speaks_for_the_exchange_when_it_is_not_asked():
    backfilled = Copy(BACKFILL_INSTANCE, "backfill/x", MARKET.by_id(FIRST).time, MARKET.by_id(FIRST).time,
                      event_line(SYMBOL, _record(FIRST)))
    forged = _forged(FIRST, p="2.00000000")
    decision = decide([_copy("i-x", FIRST, forged), backfilled], Unasked(), SYMBOL)
    assert (decision.line, decision.how, decision.resolution) == (backfilled.line, How.EXCHANGE, "exchange")
    assert needs_exchange([_copy("i-x", FIRST, forged), backfilled], Mode.ALL) is False


@pytest.mark.parametrize(("mode", "agreed", "single", "disputed"), [
    (Mode.NONE, False, False, False),
    (Mode.DISPUTED, False, False, True),
    (Mode.SINGLE, False, True, True),
    (Mode.ALL, True, True, True),
])
def test_which_ids_each_mode_asks_the_exchange_about(mode, agreed, single, disputed):
    assert needs_exchange([_copy("i-a", FIRST), _copy("i-b", FIRST)], mode) is agreed
    assert needs_exchange([_copy("i-a", FIRST)], mode) is single
    assert needs_exchange([_copy("i-a", FIRST), _copy("i-b", FIRST, _forged(FIRST, m=False))], mode) is disputed


# 2. Exchange


def test_one_page_answers_a_thousand_ids_and_an_error_stops_the_asking():
    calls = []

    def page(from_id: int, limit: int) -> list[dict[str, object]]:
        calls.append((from_id, limit))
        if len(calls) == 2:
            raise HistoryUnavailable("no trade history after 5 attempts")
        return [t.rest_record() for t in MARKET.from_id(from_id, limit)]

    exchange = Exchange(page)
    assert exchange.answer(FIRST + 3) == _record(FIRST + 3)
    assert exchange.answer(FIRST + 5) == _record(FIRST + 5)
    assert exchange.answer(FIRST + 100) == Missing()  # inside the page, past the end of the history
    assert calls == [(FIRST + 3, PAGE_LIMIT)]
    assert exchange.answer(FIRST + 3 + PAGE_LIMIT) == Unasked("no trade history after 5 attempts")
    assert exchange.answer(FIRST) == Unasked("no trade history after 5 attempts") and len(calls) == 2
    assert exchange.unreachable == "no trade history after 5 attempts" and exchange.ids_asked == 4


# 3. the property


def _source(rank: int, instance: str, lines: list[bytes]) -> tuple[int, Entry, bytes]:
    """An object and a manifest that describes it truthfully: what any writer can put in the bucket."""
    raw = b"".join(line + b"\n" for line in lines)
    body = gzip.compress(raw, mtime=0)
    ids = [msgspec.json.decode(line)["t"] for line in lines]
    key = f"raw/{instance}/{rank}.jsonl.gz"
    return rank, Entry(key.replace(".jsonl.gz", ".manifest.json"), key, instance, len(lines), ids[0], ids[-1], 0, 0,
                       len(raw), len(body), hashlib.sha256(body).hexdigest(), "2026-11-29T00:00:01.000Z"), body


_MUTATIONS = {
    "price": lambda i: _forged(i, p="1.00000000"),
    "qty": lambda i: _forged(i, q="77.00000000"),
    "side": lambda i: _forged(i, m=i % 2 != 0),
    "event time": lambda i: _forged(i, E=1),
    "earlier": lambda i: _forged(i, T=START - 1),
    "later": lambda i: _forged(i, T=END),
    "inside": lambda i: _forged(i, T=START + 500),
}
ALL_IDS = range(FIRST - 2, FIRST + len(MARKET.trades) + 2)  # the writer may also invent ids the market lacks


def _writer_line(trade_id: int, mutation: str) -> bytes:
    if trade_id not in TRUTH:
        return msgspec.json.encode({**msgspec.json.decode(TRUTH[FIRST + 5]), "t": trade_id})
    return TRUTH[trade_id] if mutation == "none" else _MUTATIONS[mutation](trade_id)


def _unreachable(from_id: int, limit: int) -> list[dict[str, object]]:
    raise HistoryUnavailable("Binance unreachable")


def _history(from_id: int, limit: int) -> list[dict[str, object]]:
    return [t.rest_record() for t in MARKET.from_id(from_id, limit) if t.id >= from_id]


def _fields(line: bytes) -> dict[str, object]:
    doc = msgspec.json.decode(line)
    doc.pop("E")  # the one field the exchange does not report
    return doc


def _complete_day_is_the_exchange_s(honest: list[frozenset[int]], writers: dict[str, list[dict[int, str]]],
                                    mode: Mode, page: object) -> None:
    """Each honest replica writes the ids it holds; each writer (instance id → its objects) writes whatever it
    likes, with manifests to match. If the merge certifies a complete day, it is the exchange's."""
    # Writers rank first, where ties would favour them (an instance id such as "0" sorts first).
    sources = [(name, [_writer_line(i, m) for i, m in sorted(lines.items())])
               for name, objects in writers.items() for lines in objects if lines]
    sources += [(f"i-h{n}", [TRUTH[i] for i in sorted(ids)]) for n, ids in enumerate(honest) if ids]
    ranked = [_source(rank, instance, lines) for rank, (instance, lines) in enumerate(sources)]
    bodies = sorted(ranked, key=lambda s: s[1].first_trade_id)
    out = io.BytesIO()
    merged = merge_into(out, iter(bodies), SYMBOL, START, END, judge=judge_with(mode, Exchange(page), SYMBOL),
                        certificate=Certificate(mode))
    if not merged.holes() and not merged.uncorroborated():
        assert [_fields(line) for line in out.getvalue().splitlines()] == [_fields(TRUTH[i]) for i in DAY_IDS]


# Each honest replica misses a few ids (reconnects), so that complete days are common enough to test.
_missed = st.frozensets(st.sampled_from(sorted(TRUTH)), max_size=4)
_honest = st.lists(_missed.map(lambda missed: frozenset(TRUTH) - missed), min_size=1, max_size=3)
_writer_objects = st.lists(st.dictionaries(st.sampled_from(list(ALL_IDS)), st.sampled_from(["none", *_MUTATIONS])),
                           min_size=1, max_size=2)
ALL_HONEST = [frozenset(TRUTH)] * 3
NOBODY_HAS_THE_DAY_S_FIRST = [frozenset(TRUTH) - {DAY_IDS[0]}] * 3


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(honest=_honest, writer=_writer_objects, mode=st.sampled_from(list(Mode)),
       page=st.sampled_from([_history, _unreachable, None]))
# The writer claims the day's first trade, which every honest replica missed, was before midnight.
@example(honest=NOBODY_HAS_THE_DAY_S_FIRST, writer=[{DAY_IDS[0]: "earlier"}], mode=Mode.NONE, page=None)
# The writer fills a hole every honest replica has, twice: still one replica.
@example(honest=[frozenset(TRUTH) - {DAY_IDS[3]}] * 2, writer=[{DAY_IDS[3]: "price"}] * 2, mode=Mode.NONE, page=None)
def test_honest_replicas_and_one_arbitrary_writer_never_make_a_complete_day_unlike_the_exchange_s(
        honest, writer, mode, page):
    _complete_day_is_the_exchange_s(honest, {"i-x": writer}, mode, page)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(honest=_honest, writers=st.dictionaries(st.sampled_from(["i-x", "i-y", "i-z"]), _writer_objects, min_size=1))
# Outvoting the honest replicas, and filling their common hole with two agreeing forged copies.
@example(honest=ALL_HONEST, writers={name: [{i: "price" for i in DAY_IDS}] for name in ("i-x", "i-y", "i-z", "i-w")})
@example(honest=[frozenset(TRUTH) - {DAY_IDS[3]}] * 2, writers={name: [{DAY_IDS[3]: "qty"}] for name in ("i-x", "i-y")})
def test_a_writer_forging_several_instance_ids_cannot_either_when_every_id_goes_to_the_exchange(honest, writers):
    _complete_day_is_the_exchange_s(honest, writers, Mode.ALL, _history)
