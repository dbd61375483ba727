"""`python -m audit query`: SQL over a bucket's trades with DuckDB, on the operator's machine.

Only the objects the symbols and days asked for need are fetched, into a local cache that mirrors the
bucket's keys: a curated day's Parquet tables (named by their content, so a cached copy is never stale) as its
manifest names them, and, for a day not yet compacted, the raw and backfilled data objects of its hours
(write-once keys). The views:

- `trades`: the curated days (columns of `audit.parquet_day.TRADES_SCHEMA`, plus `symbol` and `day`);
- `raw_trades`: the same columns from every replica and the backfill, each trade id once (replicas before the
  backfill), for the days without a curated day;
- `bars_1s`, `bars_1m`, `bars_1h`: the curated days' bars (`audit.bars.BARS_SCHEMA`, plus `symbol`, `day`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
from botocore.exceptions import ClientError

from audit import bucket
from audit.bars import BARS_SCHEMA, INTERVALS
from audit.curated_tables import table_name
from audit.days import hours_to_read
from audit.entries import MAX_OBJECT_BYTES
from audit.parquet_day import PRICE, QUOTE, TRADES_SCHEMA
from collector.keys import BACKFILL_PREFIX, DATA_PREFIX, DATA_SUFFIX, curated_manifest_key, hour_prefix

FORMATS = ("table", "csv", "parquet")


class DamagedObject(Exception):
    """A Parquet object whose sha256 is not the one its curated manifest gives."""
MAX_DAYS = 366  # one request a day at least; a longer range is more likely a typo than a wish


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tradecollector"


def days_between(first: date, last: date) -> list[date]:
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    if (last - first).days >= MAX_DAYS:
        raise ValueError(f"at most {MAX_DAYS} days at once")
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


@dataclass
class Selection:
    """What a query may read: the cached files of each view, and the (symbol, day)s read from raw objects."""

    cache: Path
    tables: dict[str, list[Path]] = field(default_factory=dict)
    raw: list[Path] = field(default_factory=list)
    raw_days: list[tuple[str, date]] = field(default_factory=list)
    fetched: int = 0
    cached: int = 0


def _manifest(s3: Any, name: str, symbol: str, day: date) -> dict[str, Any] | None:
    try:
        return msgspec.json.decode(bucket.read(s3, name, curated_manifest_key(symbol, day), limit=MAX_OBJECT_BYTES))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


def fetch(s3: Any, name: str, symbols: Iterable[str], days: Iterable[date], cache: Path, *,
          quiet: bool = True) -> Selection:
    """Fetches into `cache` what the views need for `symbols` x `days`, and says which file is whose."""
    selection = Selection(cache, tables={view: [] for view in ("trades", *map(table_name, INTERVALS))})
    keys: dict[str, str | None] = {}  # key -> the sha256 its manifest gives (none for raw objects)
    sizes: dict[str, int] = {}  # key -> its size, as its manifest or the listing gives it: no read goes past it
    raw_prefixes: list[str] = []
    wanted = [(symbol, day) for symbol in symbols for day in days]
    manifests = bucket.concurrently(lambda pair: _manifest(s3, name, *pair), wanted, desc="manifests", quiet=quiet)
    for (symbol, day), doc in zip(wanted, manifests, strict=True):
        if doc is not None and "tables" in doc:  # a curated day written before the tables is read raw
            for view, files in selection.tables.items():
                table = doc["tables"][view]
                keys[table["key"]] = table["sha256"]
                sizes[table["key"]] = table["bytes"]
                files.append(cache / table["key"])
        else:
            selection.raw_days.append((symbol, day))
            raw_prefixes += [hour_prefix(prefix, symbol, d, h)
                             for prefix in (DATA_PREFIX, BACKFILL_PREFIX) for d, h in hours_to_read(day)]
    if raw_prefixes:
        listed = bucket.list_objects(s3, name, sorted(set(raw_prefixes)), quiet=quiet)
        raw_keys = sorted(key for key in listed if key.endswith(DATA_SUFFIX))
        sizes.update((key, listed[key]) for key in raw_keys)
        keys.update(dict.fromkeys(raw_keys))
        selection.raw = [cache / key for key in raw_keys]
    missing = sorted(key for key in keys if not (cache / key).is_file())
    selection.cached = len(keys) - len(missing)
    selection.fetched = len(missing)

    def download(key: str) -> None:
        path = cache / key
        path.parent.mkdir(parents=True, exist_ok=True)
        body = bucket.read(s3, name, key, limit=sizes[key])
        if keys[key] is not None and hashlib.sha256(body).hexdigest() != keys[key]:
            raise DamagedObject(f"s3://{name}/{key} is not the object its manifest describes (sha256 differs)")
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as part:
            part.write(body)
        Path(part.name).replace(path)  # a cached file is always whole

    bucket.concurrently(download, missing, desc="fetching", quiet=quiet)
    return selection


def _files(paths: list[Path]) -> str:
    return "[" + ", ".join(_literal(str(p)) for p in paths) + "]"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(selection: Selection) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the views over the selected files (empty views where there are none)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for view, files in selection.tables.items():
        schema = TRADES_SCHEMA if view == "trades" else BARS_SCHEMA
        columns = ", ".join(schema.names)
        if files:
            source = (f"SELECT {columns}, symbol, CAST(date AS DATE) AS day "
                      f"FROM read_parquet({_files(files)}, hive_partitioning = true)")
        else:
            con.register(f"_empty_{view}", schema.empty_table())
            source = f"SELECT {columns}, NULL::VARCHAR AS symbol, NULL::DATE AS day FROM _empty_{view}"
        con.execute(f"CREATE VIEW {view} AS {source}")
    con.execute(f"CREATE VIEW raw_trades AS {_raw_sql(selection)}")
    return con


def _raw_sql(selection: Selection) -> str:
    if not selection.raw:
        return "SELECT * FROM trades WHERE false"
    price = f"DECIMAL({PRICE.precision}, {PRICE.scale})"
    wanted = ", ".join(_literal(f"{symbol}/{day}") for symbol, day in selection.raw_days)
    return f"""
        WITH lines AS (
            SELECT CAST(json ->> '$.t' AS BIGINT) AS trade_id,
                   CAST(json ->> '$.p' AS {price}) AS price,
                   CAST(json ->> '$.q' AS {price}) AS quantity,
                   epoch_ms(CAST(json ->> '$.T' AS BIGINT)) AS trade_time,
                   epoch_ms(CAST(json ->> '$.E' AS BIGINT)) AS event_time,
                   CAST(json ->> '$.m' AS BOOLEAN) AS buyer_is_maker,
                   json ->> '$.s' AS symbol,
                   starts_with(filename, {_literal(str(selection.cache / BACKFILL_PREFIX))}) AS backfilled,
                   filename
            FROM read_ndjson_objects({_files(selection.raw)}, compression = 'gzip', filename = true)
        )
        SELECT trade_id, price, quantity,
               CAST(price * quantity AS DECIMAL({QUOTE.precision}, {QUOTE.scale})) AS quote_quantity,
               trade_time, event_time, buyer_is_maker, symbol, CAST(trade_time AS DATE) AS day
        FROM lines
        WHERE symbol || '/' || CAST(CAST(trade_time AS DATE) AS VARCHAR) IN ({wanted})
        QUALIFY row_number() OVER (PARTITION BY symbol, trade_id ORDER BY backfilled, filename) = 1
    """


def output(relation: duckdb.DuckDBPyRelation, fmt: str, path: Path | None, *, max_rows: int) -> None:
    """The result as a table on stdout, or CSV (stdout or `path`), or Parquet (`path`)."""
    if fmt == "table":
        relation.show(max_rows=max_rows, max_width=10_000)
        return
    if fmt == "parquet":
        if path is None:
            raise ValueError("--format parquet needs --output FILE")
        relation.write_parquet(str(path), compression="zstd")
        return
    if path is not None:
        relation.write_csv(str(path), header=True)
        return
    with tempfile.TemporaryDirectory(prefix="query-") as tmp:
        out = Path(tmp) / "result.csv"
        relation.write_csv(str(out), header=True)
        sys.stdout.flush()
        with out.open("rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.buffer.flush()
