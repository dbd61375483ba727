"""The curated day's Parquet tables beside its JSONL: the trades (written by `parquet_day` as the merge goes),
the bars of every interval computed from them, their content-addressed uploads, and what the manifest says.

Like the JSONL, each table's object is named by its sha256 and uploaded before the manifest that names it; the
objects a previous manifest named are deleted only after the new manifest is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from audit import bucket
from audit.bars import INTERVALS, bars, coarser
from audit.entries import MAX_OBJECT_BYTES
from audit.parquet_day import BATCH_ROWS, COMPRESSION
from collector.keys import curated_bars_key, curated_trades_parquet_key

# The trades columns the bars are computed from.
BARS_INPUT = ["trade_id", "price", "quantity", "quote_quantity", "trade_time", "buyer_is_maker"]


def table_name(interval: str) -> str:
    """The manifest's, the query views' and the Glue tables' name of one interval's bars."""
    return f"bars_{interval}"


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    path: Path
    rows: int
    row_groups: int
    sha256: str

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "format": "parquet", "compression": COMPRESSION, "rows": self.rows,
                "row_groups": self.row_groups, "bytes": self.path.stat().st_size, "sha256": self.sha256}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _table(name: str, path: Path, key_of: Any) -> Table:
    meta = pq.ParquetFile(path).metadata
    sha = _sha256(path)
    return Table(name, key_of(sha), path, meta.num_rows, meta.num_row_groups, sha)


def build(trades_path: Path, symbol: str, day: date) -> list[Table]:
    """The trades file and its bars: the finest from the trades (read a batch at a time), the others from those."""
    tables = [_table("trades", trades_path, lambda sha: curated_trades_parquet_key(symbol, day, sha))]
    batches = pq.ParquetFile(trades_path).iter_batches(batch_size=BATCH_ROWS, columns=BARS_INPUT)
    finest, *others = INTERVALS
    day_bars = {finest: bars((pa.Table.from_batches([b]) for b in batches), finest)}
    day_bars.update((interval, coarser(day_bars[finest], interval)) for interval in others)
    for interval, table in day_bars.items():
        path = trades_path.with_name(f"bars-{interval}.parquet")
        pq.write_table(table, path, compression=COMPRESSION)
        tables.append(_table(table_name(interval), path,
                             lambda sha, interval=interval: curated_bars_key(symbol, day, interval, sha)))
    return tables


def upload(s3: Any, name: str, tables: list[Table]) -> dict[str, Any]:
    """Stores every table (write-once keys, named by content) and returns the manifest's `tables`."""
    for table in tables:
        s3.upload_file(str(table.path), name, table.key,
                       ExtraArgs={"ServerSideEncryption": "AES256", "ContentType": "application/vnd.apache.parquet"})
    return {table.name: table.describe() for table in tables}


def previous_keys(s3: Any, name: str, manifest_key: str) -> set[str]:
    """The table objects the current manifest names (none before the first compaction)."""
    try:
        doc = msgspec.json.decode(bucket.read(s3, name, manifest_key, limit=MAX_OBJECT_BYTES))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return set()
        raise
    return {table["key"] for table in doc.get("tables", {}).values()}


def delete_stale(s3: Any, name: str, previous: set[str], tables: dict[str, Any]) -> None:
    """After the new manifest is written: the objects only the old one named."""
    for key in sorted(previous - {table["key"] for table in tables.values()}):
        s3.delete_object(Bucket=name, Key=key)
