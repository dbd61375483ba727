"""`python -m audit backfill`: fetch the ids no replica holds from Binance's REST history and store them as
ordinary data objects + manifests under backfill/, with `source.instance_id = "backfill"`.

A REST trade has no event time; its line gets `E` = `T`. A line is otherwise spelled as the stream spells
it, so a backfilled trade sits beside the streamed ones byte for byte. Closed holes are fetched by id; for an
open start the last trade before midnight is searched for (and stored too: it brackets the day), then
everything from it is fetched; an open end is fetched forward, once the day is over, up to the first trade
after midnight. Files are stored as they fill, so a stop part-way (a ban, Ctrl-C) keeps what was fetched.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from botocore.exceptions import ClientError
from isal import igzip

from audit.binance_rest import PAGE_LIMIT, BackfillError, HistoricalTrades
from audit.bucket import read
from audit.coverage import DayCoverage
from audit.entries import MANIFEST_MAX_BYTES
from audit.files import cut
from audit.ranges import Hole
from collector import manifest
from collector.config import GZIP_LEVEL, ROTATE_BYTES
from collector.keys import BACKFILL_INSTANCE, BACKFILL_PREFIX, DATA_SUFFIX, MANIFEST_SUFFIX, Part
from collector.rotator import Rotator, SpoolFile

log = logging.getLogger("audit.backfill")

# Backfill files are cut by size only: a hole's trades belong together, whatever time they span.
_NO_TIME_ROTATION_SECONDS = 366 * 24 * 3600.0


def event_line(symbol: str, record: dict[str, Any]) -> bytes:
    """A REST history record as the trade stream would have sent it (fields e, E, s, t, p, q, T, m, M)."""
    return msgspec.json.encode({"e": "trade", "E": record["time"], "s": symbol, "t": record["id"], "p": record["price"],
                         "q": record["qty"], "T": record["time"], "m": record["isBuyerMaker"],
                         "M": record.get("isBestMatch", True)})


Page = Callable[[int, int], list[dict[str, Any]]]  # (from_id, limit) → records, oldest first


def closed(page: Page, first: int, last: int) -> Iterator[dict[str, Any]]:
    """Every trade with id in `first..last`, a page at a time."""
    next_id = first
    while next_id <= last:
        records = page(next_id, min(PAGE_LIMIT, last - next_id + 1))
        if not records:
            return
        yield from (r for r in records if r["id"] <= last)
        next_id = records[-1]["id"] + 1


def last_before(page: Page, below: int, start_ms: int) -> int | None:
    """The id of the last trade before `start_ms`, searching below id `below` (whose trade is at or after
    it): one-trade probes stepping back exponentially, then a binary search, so that an open start a whole
    day long costs some 40 calls to locate instead of a walk through every page. None when the history
    begins after `start_ms`."""

    def first_from(trade_id: int) -> tuple[int, int] | None:
        """(id, time) of the first trade at or after `trade_id` (the history may begin later)."""
        records = page(trade_id, 1)
        return (records[0]["id"], records[0]["time"]) if records else None

    late, step = below, PAGE_LIMIT
    while True:
        probe = max(0, late - step)
        found = first_from(probe)
        if found is None:
            return None
        if found[1] < start_ms:
            early = found[0]
            break
        if found[0] > probe or probe == 0:  # the history's first trade is already at or after start_ms
            return None
        late, step = probe, step * 2
    while late - early > 1:  # trade `early` is before start_ms, trade `late` is not
        found = first_from((early + late) // 2)
        if found is not None and found[1] < start_ms and found[0] < late:
            early = found[0]
        else:
            late = (early + late) // 2
    return early


def until(page: Page, first: int, end_ms: int) -> Iterator[dict[str, Any]]:
    """The trades from id `first` up to (and including) the first one at or after `end_ms`, or to the last
    trade there is."""
    next_id = first
    while True:
        records = page(next_id, PAGE_LIMIT)
        for record in records:
            yield record
            if record["time"] >= end_ms:
                return
        if len(records) < PAGE_LIMIT:
            return
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
    error: BackfillError | None = None  # what stopped it; the fills say what was stored before

    @property
    def fetched(self) -> int:
        return sum(f.fetched for f in self.fills)


def files_of(symbol: str, records: Iterable[dict[str, Any]], start_ms: int) -> Iterator[tuple[SpoolFile, bytes]]:
    """Cut one hole's trades into files with the collector's own rotator (by size only), each as soon as it is
    full. A file is named by its first trade's time, but never before the day's last millisecond before
    midnight, so that the audit of the day (which reads the day's partitions and the hour before) finds the
    one that brackets it."""
    rotator = Rotator(symbol=symbol, instance_id=BACKFILL_INSTANCE, rotate_bytes=ROTATE_BYTES,
                      rotate_seconds=_NO_TIME_ROTATION_SECONDS)
    return cut(rotator, (event_line(symbol, r) for r in records), lambda trade: max(trade.trade_time, start_ms - 1))


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


def store(s3: Any, bucket: str, symbol: str, records: Iterable[dict[str, Any]], fill: HoleFill, *, start_ms: int,
          now_ms: int) -> None:
    """Upload the files of one hole as they fill up (a stop part-way keeps what was stored). Safe to re-run:
    the same trades make the same bytes under the same key, found there and left alone; a key taken by other
    bytes moves on a millisecond. If fetching fails part-way, what was fetched is stored before the error
    goes on."""
    failed: list[BackfillError] = []

    def until_failure() -> Iterator[dict[str, Any]]:
        try:
            yield from records
        except BackfillError as exc:
            failed.append(exc)

    for spool, data in files_of(symbol, until_failure(), start_ms):
        body = igzip.compress(data, GZIP_LEVEL, mtime=0)
        part = spool.part
        while True:
            data_key = part.key(BACKFILL_PREFIX, DATA_SUFFIX)
            if _put_new(s3, bucket, data_key, body, "application/gzip") or _same_object(s3, bucket, data_key, body):
                break
            part = Part(part.symbol, part.instance_id, part.opened_at_ms + 1)
        sha256 = hashlib.sha256(body).hexdigest()
        doc = manifest.build(part=part, stats=spool.stats, bucket=bucket, compressed_bytes=len(body), sha256=sha256,
                             created_at_ms=now_ms, prefix=BACKFILL_PREFIX)
        manifest_key = part.key(BACKFILL_PREFIX, MANIFEST_SUFFIX)
        if not _put_new(s3, bucket, manifest_key, manifest.encode(doc), "application/json"):
            # Left by an earlier run for these same bytes; anything else there is not ours to overwrite.
            there = msgspec.json.decode(read(s3, bucket, manifest_key, limit=MANIFEST_MAX_BYTES))
            if there.get("payload", {}).get("sha256") != sha256:
                raise BackfillError(f"s3://{bucket}/{manifest_key} describes other bytes than {data_key}")
        log.info("backfilled s3://%s/%s: ids %d..%d", bucket, data_key, spool.stats.first_trade_id,
                 spool.stats.last_trade_id)
        fill.keys.append(data_key)
        fill.fetched += spool.stats.record_count
    if failed:
        raise failed[0]


def run(s3: Any, bucket: str, symbol: str, coverage: DayCoverage, history: HistoricalTrades, *, now_ms: int
        ) -> Backfill:
    started = time.monotonic()

    def page(from_id: int, limit: int) -> list[dict[str, Any]]:
        return history.page(symbol, from_id, limit)

    fills = []
    for hole in coverage.holes:
        fill = HoleFill(hole)
        fills.append(fill)
        records: Iterable[dict[str, Any]]
        if hole.first is None and hole.last is None:
            fill.skipped = "no replica holds a trade near this day, so there is no trade id to start from"
            continue
        if hole.first is None:
            assert hole.last is not None
            bracket = last_before(page, hole.last + 1, coverage.start_ms)
            records = closed(page, 0 if bracket is None else bracket, hole.last)
        elif hole.last is None:
            if coverage.end_ms > now_ms:
                fill.skipped = "the day is not over"
                continue
            records = until(page, hole.first, coverage.end_ms)
        else:
            records = closed(page, hole.first, hole.last)
        try:
            store(s3, bucket, symbol, records, fill, start_ms=coverage.start_ms, now_ms=now_ms)
        except BackfillError as exc:
            return Backfill(fills, history.calls, history.weight_used, time.monotonic() - started, exc)
    return Backfill(fills, history.calls, history.weight_used, time.monotonic() - started)
