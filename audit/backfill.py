"""`python -m audit backfill`: fetch the ids no replica holds from Binance's REST history and store them as
ordinary data objects + manifests under backfill/, with `source.instance_id = "backfill"`.

A REST trade has no event time; its line gets `E` = `T`. A line is otherwise spelled as the stream spells
it, so a backfilled trade sits beside the streamed ones byte for byte. Closed holes are fetched by id; an open
start is walked back until a trade before midnight is found (that trade is stored too: it brackets the day);
an open end is walked forward, once the day is over, until a trade after midnight is found.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from botocore.exceptions import ClientError
from isal import igzip

from audit.binance_rest import PAGE_LIMIT, HistoricalTrades
from audit.coverage import DayCoverage
from audit.ranges import Hole
from collector import manifest
from collector.config import GZIP_LEVEL, ROTATE_BYTES
from collector.frames import Trade, parse_message
from collector.keys import BACKFILL_INSTANCE, BACKFILL_PREFIX, DATA_SUFFIX, MANIFEST_SUFFIX, Part
from collector.rotator import Rotator, SpoolFile

log = logging.getLogger("audit.backfill")

# Backfill files are cut by size only: a hole's trades belong together, whatever time they span.
_NO_TIME_ROTATION_SECONDS = 366 * 24 * 3600.0


def event_line(symbol: str, record: dict[str, Any]) -> bytes:
    """A REST history record as the trade stream would have sent it (fields e, E, s, t, p, q, T, m, M)."""
    return orjson.dumps({"e": "trade", "E": record["time"], "s": symbol, "t": record["id"], "p": record["price"],
                         "q": record["qty"], "T": record["time"], "m": record["isBuyerMaker"],
                         "M": record.get("isBestMatch", True)})


Page = Callable[[int, int], list[dict[str, Any]]]  # (from_id, limit) → records, oldest first


def closed(page: Page, first: int, last: int) -> Iterator[dict[str, Any]]:
    """Every trade with id in `first..last`."""
    next_id = first
    while next_id <= last:
        records = page(next_id, min(PAGE_LIMIT, last - next_id + 1))
        if not records:
            return
        yield from (r for r in records if r["id"] <= last)
        next_id = records[-1]["id"] + 1


def walk_back(page: Page, last: int, start_ms: int) -> list[dict[str, Any]]:
    """The trades up to id `last` back to (and including) the last one before `start_ms`."""
    found: list[dict[str, Any]] = []
    upper = last
    while upper >= 0:
        from_id = max(0, upper - PAGE_LIMIT + 1)
        records = [r for r in page(from_id, upper - from_id + 1) if r["id"] <= upper]
        if not records:
            break
        found = records + found
        if records[0]["time"] < start_ms or from_id == 0:
            break
        upper = from_id - 1
    # Keep one trade before midnight (the bracket), drop the older ones.
    before = [i for i, r in enumerate(found) if r["time"] < start_ms]
    return found[before[-1]:] if before else found


def walk_forward(page: Page, first: int, end_ms: int) -> list[dict[str, Any]]:
    """The trades from id `first` up to (and including) the first one at or after `end_ms`."""
    found: list[dict[str, Any]] = []
    next_id = first
    while True:
        records = page(next_id, PAGE_LIMIT)
        for record in records:
            found.append(record)
            if record["time"] >= end_ms:
                return found
        if len(records) < PAGE_LIMIT:
            return found
        next_id = records[-1]["id"] + 1


@dataclass
class HoleFill:
    hole: Hole
    fetched: int = 0
    keys: list[str] = field(default_factory=list)
    skipped: str | None = None  # why nothing was fetched


@dataclass
class Backfill:
    fills: list[HoleFill]
    calls: int
    weight: int
    seconds: float

    @property
    def fetched(self) -> int:
        return sum(f.fetched for f in self.fills)


def files_of(symbol: str, records: list[dict[str, Any]], start_ms: int) -> list[tuple[SpoolFile, bytes]]:
    """Cut one hole's trades into files with the collector's own rotator (by size only). A file is named by
    its first trade's time, but never before the day's last millisecond before midnight, so that the audit
    of the day (which reads the day's partitions and the hour before) finds the one that brackets it."""
    rotator = Rotator(symbol=symbol, instance_id=BACKFILL_INSTANCE, rotate_bytes=ROTATE_BYTES,
                      rotate_seconds=_NO_TIME_ROTATION_SECONDS)
    files: list[tuple[SpoolFile, list[bytes]]] = []
    for record in records:
        line = event_line(symbol, record)
        trade = parse_message(line, True, symbol)
        if not isinstance(trade, Trade):
            raise ValueError(f"REST record {record!r} does not make a trade event: {trade}")
        rotator.place(trade, max(trade.trade_time, start_ms - 1))
        if not files or files[-1][0] is not rotator.current:
            assert rotator.current is not None
            files.append((rotator.current, []))
        files[-1][1].append(line + b"\n")
    return [(spool, b"".join(lines)) for spool, lines in files]


def _same_object(s3: Any, bucket: str, key: str, body: bytes) -> bool:
    # A single-part PutObject's ETag is the MD5 of the body (plain or SSE-S3).
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    return etag == hashlib.md5(body, usedforsecurity=False).hexdigest()


def _put_new(s3: Any, bucket: str, key: str, body: bytes, content_type: str) -> bool:
    """Write-once; False when the key is already taken."""
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, ServerSideEncryption="AES256",
                      IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            return False
        raise
    return True


def store(s3: Any, bucket: str, symbol: str, records: list[dict[str, Any]], *, start_ms: int, now_ms: int
          ) -> list[str]:
    """Upload the files of one hole; returns their data keys. Safe to re-run: the same trades make the same
    bytes under the same key, found there and left alone; a key taken by other bytes moves on a millisecond."""
    keys = []
    for spool, data in files_of(symbol, records, start_ms):
        body = igzip.compress(data, GZIP_LEVEL, mtime=0)
        part = spool.part
        while True:
            data_key = part.key(BACKFILL_PREFIX, DATA_SUFFIX)
            if _put_new(s3, bucket, data_key, body, "application/gzip") or _same_object(s3, bucket, data_key, body):
                break
            part = Part(part.symbol, part.instance_id, part.opened_at_ms + 1)
        doc = manifest.build(part=part, stats=spool.stats, bucket=bucket, compressed_bytes=len(body),
                             sha256=hashlib.sha256(body).hexdigest(), created_at_ms=now_ms, prefix=BACKFILL_PREFIX)
        _put_new(s3, bucket, part.key(BACKFILL_PREFIX, MANIFEST_SUFFIX), manifest.encode(doc), "application/json")
        log.info("backfilled s3://%s/%s: ids %d..%d", bucket, data_key, spool.stats.first_trade_id,
                 spool.stats.last_trade_id)
        keys.append(data_key)
    return keys


def run(s3: Any, bucket: str, symbol: str, coverage: DayCoverage, history: HistoricalTrades, *, now_ms: int
        ) -> Backfill:
    started = time.monotonic()

    def page(from_id: int, limit: int) -> list[dict[str, Any]]:
        return history.page(symbol, from_id, limit)

    fills = []
    for hole in coverage.holes:
        fill = HoleFill(hole)
        fills.append(fill)
        if hole.first is None and hole.last is None:
            fill.skipped = "no replica holds a trade near this day, so there is no trade id to start from"
            continue
        if hole.first is None:
            assert hole.last is not None
            records = walk_back(page, hole.last, coverage.start_ms)
        elif hole.last is None:
            if coverage.end_ms > now_ms:
                fill.skipped = "the day is not over"
                continue
            records = walk_forward(page, hole.first, coverage.end_ms)
        else:
            records = list(closed(page, hole.first, hole.last))
        fill.fetched = len(records)
        fill.keys = store(s3, bucket, symbol, records, start_ms=coverage.start_ms, now_ms=now_ms)
    return Backfill(fills, history.calls, history.weight_used, time.monotonic() - started)
