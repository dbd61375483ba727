"""The S3 key layout (docs/data.md): the one place that knows how keys are spelled."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

EXCHANGE = "binance"
STREAM = "trade"
DATA_PREFIX = "raw/"
MANIFEST_PREFIX = "manifests/"
# Written by the operator's audit tool, never by the instances: backfill keeps data objects and their
# manifests side by side in the layout of raw/; curated holds one deduplicated day per symbol.
BACKFILL_PREFIX = "backfill/"
BACKFILL_INSTANCE = "backfill"
CURATED_PREFIX = "curated/"
# Athena's query results (the operator's queries), expired by the bucket's lifecycle.
ATHENA_RESULTS_PREFIX = "athena-results/"
DATA_SUFFIX = ".jsonl.gz"
PARQUET_SUFFIX = ".parquet"
MANIFEST_SUFFIX = ".manifest.json"
TRADES_TABLE = "trades"  # the curated day's Parquet trades: their folder and file name stem

_PART_RE = re.compile(r"^(?P<symbol>[A-Z0-9]+)-(?P<instance>.+)-(?P<ts>\d{8}T\d{9}Z)$")


def timestamp(opened_at_ms: int) -> str:
    """`%Y%m%dT%H%M%S%fZ` cut to milliseconds, UTC."""
    dt = datetime.fromtimestamp(opened_at_ms / 1000, tz=UTC)
    return dt.strftime("%Y%m%dT%H%M%S") + f"{opened_at_ms % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Part:
    """One rotated file: which symbol, which instance, when it was opened (epoch ms)."""

    symbol: str
    instance_id: str
    opened_at_ms: int

    @property
    def stem(self) -> str:
        """Local spool name, unique per instance: `<SYMBOL>-<instance>-<ts>`."""
        return f"{self.symbol}-{self.instance_id}-{timestamp(self.opened_at_ms)}"

    def key(self, prefix: str, suffix: str) -> str:
        dt = datetime.fromtimestamp(self.opened_at_ms / 1000, tz=UTC)
        return (hour_prefix(prefix, self.symbol, dt.date(), dt.hour)
                + f"part-{self.instance_id}-{timestamp(self.opened_at_ms)}{suffix}")

    @property
    def data_key(self) -> str:
        return self.key(DATA_PREFIX, DATA_SUFFIX)

    @property
    def manifest_key(self) -> str:
        return self.key(MANIFEST_PREFIX, MANIFEST_SUFFIX)

    @classmethod
    def from_stem(cls, stem: str) -> Part:
        """Inverse of `stem`; raises ValueError for a name this collector did not write."""
        m = _PART_RE.match(stem)
        if m is None:
            raise ValueError(f"not a spool file name: {stem!r}")
        opened = datetime.strptime(m["ts"][:-4], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        ms = int(opened.timestamp()) * 1000 + int(m["ts"][-4:-1])
        return cls(symbol=m["symbol"], instance_id=m["instance"], opened_at_ms=ms)


def symbols_prefix(prefix: str) -> str:
    """What every symbol's folder under `prefix` starts with; the symbol and a slash follow."""
    return f"{prefix}exchange={EXCHANGE}/stream={STREAM}/symbol="


def hour_prefix(prefix: str, symbol: str, day: date, hour: int) -> str:
    """The folder of one hour's objects under `prefix` (raw/, manifests/ or backfill/)."""
    return hour_folder(prefix, symbol, f"{day:%Y-%m-%d}", f"{hour:02d}")


def hour_folder(prefix: str, symbol: str, day: str, hour: str) -> str:
    """`hour_prefix` from strings, which may be placeholders (Athena's partition projection fills them)."""
    return f"{symbols_prefix(prefix)}{symbol}/date={day}/hour={hour}/"


def curated_manifest_key(symbol: str, day: date) -> str:
    return _curated_folder(symbol, day) + "manifest.json"


def curated_data_key(symbol: str, day: date, sha256: str) -> str:
    """Named by its content, so that writing the manifest that points to it is the one switch to a new
    version: a reader never finds a manifest describing other bytes than those it names."""
    return _curated_folder(symbol, day) + f"trades-{sha256[:16]}" + DATA_SUFFIX


def bars_table(interval: str) -> str:
    """The folder (and file name stem) of one interval's bars."""
    return f"bars-{interval}"


def curated_day_folder(symbol: str, day: str) -> str:
    """A curated day's folder; `symbol` and `day` may be placeholders (Athena's partition projection fills
    `${symbol}`, `${day}`)."""
    return f"{CURATED_PREFIX}exchange={EXCHANGE}/symbol={symbol}/date={day}/"


def curated_table_folder(symbol: str, day: str, table: str) -> str:
    """The folder of one table's Parquet files for a symbol's day. A query engine reads every object under a
    table's folder (Athena does), so each table lives apart from the JSONL, the manifest and the other tables."""
    return curated_day_folder(symbol, day) + f"{table}/"


def curated_trades_parquet_key(symbol: str, day: date, sha256: str) -> str:
    """The curated day as Parquet, named by its content like the JSONL."""
    folder = curated_table_folder(symbol, f"{day:%Y-%m-%d}", TRADES_TABLE)
    return folder + f"{TRADES_TABLE}-{sha256[:16]}" + PARQUET_SUFFIX


def curated_bars_key(symbol: str, day: date, interval: str, sha256: str) -> str:
    """One day's bars (klines) of `interval` (`1s`, `1m`, `1h`), named by their content."""
    table = bars_table(interval)
    return curated_table_folder(symbol, f"{day:%Y-%m-%d}", table) + f"{table}-{sha256[:16]}" + PARQUET_SUFFIX


def _curated_folder(symbol: str, day: date) -> str:
    return curated_day_folder(symbol, f"{day:%Y-%m-%d}")
