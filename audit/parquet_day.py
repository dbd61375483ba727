"""The curated day as Parquet: typed columns, exact decimals, written a row group at a time as lines arrive.

Column types (also the Glue tables' and the query views'):

- prices and quantities are DECIMAL(20, 8): Binance spells every price and quantity with 8 decimals, and 12
  integer digits hold more than any of its price or quantity filters allow. A value that does not fit exactly
  stops the write (Arrow's cast refuses to round), so nothing is ever stored rounded;
- the stream sends no quote quantity, so it is price x quantity, exact: DECIMAL(38, 16), whose 22 integer
  digits hold any trade's value many times over;
- trade and event times are TIMESTAMP in milliseconds, UTC, without a zone (what Athena's `timestamp` is):
  both engines compare and bucket them with their date functions, and the millisecond is Binance's own
  resolution, so `epoch_ms(trade_time)` gives back Binance's integer exactly;
- `corroboration` says what vouches for the trade (`audit.corroborate.How`: replicas, replica_and_exchange,
  exchange, majority, uncorroborated), so a query can keep only what two replicas or the exchange confirm.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

PRICE = pa.decimal128(20, 8)
QUOTE = pa.decimal128(38, 16)
TIME = pa.timestamp("ms")
TRADES_SCHEMA = pa.schema([
    ("trade_id", pa.int64()),
    ("price", PRICE),
    ("quantity", PRICE),
    ("quote_quantity", QUOTE),
    ("trade_time", TIME),
    ("event_time", TIME),
    ("buyer_is_maker", pa.bool_()),
    ("corroboration", pa.string()),
])
COMPRESSION = "zstd"
# 512 Ki trades a row group: ~40 MiB in Arrow while it is built (the writer's memory bound) and a few MiB of
# zstd per column chunk on disk, so Athena and DuckDB read each chunk in a handful of large requests and split
# a busy day (4 million trades: 8 row groups) across workers; the min/max of trade_time per row group lets
# both skip the row groups outside a time filter.
ROW_GROUP_ROWS = 524_288
# Lines parsed at a time (Arrow's JSON reader, in C++): ~13 MiB of JSON.
BATCH_ROWS = 65_536

# The stream's fields the table keeps; e, s and M are the same on every line of a day.
_LINE_FIELDS = pa.schema([("t", pa.int64()), ("p", pa.string()), ("q", pa.string()), ("T", pa.int64()),
                          ("E", pa.int64()), ("m", pa.bool_())])
_PARSE = pa_json.ParseOptions(explicit_schema=_LINE_FIELDS, unexpected_field_behavior="ignore")
# One block per batch (a line is ~200 bytes), on this thread: in threads Arrow kept about twice the memory for
# little gain, as the merge's fetches already keep the other core busy.
_READ = pa_json.ReadOptions(use_threads=False, block_size=BATCH_ROWS * 512)


class NotExact(ValueError):
    """A trade whose price or quantity has no exact value in the table's decimal columns."""


def trades_table(jsonl: bytes, corroboration: list[str] | None = None) -> pa.Table:
    """Trade events (JSONL, Binance's spelling) as a table of TRADES_SCHEMA, every value exact, with what
    vouches for each line (null where not given). No I/O."""
    raw = pa_json.read_json(io.BytesIO(jsonl), read_options=_READ, parse_options=_PARSE)
    try:
        price = pc.cast(raw["p"], PRICE)
        quantity = pc.cast(raw["q"], PRICE)
    except pa.ArrowInvalid as exc:
        raise NotExact(f"a price or quantity does not fit DECIMAL({PRICE.precision}, {PRICE.scale}) "
                       f"exactly: {exc}") from None
    wide = pa.decimal256(PRICE.precision, PRICE.scale)
    try:
        quote = pc.cast(pc.multiply(pc.cast(price, wide), pc.cast(quantity, wide)), QUOTE)
    except pa.ArrowInvalid as exc:
        raise NotExact(f"a quote quantity does not fit DECIMAL({QUOTE.precision}, {QUOTE.scale}): {exc}") from None
    vouched = pa.array(corroboration if corroboration is not None else [None] * raw.num_rows, pa.string())
    return pa.table([raw["t"], price, quantity, quote, pc.cast(raw["T"], TIME), pc.cast(raw["E"], TIME), raw["m"],
                     vouched], schema=TRADES_SCHEMA)


class TradesParquet:
    """A sink for the merge's trade lines (`add(line, how)`) that writes them to `path` as zstd Parquet, a row
    group at a time: memory holds one row group, not the day."""

    def __init__(self, path: Path, *, row_group_rows: int = ROW_GROUP_ROWS, batch_rows: int = BATCH_ROWS) -> None:
        self.path = path
        self.rows = 0
        self.row_groups = 0
        self._row_group_rows = row_group_rows
        self._batch_rows = batch_rows
        self._lines: list[bytes] = []
        self._hows: list[str] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer = pq.ParquetWriter(path, TRADES_SCHEMA, compression=COMPRESSION)

    def add(self, line: bytes, how: str) -> None:
        """One trade line (without its `\\n`) and what vouches for it."""
        self._lines.append(line)
        self._hows.append(how)
        if len(self._lines) >= self._batch_rows:
            self._parse()

    def _parse(self) -> None:
        if self._lines:
            self._lines.append(b"")
            table = trades_table(b"\n".join(self._lines), self._hows)
            self._lines, self._hows = [], []
            self._pending.append(table)
            self._pending_rows += table.num_rows
        while self._pending_rows >= self._row_group_rows:
            self._flush(self._row_group_rows)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        self._writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self.rows += rows
        self.row_groups += 1

    def close(self) -> None:
        self._parse()
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()

    def __enter__(self) -> TradesParquet:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self._writer.close()
