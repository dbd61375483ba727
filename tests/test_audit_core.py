"""The audit's pure core, without any server: id ranges, a day's coverage, manifest and object checks, the
backfill's REST walks and file cutting, and the compaction's k-way merge."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import math
import tracemalloc
from datetime import date
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import backfill
from audit.binance_rest import PAGE_LIMIT
from audit.compact import choose_sources, merge_into
from audit.corroborate import Certificate, Exchange, How, Mode, judge_with
from audit.coverage import InstanceCoverage, day_coverage
from audit.days import day_bounds_ms
from audit.entries import MAX_OBJECT_BYTES, Entry, problems
from audit.objects import check_object
from audit.ranges import Hole, Span, holes_between, merge, total
from collector import manifest
from collector.config import ROTATE_BYTES
from collector.keys import BACKFILL_INSTANCE, BACKFILL_PREFIX, DATA_SUFFIX, MANIFEST_SUFFIX, Part
from collector.stats import FileStats
from sandbox.market import Market, MarketTrade

DAY = date(2026, 11, 28)
START, END = day_bounds_ms(DAY)
SYMBOL = "BTCUSDT"


def _time(trade_id):
    """The trade time of an id in the range tests: strictly increasing, and never equal to the id."""
    return 1_764_000_000_000 + 7 * trade_id


def _runs(ids):
    """One replica's ids as its spans: each run of consecutive ids is one span."""
    spans = []
    for i in sorted(ids):
        if spans and spans[-1].last + 1 == i:
            spans[-1] = spans[-1]._replace(last=i, last_time=_time(i))
        else:
            spans.append(Span(i, i, _time(i), _time(i)))
    return spans


# 1. merge / holes_between / total


@settings(max_examples=300, deadline=None)
@given(replicas=st.lists(st.frozensets(st.integers(0, 150), max_size=60), max_size=6), data=st.data())
def test_merge_holds_exactly_the_union_and_holes_are_exactly_the_ids_nobody_holds(replicas, data):
    spans = data.draw(st.permutations([span for ids in replicas for span in _runs(ids)]))
    union = set().union(*replicas)
    merged = merge(spans)

    held = {i for s in merged for i in range(s.first, s.last + 1)}
    assert held == union
    assert total(merged) == len(union)
    assert all(s.first <= s.last for s in merged)
    # Sorted, disjoint and not touching: two spans are always separated by at least one missing id.
    assert all(a.last + 1 < b.first for a, b in pairwise(merged))
    # The times at each end are those of the ids there, taken from the input spans that reach them.
    assert all((s.first_time, s.last_time) == (_time(s.first), _time(s.last)) for s in merged)

    holes = holes_between(merged)
    missing = set(range(min(union), max(union) + 1)) - union if union else set()
    assert {i for h in holes for i in range(h.first, h.last + 1)} == missing
    assert sum(h.ids for h in holes) == len(missing)
    assert all((h.after_time, h.before_time) == (_time(h.first - 1), _time(h.last + 1)) for h in holes)


def test_merge_joins_touching_spans_and_keeps_the_outer_times():
    merged = merge([Span(5, 9, 50, 90), Span(1, 4, 10, 40), Span(2, 3, 99, 99), Span(11, 12, 110, 120)])
    assert merged == [Span(1, 9, 10, 90), Span(11, 12, 110, 120)]
    assert holes_between(merged) == [Hole(10, 10, 90, 110)]
    assert merge([]) == [] and holes_between([]) == [] and total([]) == 0


# 2. day_coverage


def _entry(instance, first, last, first_time, last_time, *, records=None, key=None):
    data_key = key or f"raw/{instance}/{first}-{last}.jsonl.gz"
    return Entry(f"manifests/{instance}/{first}-{last}.manifest.json", data_key, instance,
                 last - first + 1 if records is None else records, first, last, first_time, last_time,
                 1000, 300, "0" * 64, "2026-11-29T00:00:01.000Z")


@pytest.mark.parametrize(("first_time", "last_time"), [(START + 10, END - 10), (START, END - 1)])
def test_a_day_with_nothing_known_before_or_after_has_open_holes_at_both_ends(first_time, last_time):
    cov = day_coverage([_entry("i-a", 100, 200, first_time, last_time)], {}, START, END)
    assert cov.union == [Span(100, 200, first_time, last_time)]
    assert cov.holes == [Hole(None, 99, None, first_time), Hole(201, None, last_time, None)]
    assert cov.holes[0].ids is None and not cov.complete


def test_a_day_bracketed_on_both_sides_is_complete():
    cov = day_coverage([_entry("i-a", 100, 200, START - 1, END)], {}, START, END)
    assert cov.holes == [] and cov.complete
    assert (cov.first_id, cov.last_id) == (100, 200)


@pytest.mark.parametrize(("next_time", "reported"), [(START - 1, False), (START, True)])
def test_a_hole_before_midnight_is_reported_only_when_its_ids_can_reach_into_the_day(next_time, reported):
    entries = [_entry("i-a", 1, 10, START - 1000, START - 900), _entry("i-a", 20, 300, next_time, END + 5)]
    cov = day_coverage(entries, {}, START, END)
    assert cov.holes == ([Hole(11, 19, START - 900, next_time)] if reported else [])
    assert cov.complete is not reported


def test_a_hole_straddling_midnight_is_reported():
    entries = [_entry("i-a", 1, 10, START - 1000, START - 1), _entry("i-b", 20, 300, START + 1, END + 5)]
    cov = day_coverage(entries, {}, START, END)
    assert cov.holes == [Hole(11, 19, START - 1, START + 1)]
    assert not cov.complete


@pytest.mark.parametrize(("previous_time", "reported"), [(END - 1, True), (END, False)])
def test_a_hole_after_the_day_is_reported_only_when_its_ids_can_reach_into_the_day(previous_time, reported):
    entries = [_entry("i-a", 1, 100, START - 5, previous_time), _entry("i-a", 110, 120, END + 10, END + 50)]
    cov = day_coverage(entries, {}, START, END)
    assert cov.holes == ([Hole(101, 109, previous_time, END + 10)] if reported else [])


def test_a_file_with_ids_missing_inside_it_is_counted_from_the_ids_it_actually_holds():
    gappy = _entry("i-a", 1, 100, START - 5, END + 5, records=90, key="raw/gappy.jsonl.gz")
    exact = {"raw/gappy.jsonl.gz": [Span(1, 40, START - 5, START + 1000), Span(51, 100, START + 2000, END + 5)]}
    cov = day_coverage([gappy], exact, START, END)
    assert cov.union == exact["raw/gappy.jsonl.gz"]
    assert cov.holes == [Hole(41, 50, START + 1000, START + 2000)]
    assert (cov.records, cov.unique_ids) == (90, 90)


def test_three_identical_replicas_hold_every_id_three_times():
    cov = day_coverage([_entry(i, 1, 500, START - 5, END + 5) for i in ("i-a", "i-b", "i-c")], {}, START, END)
    assert cov.duplicates_ratio == 3.0
    assert (cov.records, cov.unique_ids) == (1500, 500)
    assert set(cov.instances) == {"i-a", "i-b", "i-c"}
    assert all(c.ids == 500 for c in cov.instances.values())


def test_a_day_nobody_holds_anything_near_is_one_unbounded_hole_and_not_complete():
    cov = day_coverage([], {}, START, END)
    assert cov.holes == [Hole(None, None, None, None)]
    assert not cov.complete
    assert (cov.first_id, cov.last_id, cov.duplicates_ratio) == (None, None, 0.0)


def test_a_day_with_no_file_inside_keeps_what_the_neighbouring_days_say():
    before = _entry("i-a", 1, 10, START - 1000, START - 1)
    after = _entry("i-a", 30, 40, END, END + 1000)
    # Only the day before: the day is an open end after id 10, which the backfill can walk forward from.
    assert day_coverage([before], {}, START, END).holes == [Hole(11, None, START - 1, None)]
    # Both sides held: the hole between them is closed and known.
    assert day_coverage([before, after], {}, START, END).holes == [Hole(11, 29, START - 1, END)]
    # A day without a single trade, both sides held: complete.
    quiet = day_coverage([before, _entry("i-a", 11, 20, END, END + 1000)], {}, START, END)
    assert quiet.holes == [] and quiet.complete and quiet.union == []


def test_uptime_counts_only_the_part_of_each_run_inside_the_day():
    entries = [_entry("i-a", 1, 100, START - 60_000, START + 30_000),
               _entry("i-a", 200, 300, END - 20_000, END + 90_000),
               _entry("i-b", 1, 300, START - 60_000, END + 90_000)]
    cov = day_coverage(entries, {}, START, END)
    assert cov.instances["i-a"] == InstanceCoverage(2, 201, [Span(1, 100, START - 60_000, START + 30_000),
                                                             Span(200, 300, END - 20_000, END + 90_000)], 50_000)
    assert cov.instances["i-b"].uptime_ms == END - START


# 3. problems


def _manifest(instance="i-0abc", prefix=None):
    part = Part(SYMBOL, instance, START + 5 * 3_600_000 + 123)
    stats = FileStats(record_count=10, uncompressed_bytes=1500, min_event_time=START + 5 * 3_600_000 + 200,
                      max_event_time=START + 5 * 3_600_000 + 900, min_trade_time=START + 5 * 3_600_000 + 199,
                      max_trade_time=START + 5 * 3_600_000 + 899, first_trade_id=100, last_trade_id=109)
    extra = {} if prefix is None else {"prefix": prefix}
    doc = manifest.build(part=part, stats=stats, bucket="raw-bucket", compressed_bytes=400, sha256="a" * 64,
                         created_at_ms=START + 5 * 3_600_000 + 2000, **extra)
    key = part.manifest_key if prefix is None else part.key(prefix, MANIFEST_SUFFIX)
    return part, key, json.loads(manifest.encode(doc))


def test_a_manifest_the_collector_builds_is_believed():
    _, key, doc = _manifest()
    assert problems(key, doc, symbol=SYMBOL) == []


def _other_part_key(doc):
    doc["payload"]["key"] = Part(SYMBOL, "i-0abc", START + 5 * 3_600_000 + 124).data_key


@pytest.mark.parametrize(("spoil", "expected"), [
    (lambda d: d.pop("quality"), "schema: 'quality' is a required property"),
    (lambda d: d["payload"].update(key=d["payload"]["key"].replace(".jsonl.gz", ".json")), "at /payload/key"),
    (lambda d: d["payload"].update(key=d["payload"]["key"].replace("symbol=", "sym=")), "at /payload/key"),
    (_other_part_key, "does not match the manifest's own key"),
    (lambda d: d["source"].update(symbol="ETHUSDT"), "symbol ETHUSDT where BTCUSDT was listed"),
    (lambda d: d["source"].update(instance_id="i-other"), "instance i-other is not the one in the key"),
    (lambda d: d["payload"].update(record_count=11), "11 records cannot fit ids 100..109"),
    (lambda d: d["payload"].update(first_trade_id=110), "out of order"),
], ids=["missing field", "wrong suffix", "wrong key pattern", "other key", "symbol", "instance", "count", "order"])
def test_a_manifest_that_cannot_be_believed_says_why(spoil, expected):
    _, key, doc = _manifest()
    spoil(doc)
    found = problems(key, doc, symbol=SYMBOL)
    assert len(found) == 1 and expected in found[0], found


def test_a_manifest_listed_under_another_symbol_is_not_believed():
    _, key, doc = _manifest()
    assert problems(key, doc, symbol="ETHUSDT") == ["symbol BTCUSDT where ETHUSDT was listed"]


def test_a_document_that_is_not_an_object_is_not_believed():
    _, key, _ = _manifest()
    assert [p.startswith("schema:") for p in problems(key, [1, 2], symbol=SYMBOL)] == [True]


def test_a_manifest_naming_a_prefix_of_the_key_s_instance_is_not_believed():
    _, key, doc = _manifest(instance="i-a-b")
    doc["source"]["instance_id"] = "i-a"
    assert problems(key, doc, symbol=SYMBOL) == ["instance i-a is not the one in the key"]


def test_a_backfill_manifest_beside_its_data_under_backfill_is_believed():
    part, key, doc = _manifest(instance=BACKFILL_INSTANCE, prefix=BACKFILL_PREFIX)
    assert key.startswith(BACKFILL_PREFIX) and key.endswith(MANIFEST_SUFFIX)
    assert doc["payload"]["key"] == part.key(BACKFILL_PREFIX, DATA_SUFFIX)
    assert problems(key, doc, symbol=SYMBOL) == []


def test_a_manifest_under_one_prefix_describing_data_under_the_other_is_not_believed():
    _, backfill_key, backfill_doc = _manifest(instance=BACKFILL_INSTANCE, prefix=BACKFILL_PREFIX)
    _, raw_key, raw_doc = _manifest(instance=BACKFILL_INSTANCE)
    assert "at /payload/key" in problems(backfill_key, raw_doc, symbol=SYMBOL)[0]
    assert "at /payload/key" in problems(raw_key, backfill_doc, symbol=SYMBOL)[0]


# 4. check_object


def _trade(trade_id, trade_time):
    return MarketTrade(trade_id, "43123.45000000", "0.01234000", "532.14537300", trade_time, trade_id % 3 == 0)


def _lines(ids, base=START):
    return [_trade(i, base + 10 * (i - ids[0])).stream_line(SYMBOL) for i in ids]


def _object(lines, **changes):
    """A data object of `lines` and the manifest entry that describes its trade lines."""
    raw = b"".join(line + b"\n" for line in lines)
    body = gzip.compress(raw, mtime=0)
    events = [json.loads(line) for line in lines if line.startswith(b'{"e":"trade"')]
    ids, times = [e["t"] for e in events], [e["T"] for e in events]
    fields = {"record_count": len(lines), "first_trade_id": ids[0], "last_trade_id": ids[-1],
              "min_trade_time": min(times), "max_trade_time": max(times), "uncompressed_bytes": len(raw),
              "compressed_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), **changes}
    entry = Entry("manifests/x.manifest.json", "raw/x.jsonl.gz", "i-a", fields["record_count"],
                  fields["first_trade_id"], fields["last_trade_id"], fields["min_trade_time"],
                  fields["max_trade_time"], fields["uncompressed_bytes"], fields["compressed_bytes"],
                  fields["sha256"], "2026-11-28T00:00:01.000Z")
    return entry, body


def test_a_good_object_passes_and_says_exactly_which_ids_it_holds():
    lines = _lines([100, 101, 102, 103, 107, 108])
    entry, body = _object(lines)
    checked = check_object(entry, body, SYMBOL)
    assert checked.problems == []
    assert checked.lines == lines
    assert checked.spans == [Span(100, 103, START, START + 30), Span(107, 108, START + 70, START + 80)]


def test_a_flipped_byte_is_a_sha256_problem_not_an_exception():
    entry, body = _object(_lines(list(range(100, 200))))
    damaged = bytearray(body)
    damaged[len(damaged) // 2] ^= 0xFF
    found = check_object(entry, bytes(damaged), SYMBOL).problems
    assert found[0] == "sha256 differs from the manifest"


def test_a_wrong_record_count_is_a_problem():
    entry, body = _object(_lines([100, 101, 102]), record_count=4)
    assert check_object(entry, body, SYMBOL).problems == ["3 lines, manifest says 4"]


@pytest.mark.parametrize(("ids", "expected"), [([100, 102, 101], "line 3: trade id 101 after 102"),
                                               ([100, 101, 101], "line 3: trade id 101 after 101")])
def test_ids_out_of_order_are_a_problem(ids, expected):
    entry, body = _object(_lines(ids))
    assert expected in check_object(entry, body, SYMBOL).problems


def test_ids_other_than_the_manifest_s_are_a_problem():
    entry, body = _object(_lines([100, 101, 102]), first_trade_id=99)
    assert check_object(entry, body, SYMBOL).problems == ["ids 100..102, manifest says 99..102"]


@pytest.mark.parametrize("make", [lambda body, raw: raw, lambda body, raw: body[:-12]],
                         ids=["plain JSONL", "truncated gzip"])
def test_a_body_that_is_not_gzip_is_a_problem_not_an_exception(make):
    lines = _lines([100, 101, 102])
    entry, body = _object(lines)
    found = check_object(entry, make(body, b"".join(line + b"\n" for line in lines)), SYMBOL).problems
    assert any(p.startswith("not a readable gzip stream") for p in found), found


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"t": 101}',
                                  _lines([101])[0].replace(SYMBOL.encode(), b"OTHERUSDT"),
                                  b'{"x":"\xff",' + _lines([101])[0][1:]])  # not UTF-8
def test_a_line_that_is_not_a_trade_event_is_a_problem(line):
    entry, body = _object([*_lines([100]), line])
    assert "line 2 is not a trade event" in check_object(entry, body, SYMBOL).problems


def test_a_line_whose_trade_id_is_not_a_number_is_a_problem_not_an_exception():
    entry, body = _object([*_lines([100]), b'{"t": "101", "T": 5}'])
    assert "line 2 is not a trade event" in check_object(entry, body, SYMBOL).problems


def test_a_gzip_bomb_is_inflated_no_further_than_its_manifest_says_in_bounded_memory():
    stream = io.BytesIO()
    with gzip.GzipFile(fileobj=stream, mode="wb", compresslevel=1, mtime=0) as bomb:
        for _ in range(256):
            bomb.write(bytes(1 << 20))  # 256 MiB of zeros in some 250 KB
    entry, _ = _object(_lines([100, 101, 102]))
    entry = dataclasses.replace(entry, compressed_bytes=len(stream.getvalue()),
                                sha256=hashlib.sha256(stream.getvalue()).hexdigest())
    tracemalloc.start()
    try:
        found = check_object(entry, stream.getvalue(), SYMBOL).problems
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == [f"more than {entry.uncompressed_bytes} bytes uncompressed, manifest says "
                     f"{entry.uncompressed_bytes}"]
    assert peak < 4 << 20  # a chunk of inflated bytes, not the bomb


def test_a_manifest_describing_an_object_over_the_audit_s_cap_is_not_believed():
    _, key, doc = _manifest()
    doc["payload"]["uncompressed_bytes"] = MAX_OBJECT_BYTES + 1
    assert problems(key, doc, symbol=SYMBOL) == [f"describes an object over the audit's {MAX_OBJECT_BYTES}-byte cap"]


# 5. backfill


class _History:
    """`historicalTrades` of a market, as the backfill's `page(from_id, limit)` callable; records its calls."""

    def __init__(self, market):
        self.market = market
        self.calls = []

    def __call__(self, from_id, limit):
        self.calls.append((from_id, limit))
        return [t.rest_record() for t in self.market.from_id(from_id, limit)]


def _records(market, first, last):
    return [t.rest_record() for t in market.trades if first <= t.id <= last]


def test_a_rest_record_makes_the_stream_s_line_byte_for_byte():
    market = Market.generate(SYMBOL, start_ms=START, end_ms=START + 600_000, spacing_ms=1000, seed=11)
    assert {t.is_buyer_maker for t in market.trades} == {True, False}
    for trade in market.trades:
        assert backfill.event_line(SYMBOL, trade.rest_record()) == trade.stream_line(SYMBOL)


def test_a_closed_hole_is_fetched_in_pages_of_at_most_1000_ending_at_its_last_id():
    market = Market.generate(SYMBOL, start_ms=START, end_ms=START + 3_000_000, spacing_ms=1000)
    first, last = market.trades[10].id, market.trades[10].id + 2499
    history = _History(market)
    assert list(backfill.closed(history, first, last)) == _records(market, first, last)
    assert history.calls == [(first, 1000), (first + 1000, 1000), (first + 2000, 500)]


def test_a_closed_hole_past_the_end_of_history_stops():
    market = Market.generate(SYMBOL, start_ms=START, end_ms=START + 100_000, spacing_ms=1000)
    first, end = market.trades[-5].id, market.trades[-1].id
    history = _History(market)
    assert list(backfill.closed(history, first, end + 3000)) == _records(market, first, end)
    assert all(limit <= PAGE_LIMIT for _, limit in history.calls) and len(history.calls) == 2


def test_the_last_trade_before_midnight_is_found_in_a_few_one_trade_probes():
    # A whole day of open start: ~86,000 trades; walking it back page by page would take 87 calls.
    market = Market.generate(SYMBOL, start_ms=START - 1_200_000, end_ms=END, spacing_ms=1000)
    bracket = max(t.id for t in market.trades if t.time < START)
    below = market.trades[-1].id
    history = _History(market)
    assert backfill.last_before(history, below, START) == bracket
    assert all(limit == 1 for _, limit in history.calls)
    assert len(history.calls) <= 2 * math.ceil(math.log2((below - bracket) / PAGE_LIMIT + 1)) + 12


@pytest.mark.parametrize("offset", [1, 2, 999, 1000, 1001, 5000])
def test_the_search_finds_the_bracket_wherever_it_is(offset):
    market = Market.generate(SYMBOL, start_ms=START - 100_000, end_ms=START + 10_000_000, spacing_ms=1000)
    bracket = max(t.id for t in market.trades if t.time < START)
    assert backfill.last_before(_History(market), bracket + offset, START) == bracket


def test_a_history_that_starts_inside_the_day_has_no_bracket():
    market = Market.generate(SYMBOL, start_ms=START + 1000, end_ms=START + 1_500_000, spacing_ms=1000, first_id=0)
    assert backfill.last_before(_History(market), market.trades[-1].id, START) is None


def test_an_open_end_is_fetched_up_to_the_first_trade_at_or_after_midnight():
    market = Market.generate(SYMBOL, start_ms=END - 2_500_000, end_ms=END + 1_200_000, spacing_ms=1000)
    first = market.trades[0].id
    closing = min(t.id for t in market.trades if t.time >= END)
    history = _History(market)
    assert list(backfill.until(history, first, END)) == _records(market, first, closing)
    assert history.calls[0] == (first, PAGE_LIMIT)
    assert len(history.calls) == math.ceil((closing - first + 1) / PAGE_LIMIT) >= 3


def test_fetching_forward_stops_at_a_trade_exactly_at_midnight():
    trades = [_trade(i, END - 3 + i) for i in range(5)]  # times END-3 .. END+1
    history = _History(Market(SYMBOL, trades))
    assert list(backfill.until(history, 0, END)) == [t.rest_record() for t in trades[:4]]


def test_fetching_forward_stops_on_a_short_page():
    market = Market.generate(SYMBOL, start_ms=END - 2_500_000, end_ms=END - 1000, spacing_ms=1000)
    assert len(market.trades) % PAGE_LIMIT  # so the last page is short, not empty
    history = _History(market)
    assert list(backfill.until(history, market.trades[0].id, END)) == _records(
        market, market.trades[0].id, market.trades[-1].id)
    assert len(history.calls) == math.ceil(len(market.trades) / PAGE_LIMIT)


def test_backfill_files_are_cut_by_size_and_never_named_before_the_day_s_last_millisecond():
    # 40 000 trades of ~150 bytes: about three files' worth, the first two of them wholly before midnight.
    market = Market.generate(SYMBOL, start_ms=START - 3_200_000, end_ms=START + 800_000, spacing_ms=100)
    records = [t.rest_record() for t in market.trades]
    files = list(backfill.files_of(SYMBOL, records, START))

    assert b"".join(body for _, body in files) == b"".join(t.stream_line(SYMBOL) + b"\n" for t in market.trades)
    assert len(files) >= 3
    assert all(len(body) <= ROTATE_BYTES for _, body in files)
    assert all(len(body) > ROTATE_BYTES - 1000 for _, body in files[:-1])  # cut by size, not earlier
    assert files[0][0].part.opened_at_ms == START - 1
    assert all(spool.part.opened_at_ms >= START - 1 for spool, _ in files)
    assert {spool.part.instance_id for spool, _ in files} == {BACKFILL_INSTANCE}
    assert [spool.stats.record_count for spool, _ in files] == [body.count(b"\n") for _, body in files]
    assert files[0][0].part.key(BACKFILL_PREFIX, DATA_SUFFIX).split("/")[4:6] == ["date=2026-11-27", "hour=23"]


def test_backfill_files_are_not_cut_by_time():
    market = Market.generate(SYMBOL, start_ms=START, end_ms=START + 6 * 3_600_000, spacing_ms=600_000)
    files = list(backfill.files_of(SYMBOL, [t.rest_record() for t in market.trades], START))
    assert len(files) == 1
    assert files[0][0].part.opened_at_ms == market.trades[0].time
    assert files[0][0].stats.record_count == len(market.trades)


# 6. merge_into


def _line(trade_id, trade_time):
    return _trade(trade_id, trade_time).stream_line(SYMBOL)


def _source(rank, key, lines, *, first=None):
    """(rank, entry, body) as the merge takes them; `first` lets the manifest claim another first id."""
    raw = b"".join(line + b"\n" for line in lines)
    body = gzip.compress(raw, mtime=0)
    first = json.loads(lines[0])["t"] if first is None else first
    last = json.loads(lines[-1])["t"]
    entry = Entry(key.replace(".jsonl.gz", ".manifest.json"), key, key.split("/")[0], len(lines), first, last,
                  0, 0, len(raw), len(body), hashlib.sha256(body).hexdigest(), "2026-11-29T00:00:01.000Z")
    return rank, entry, body


def _merge(*sources, mode=Mode.NONE, page=None):
    out = io.BytesIO()
    judge = judge_with(mode, Exchange(page), SYMBOL)
    merged = merge_into(out, iter(sources), SYMBOL, START, END, judge=judge, certificate=Certificate(mode))
    return merged, out.getvalue().splitlines()


def _other_e(line):
    return line.replace(b'"E":', b'"E":1', 1)


@pytest.mark.parametrize(("rank_x", "rank_y"), [(0, 1), (1, 0)])
def test_two_replicas_that_disagree_without_the_exchange_tie_and_certify_nothing_there(rank_x, rank_y):
    truth = {i: _line(i, START + 1000 * i) for i in range(100, 115)}
    x = _source(rank_x, "i-x/a.jsonl.gz", [truth[i] for i in range(100, 110)])
    y_lines = [_other_e(truth[i]) if i in (105, 107) else truth[i] for i in range(105, 115)]
    y = _source(rank_y, "i-y/b.jsonl.gz", y_lines)
    merged, lines = _merge(x, y)

    # The first source by rank is written for a tie; the ids only one replica holds are not certified either.
    winner, loser = ("i-x", "i-y") if rank_x < rank_y else ("i-y", "i-x")
    expected = [_other_e(truth[i]) if i in (105, 107) and winner == "i-y" else truth[i] for i in range(100, 115)]
    assert lines == expected
    assert (merged.records, merged.first.trade_id, merged.last.trade_id) == (15, 100, 114)
    assert merged.duplicates_dropped == 5
    certificate = merged.certificate
    assert [(d["trade_id"], d["resolution"], d["kept"]["instances"], d["dropped"][0]["instances"])
            for d in certificate.disagreements] == [(i, "unresolved", [winner], [loser]) for i in (105, 107)]
    assert certificate.counts == {How.REPLICAS: 3, How.UNCORROBORATED: 12}
    assert merged.uncorroborated() == [(100, 105), (107, 107), (110, 114)]


def test_the_exchange_decides_between_replicas_and_names_the_loser():
    market = Market(SYMBOL, [_trade(i, START + 1000 * i) for i in range(100, 115)])
    truth = [t.stream_line(SYMBOL) for t in market.trades]
    forged = [line.replace(b'"p":"43123.45000000"', b'"p":"1.00000000"') if i in (3, 4) else line
              for i, line in enumerate(truth)]
    history = _History(market)
    merged, lines = _merge(_source(0, "i-0/forged.jsonl.gz", forged), _source(1, "i-a/a.jsonl.gz", truth),
                           mode=Mode.DISPUTED, page=history)
    assert lines == truth
    assert history.calls == [(103, PAGE_LIMIT)]  # one page answers both disputed ids
    assert merged.certificate.overruled == {"i-0": 2}
    assert merged.certificate.counts == {How.REPLICAS: 13, How.REPLICA_AND_EXCHANGE: 2}
    assert merged.uncorroborated() == []


def test_an_id_jump_inside_the_day_is_a_gap():
    merged, lines = _merge(
        _source(0, "i-a/1.jsonl.gz", [_line(i, START + 10 * i) for i in (100, 101, 102, 110, 111)]),
        _source(1, "i-b/1.jsonl.gz", [_line(i, START + 10 * i) for i in (111, 112, 120)]),
    )
    assert [json.loads(line)["t"] for line in lines] == [100, 101, 102, 110, 111, 112, 120]
    assert merged.gaps == [Hole(103, 109, START + 1020, START + 1100), Hole(113, 119, START + 1120, START + 1200)]


def test_lines_outside_the_day_are_not_written_and_bracket_the_day_when_adjacent():
    before = [_line(98, START - 20), _line(99, START - 1)]
    day = [_line(100, START), _line(101, START + 50), _line(102, END - 1)]
    after = [_line(103, END), _line(104, END + 20)]
    # The bracketing trades come from other sources than the day's.
    merged, lines = _merge(_source(2, "i-b/0.jsonl.gz", before), _source(0, "i-a/1.jsonl.gz", day),
                           _source(1, "i-c/2.jsonl.gz", after))
    assert lines == day
    assert merged.holes() == []
    assert (merged.min_trade_time, merged.max_trade_time) == (START, END - 1)
    assert merged.uncompressed_bytes == sum(len(line) + 1 for line in day)
    # One replica each, and no exchange asked: neither the day nor the lines that close it are certified.
    assert merged.uncorroborated() == [(99, 103)]


@pytest.mark.parametrize(("sources", "holes"), [
    ([[_line(98, START - 1), _line(100, START), _line(101, END - 1), _line(103, END)]],
     [Hole(99, 99, START - 1, START), Hole(102, 102, END - 1, END)]),  # the neighbours' ids are known
    ([[_line(100, START), _line(101, END - 1)]],
     [Hole(None, 99, None, START), Hole(102, None, END - 1, None)]),  # nothing outside the day: open edges
], ids=["neighbours missing", "nothing outside"])
def test_an_edge_of_the_day_is_a_hole_unless_the_neighbouring_id_is_held(sources, holes):
    merged, lines = _merge(*(_source(rank, f"i-{rank}/x.jsonl.gz", s) for rank, s in enumerate(sources)))
    assert [json.loads(line)["t"] for line in lines] == [100, 101]
    assert merged.holes() == holes


def test_a_day_without_trades_is_complete_when_both_sides_are_held():
    merged, lines = _merge(_source(0, "i-a/x.jsonl.gz", [_line(99, START - 1), _line(100, END)]))
    assert lines == [] and merged.holes() == []
    merged, _ = _merge(_source(0, "i-a/x.jsonl.gz", [_line(99, START - 1), _line(105, END)]))
    assert merged.holes() == [Hole(100, 104, START - 1, END)]


def _flipped(source):
    rank, entry, body = source
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0xFF
    return rank, entry, bytes(flipped)


def _resealed(source, lines):
    """The source's manifest, rewritten by its writer to describe `lines`: sha256 and sizes match them."""
    rank, entry, _ = source
    _, honest, body = _source(rank, entry.data_key, lines)
    return rank, dataclasses.replace(entry, compressed_bytes=honest.compressed_bytes, sha256=honest.sha256,
                                uncompressed_bytes=honest.uncompressed_bytes, record_count=len(lines)), body


@pytest.mark.parametrize(("damage", "reason"), [
    (_flipped, "sha256 differs from the manifest"),
    (lambda s: _source(1, "i-b/y.jsonl.gz", [_line(i, START + i) for i in range(103, 110)], first=100),
     "ids 103..109, manifest says 100..109"),  # the body starts later than its manifest says
    (lambda s: _resealed(s, [_line(100, START + 100), _line(101, START + 101).replace(b"BTC", b"ETH"),
                             *[_line(i, START + i) for i in range(102, 110)]]), "line 2 is not a trade event"),
    (lambda s: _resealed(s, [_line(i, START + i) for i in (100, 102, 101, *range(103, 110))]),
     "line 3: trade id 101 after 102"),
    (lambda s: (s[0], dataclasses.replace(s[1], uncompressed_bytes=s[1].uncompressed_bytes - 1), s[2]),
     "bytes uncompressed, manifest says"),  # larger than its manifest says: inflated no further
], ids=["flipped byte", "wrong first id", "not a trade", "goes back", "larger than said"])
def test_a_damaged_object_is_left_out_named_and_the_other_replicas_stand_in(damage, reason):
    truth = [_line(i, START + i) for i in range(100, 110)]
    bad = damage(_source(1, "i-b/y.jsonl.gz", truth))
    merged, lines = _merge(_source(0, "i-a/x.jsonl.gz", truth), bad, _source(2, "i-c/z.jsonl.gz", truth))
    assert lines == truth
    assert list(merged.quarantined) == ["i-b/y.jsonl.gz"]
    assert reason in merged.quarantined["i-b/y.jsonl.gz"]
    assert merged.certificate.counts == {How.REPLICAS: 10}  # two replicas still hold every id


def test_compact_reads_every_instance_s_nearest_object_on_each_side_of_the_day():
    inside = [_entry("i-a", 100, 200, START, END - 1), _entry("i-b", 100, 200, START, END - 1)]
    before = [_entry("i-a", 1, 49, START - 9000, START - 5000), _entry("i-a", 50, 99, START - 4000, START - 1),
              _entry("i-b", 60, 98, START - 3000, START - 2)]
    after = [_entry("i-a", 201, 250, END, END + 4000), _entry("i-a", 251, 300, END + 5000, END + 9000),
             _entry("i-b", 202, 260, END + 1, END + 3000)]
    chosen = choose_sources([*before, *inside, *after], START, END)
    # One damaged neighbour must not hide the other side of midnight: each instance's nearest is read.
    assert sorted((e.instance_id, e.first_trade_id) for e in chosen) == [
        ("i-a", 50), ("i-a", 100), ("i-a", 201), ("i-b", 60), ("i-b", 100), ("i-b", 202)]
