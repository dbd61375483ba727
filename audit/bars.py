"""Bars (klines) from trades, as Binance defines its spot klines. No I/O.

A bar covers [open_time, open_time + interval) of trade time, UTC; its fields are exactly those of
`GET /api/v3/klines`: open (the first trade by id), high, low, close (the last trade by id), volume (base),
close time (open time + interval - 1 ms), quote asset volume, number of trades, taker buy base and quote
volume (trades whose buyer is not the maker: the buyer took the liquidity). An interval without trades has
no bar, as in Binance's spot klines: a gap in open times is time without trades.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from audit.parquet_day import PRICE, QUOTE, TIME

# Binance's names for the intervals offered, and their width; the unit is what Arrow floors timestamps to.
INTERVALS: dict[str, tuple[int, str]] = {"1s": (1_000, "second"), "1m": (60_000, "minute"), "1h": (3_600_000, "hour")}
VOLUME = pa.decimal128(38, PRICE.scale)
BARS_SCHEMA = pa.schema([
    ("open_time", TIME),
    ("open", PRICE),
    ("high", PRICE),
    ("low", PRICE),
    ("close", PRICE),
    ("volume", VOLUME),
    ("close_time", TIME),
    ("quote_asset_volume", QUOTE),
    ("number_of_trades", pa.int64()),
    ("taker_buy_base_asset_volume", VOLUME),
    ("taker_buy_quote_asset_volume", QUOTE),
])
_SUMS = ("volume", "quote_asset_volume", "number_of_trades", "taker_buy_base_asset_volume",
         "taker_buy_quote_asset_volume")
# Binance prints kline decimals with 8 places.
KLINE_PLACES = Decimal(1).scaleb(-8)


def bars(trades: Iterable[pa.Table], interval: str) -> pa.Table:
    """The `interval` bars (BARS_SCHEMA, by open time) of `trades`: tables with trade_id, price, quantity,
    quote_quantity, trade_time and buyer_is_maker, each in trade-id order and following the previous one
    (a Parquet file's row groups). Memory grows with the bars, not with the trades."""
    unit = INTERVALS[interval][1]
    return _finish([_combine(_as_bars(t, unit)) for t in trades if t.num_rows], interval)


def coarser(finer: pa.Table, interval: str) -> pa.Table:
    """The `interval` bars of the trades whose finer bars (by open time) are `finer`, e.g. 1 m from 1 s: the
    same as `bars` of those trades (trade time does not go back as ids go up), from 86,400 rows, not millions."""
    parts = finer.drop_columns(["close_time"])
    parts = parts.set_column(0, "open_time", pc.floor_temporal(parts["open_time"], 1, INTERVALS[interval][1]))
    return _finish([parts], interval)


def _finish(partial: list[pa.Table], interval: str) -> pa.Table:
    if not partial:
        return BARS_SCHEMA.empty_table()
    # A bar cut by a table boundary is combined like trades are: open of the first, close of the last part.
    merged = _combine(pa.concat_tables(partial)).sort_by("open_time")
    close_time = pc.cast(pc.add(pc.cast(merged["open_time"], pa.int64()), INTERVALS[interval][0] - 1), TIME)
    return pa.table({**{n: merged[n] for n in BARS_SCHEMA.names if n != "close_time"}, "close_time": close_time}
                    ).select(BARS_SCHEMA.names).cast(BARS_SCHEMA)


def _as_bars(trades: pa.Table, unit: str) -> pa.Table:
    """Each trade as a bar of its own (without close time)."""
    price = trades["price"]
    quantity = pc.cast(trades["quantity"], VOLUME)
    quote = trades["quote_quantity"]
    taker_buys = pc.invert(trades["buyer_is_maker"])
    return pa.table({
        "open_time": pc.floor_temporal(trades["trade_time"], 1, unit),
        "open": price, "high": price, "low": price, "close": price,
        "volume": quantity, "quote_asset_volume": quote,
        "number_of_trades": pa.repeat(pa.scalar(1, pa.int64()), trades.num_rows),
        "taker_buy_base_asset_volume": pc.if_else(taker_buys, quantity, pa.scalar(Decimal(0), VOLUME)),
        "taker_buy_quote_asset_volume": pc.if_else(taker_buys, quote, pa.scalar(Decimal(0), QUOTE)),
    })


def _combine(parts: pa.Table) -> pa.Table:
    """Bars in order (by trade id) merged per open time: open of the first, close of the last, extremes, sums."""
    parts = parts.append_column("row", pa.array(range(parts.num_rows), pa.int64()))
    grouped = parts.group_by("open_time", use_threads=False).aggregate(
        [("row", "min"), ("row", "max"), ("high", "max"), ("low", "min"), *((name, "sum") for name in _SUMS)])
    return pa.table({
        "open_time": grouped["open_time"],
        "open": pc.take(parts["open"], grouped["row_min"]),
        "high": grouped["high_max"],
        "low": grouped["low_min"],
        "close": pc.take(parts["close"], grouped["row_max"]),
        **{name: pc.cast(grouped[f"{name}_sum"], BARS_SCHEMA.field(name).type) for name in _SUMS},
    })


def as_klines(table: pa.Table) -> list[list[Any]]:
    """Bars as `GET /api/v3/klines` spells them: times in ms, decimals as strings with 8 places (quote volumes
    rounded half to even there; the table keeps them exact), and Binance's unused last field."""

    def text(value: Decimal) -> str:
        return f"{value.quantize(KLINE_PLACES, rounding=ROUND_HALF_EVEN):f}"

    rows = []
    for bar in table.to_pylist():
        rows.append([_ms(bar["open_time"]), text(bar["open"]), text(bar["high"]), text(bar["low"]),
                     text(bar["close"]), text(bar["volume"]), _ms(bar["close_time"]), text(bar["quote_asset_volume"]),
                     bar["number_of_trades"], text(bar["taker_buy_base_asset_volume"]),
                     text(bar["taker_buy_quote_asset_volume"]), "0"])
    return rows


def _ms(value: Any) -> int:
    """A naive UTC datetime from Arrow as Binance's epoch milliseconds."""
    return int(pa.scalar(value, TIME).cast(pa.int64()).as_py())
