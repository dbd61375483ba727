"""The manifest of one data object (schema_version 1); `manifest.schema.json` beside this file is the data contract."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from collector.keys import DATA_PREFIX, DATA_SUFFIX, EXCHANGE, STREAM, Part
from collector.stats import FileStats

SCHEMA_VERSION = 1
# The data contract that every manifest (the collector's and the backfill's) is checked against.
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


def iso_millis(epoch_ms: int) -> str:
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def build(
    *, part: Part, stats: FileStats, bucket: str, compressed_bytes: int, sha256: str, created_at_ms: int,
    prefix: str = DATA_PREFIX,
) -> dict[str, Any]:
    """`prefix` is where the data object lives: raw/ for the collector, backfill/ for the audit tool."""
    return {
        "schema_version": SCHEMA_VERSION,
        "source": {"exchange": EXCHANGE, "stream": STREAM, "symbol": part.symbol, "instance_id": part.instance_id},
        "payload": {
            "bucket": bucket,
            "key": part.key(prefix, DATA_SUFFIX),
            "format": "jsonl",
            "compression": "gzip",
            "record_count": stats.record_count,
            "min_event_time": stats.min_event_time,
            "max_event_time": stats.max_event_time,
            "min_trade_time": stats.min_trade_time,
            "max_trade_time": stats.max_trade_time,
            "first_trade_id": stats.first_trade_id,
            "last_trade_id": stats.last_trade_id,
            "uncompressed_bytes": stats.uncompressed_bytes,
            "compressed_bytes": compressed_bytes,
            "sha256": sha256,
        },
        "quality": {
            "malformed_messages": stats.malformed_messages,
            "trade_id_gaps": stats.trade_id_gaps,
            "missing_trade_ids": stats.missing_trade_ids,
            "reconnects": stats.reconnects,
        },
        "created_at": iso_millis(created_at_ms),
    }


def encode(manifest: dict[str, Any]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"
