"""The curated day as Parquet and its bars, on the simulator's ground truth: exact decimals, streaming row
groups, and bars equal to the klines the REST stub computes on its own (Binance's rule for empty seconds)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal, localcontext

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.bars import INTERVALS, as_klines, bars, coarser
from audit.binance_rest import HistoricalTrades
from audit.days import day_bounds_ms
from audit.parquet_day import NotExact, TradesParquet, trades_table
from sandbox.binance_rest import HistoryServer, klines
from sandbox.market import Market, MarketTrade

DAY = date(2026, 11, 28)
START, END = day_bounds_ms(DAY)
SYMBOL = "BTCUSDT"

# Any price or quantity as Binance spells it: 8 decimals, up to 12 integer digits.
units = st.integers(min_value=0, max_value=10**20 - 1)


def _text(n: int) -> str:
    return f"{n // 10**8}.{n % 10**8:08d}"


def _line(trade_id: int, price: str, qty: str, time: int, maker: bool) -> bytes:
    return MarketTrade(trade_id, price, qty, "0", time, maker).stream_line(SYMBOL) + b"\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(units, units, st.booleans()), min_size=1, max_size=50))
def test_every_price_and_quantity_round_trips_exactly_and_quote_is_their_exact_product(values) -> None:
    lines = b"".join(_line(i, _text(p), _text(q), START + i, m) for i, (p, q, m) in enumerate(values))
    if any(p * q >= 10**38 for p, q, _ in values):  # a value beyond 22 integer digits is refused, not rounded
        with pytest.raises(NotExact, match="quote quantity"):
            trades_table(lines)
        return
    rows = trades_table(lines).to_pylist()
    for (p, q, m), row in zip(values, rows, strict=True):
        assert row["price"] == Decimal(_text(p)) and f"{row['price']:f}" == _text(p)  # scale 8 kept
        assert row["quantity"] == Decimal(_text(q))
        with localcontext(prec=50):  # Decimal's default 28 digits would round the product
            assert row["quote_quantity"] == Decimal(_text(p)) * Decimal(_text(q))  # never a float on the way
        assert row["buyer_is_maker"] is m


@pytest.mark.parametrize("price", ["1.123456789", "1000000000000.00000000"])
def test_a_value_without_an_exact_decimal_stops_the_write_instead_of_rounding(price) -> None:
    with pytest.raises(NotExact):
        trades_table(_line(1, price, "1.00000000", START, True))


def test_the_day_is_written_a_row_group_at_a_time_and_reads_back_as_the_ground_truth(tmp_path) -> None:
    market = Market.generate(SYMBOL, start_ms=START, end_ms=START + 600_000, spacing_ms=200)
    path = tmp_path / "day.parquet"
    with TradesParquet(path, row_group_rows=1000, batch_rows=300) as table:
        for n, line in enumerate(market.day_lines(DAY)):
            table.add(line, "replicas" if n % 2 else "exchange")
    source = pq.ParquetFile(path)
    n = len(market.trades)
    assert source.metadata.num_rows == table.rows == n
    assert source.metadata.num_row_groups == table.row_groups == -(-n // 1000)
    assert source.metadata.row_group(0).column(0).compression == "ZSTD"
    rows = source.read().to_pylist()
    assert [(r["trade_id"], str(r["price"]), str(r["quantity"]), r["buyer_is_maker"]) for r in rows] == [
        (t.id, t.price, t.qty, t.is_buyer_maker) for t in market.trades]
    assert [r["corroboration"] for r in rows] == ["replicas" if n % 2 else "exchange" for n in range(n)]
    first = pa.scalar(rows[0]["trade_time"], pa.timestamp("ms")).cast(pa.int64()).as_py()
    assert first == market.trades[0].time  # Binance's millisecond, kept exactly


def _market_with_quiet_seconds() -> Market:
    """Busy seconds and seconds, minutes without a trade (trades every ~2.5 s on average, bursts too)."""
    return Market.generate(SYMBOL, start_ms=START - 30_000, end_ms=START + 2 * 3_600_000, spacing_ms=2_500, seed=11)


@pytest.mark.parametrize("interval", list(INTERVALS))
def test_bars_equal_the_klines_the_rest_stub_computes_on_its_own(interval) -> None:
    market = _market_with_quiet_seconds()
    table = trades_table(b"".join(t.stream_line(SYMBOL) + b"\n" for t in market.trades))
    ours = as_klines(bars([table.slice(0, 777), table.slice(777)], interval))
    theirs: list[list[object]] = []
    with HistoryServer({SYMBOL: market}) as rest:
        client = HistoricalTrades(rest.url)
        start = market.trades[0].time - 3_600_000
        while True:  # pages of 1000 from the last open time seen, as a cross-check walks a day
            page = client.klines(SYMBOL, interval, start, market.trades[-1].time)
            theirs += page
            if len(page) < 1000:
                break
            start = page[-1][0] + 1
    assert ours == theirs
    width = INTERVALS[interval][0]
    open_times = [row[0] for row in ours]
    seconds_with_trades = {t.time - t.time % width for t in market.trades}
    # Binance's spot rule: an interval without trades has no kline; every other one has exactly one.
    assert open_times == sorted(seconds_with_trades)
    if interval == "1s":
        assert open_times[-1] - open_times[0] + width > len(open_times) * width  # there were quiet seconds


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=2_500), units, st.integers(0, 10**12), st.booleans()),
                min_size=1, max_size=60),
       st.sampled_from(list(INTERVALS)))
def test_bars_equal_the_stubs_plain_loop_on_any_trades(steps, interval) -> None:
    """Gaps of 0 ms (several trades in one millisecond) to 2.5 s, any price, any quantity."""
    trades, time = [], START
    for n, (step, price, qty, maker) in enumerate(steps):
        time += step
        trades.append(MarketTrade(5_400_000_000 + n, _text(price), _text(qty), "0", time, maker))
    market = Market(SYMBOL, trades)
    table = trades_table(b"".join(t.stream_line(SYMBOL) + b"\n" for t in trades))
    assert as_klines(bars([table], interval)) == klines(market, INTERVALS[interval][0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), max_size=6), st.sampled_from(list(INTERVALS)))
def test_bars_do_not_depend_on_how_the_trades_are_cut_into_row_groups(cuts, interval) -> None:
    market = Market.generate(SYMBOL, start_ms=START, end_ms=START + 200_000, spacing_ms=300, seed=5)
    table = trades_table(b"".join(t.stream_line(SYMBOL) + b"\n" for t in market.trades))
    pieces, at = [], 0
    for size in cuts:
        pieces.append(table.slice(at, size))
        at += size
    pieces.append(table.slice(at))
    assert bars(pieces, interval).equals(bars([table], interval))


@pytest.mark.parametrize("interval", ["1m", "1h"])
def test_coarser_bars_from_1s_bars_equal_bars_from_the_trades(interval) -> None:
    table = trades_table(b"".join(t.stream_line(SYMBOL) + b"\n" for t in _market_with_quiet_seconds().trades))
    assert coarser(bars([table], "1s"), interval).equals(bars([table], interval))


def test_no_trades_no_bars() -> None:
    assert bars([], "1s").num_rows == 0
    assert coarser(bars([], "1s"), "1m").num_rows == 0
