"""`python -m audit compact`: one deduplicated, id-ordered day per symbol under curated/.

The data objects of every replica and of the backfill are merged by trade id, streaming: objects are opened
in order of their first id, so only those that overlap the merge point are open at once, and a bounded window
of them is fetched ahead. Lines stay byte-identical to the raw ones; where two sources hold different bytes for
one id, the first source wins (replicas before the backfill, then by instance and key) and it is reported.
The curated manifest certifies `complete: true` or lists the holes. The output is deterministic (same
sources, same bytes), and its data object is named by its sha256, so a re-run never leaves a manifest that
describes other bytes than those it names.
"""

from __future__ import annotations

import hashlib
import heapq
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import msgspec
from botocore.exceptions import ClientError
from isal import igzip

from audit import bucket, curated_tables
from audit.check import Audit
from audit.days import reaches_into
from audit.entries import Entry, instance_order
from audit.parquet_day import Tee, TradesParquet
from audit.ranges import Hole
from collector import manifest
from collector.config import GZIP_LEVEL
from collector.frames import Trade, parse_message
from collector.keys import EXCHANGE, STREAM, curated_data_key, curated_manifest_key
from collector.manifest import SCHEMA_VERSION, iso_millis
from collector.spool import open_gzip

# Objects fetched ahead of the merge point: enough to hide S3's latency, few enough to bound memory
# (a data object is at most 2 MiB of JSONL, a fraction of that compressed).
PREFETCH = 32
DISAGREEMENT_SAMPLE = 20
CURATED_KIND = "curated-day"


class BadObject(Exception):
    """A data object whose sha256 is its manifest's but whose lines cannot be merged: a line that is not a
    trade event, or lines that go back in trade id."""


def source_order(entry: Entry) -> tuple[tuple[bool, str], str]:
    """Which source wins for an id several hold: replicas before the backfill, then by instance, then key."""
    return instance_order(entry.instance_id), entry.data_key


def choose_sources(entries: Iterable[Entry], start_ms: int, end_ms: int) -> list[Entry]:
    """The objects that reach into the day, plus each instance's nearest object on either side of it, so that
    the trades next to midnight are seen (and one damaged neighbour does not hide them)."""
    chosen: list[Entry] = []
    before: dict[str, Entry] = {}
    after: dict[str, Entry] = {}
    for e in entries:
        if reaches_into(e.min_trade_time, e.max_trade_time, start_ms, end_ms):
            chosen.append(e)
        elif e.max_trade_time < start_ms:
            if e.instance_id not in before or e.last_trade_id > before[e.instance_id].last_trade_id:
                before[e.instance_id] = e
        elif e.instance_id not in after or e.first_trade_id < after[e.instance_id].first_trade_id:
            after[e.instance_id] = e
    return chosen + list(before.values()) + list(after.values())


class Seen(NamedTuple):
    trade_id: int
    trade_time: int


@dataclass
class Merged:
    """What the merge saw, beside the lines it wrote."""

    records: int = 0
    first: Seen | None = None  # first and last line written
    last: Seen | None = None
    min_event_time: int | None = None
    max_event_time: int | None = None
    min_trade_time: int | None = None
    max_trade_time: int | None = None
    uncompressed_bytes: int = 0
    duplicates_dropped: int = 0
    disagreements: int = 0
    disagreement_sample: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[Hole] = field(default_factory=list)  # id jumps between the lines written
    last_before: Seen | None = None  # the last line before the day, in id order
    first_after: Seen | None = None  # the first line after the day
    damaged: list[str] = field(default_factory=list)  # data keys left out: sha256 or first id not the manifest's

    def holes(self) -> list[Hole]:
        """Every range of the day's ids the output lacks; an edge is closed when the line on the other side of
        midnight was seen, with its id known when only some line there was seen."""
        lb, fa = self.last_before, self.first_after
        if self.first is None or self.last is None:  # no trade of the day was written
            if lb is not None and fa is not None and fa.trade_id == lb.trade_id + 1:
                return []  # a day without trades, bracketed
            return [Hole(None if lb is None else lb.trade_id + 1, None if fa is None else fa.trade_id - 1,
                         None if lb is None else lb.trade_time, None if fa is None else fa.trade_time)]
        holes = []
        if lb is None or lb.trade_id + 1 < self.first.trade_id:
            holes.append(Hole(None if lb is None else lb.trade_id + 1, self.first.trade_id - 1,
                              None if lb is None else lb.trade_time, self.first.trade_time))
        holes += self.gaps
        if fa is None or fa.trade_id > self.last.trade_id + 1:
            holes.append(Hole(self.last.trade_id + 1, None if fa is None else fa.trade_id - 1,
                              self.last.trade_time, None if fa is None else fa.trade_time))
        return holes


Line = tuple[int, int, int, bytes]  # trade id, T, E, the line


def _lines(body: bytes, symbol: str, key: str) -> Iterator[Line]:
    for number, line in enumerate(igzip.decompress(body).splitlines(), 1):
        trade = parse_message(line, True, symbol)
        if type(trade) is not Trade:
            raise BadObject(f"{key}: line {number} is not a {symbol} trade event")
        yield trade.trade_id, trade.trade_time, trade.event_time, line


def _opened(entry: Entry, body: bytes, symbol: str, m: Merged) -> tuple[Line, Iterator[Line]] | None:
    """The object's first line and the rest, or None (and the key in `m.damaged`) when it is not what its
    manifest says: those ids are taken from the other sources."""
    if hashlib.sha256(body).hexdigest() != entry.sha256:
        m.damaged.append(entry.data_key)
        return None
    lines = _lines(body, symbol, entry.data_key)
    first = next(lines, None)
    if first is None or first[0] != entry.first_trade_id:
        m.damaged.append(entry.data_key)
        return None
    return first, lines


def merge_into(out: BinaryIO, bodies: Iterable[tuple[int, Entry, bytes]], symbol: str, start_ms: int,
               end_ms: int) -> Merged:
    """Write the day's lines of `bodies` (given in order of first id; the int ranks the source, lower wins)
    to `out`, each id once, in id order. No S3 here."""
    m = Merged()
    heap: list[tuple[int, int, int, int, bytes, Iterator[Line], str]] = []
    pending = iter(bodies)
    nxt = next(pending, None)
    written: tuple[int, bytes, str] | None = None  # the last id written, its line and source: a repeat follows it
    last_id = -1  # the last id taken from the heap, written or not
    while heap or nxt is not None:
        # Open every object that starts at or before the merge point before taking the next line.
        while nxt is not None and (not heap or nxt[1].first_trade_id <= heap[0][0]):
            rank, entry, body = nxt
            opened = _opened(entry, body, symbol, m)
            if opened is not None:
                (trade_id, trade_time, event_time, line), lines = opened
                heapq.heappush(heap, (trade_id, rank, trade_time, event_time, line, lines, entry.data_key))
            nxt = next(pending, None)
        if not heap:
            continue
        trade_id, rank, trade_time, event_time, line, lines, key = heapq.heappop(heap)
        following = next(lines, None)
        if following is not None:
            if following[0] <= trade_id:
                raise BadObject(f"{key}: trade id {following[0]} after {trade_id} (not in trade-id order)")
            heapq.heappush(heap, (following[0], rank, following[1], following[2], following[3], lines, key))
        if trade_id == last_id:
            if written is not None and written[0] == trade_id:
                m.duplicates_dropped += 1
                if line != written[1]:
                    m.disagreements += 1
                    if len(m.disagreement_sample) < DISAGREEMENT_SAMPLE:
                        m.disagreement_sample.append({"trade_id": trade_id, "kept": written[2], "dropped": key})
            continue
        last_id = trade_id
        seen = Seen(trade_id, trade_time)
        if trade_time < start_ms:
            if m.first is None:
                m.last_before = seen
            continue
        if trade_time >= end_ms:
            if m.first_after is None:
                m.first_after = seen
            continue
        if m.last is not None and trade_id > m.last.trade_id + 1:
            m.gaps.append(Hole(m.last.trade_id + 1, trade_id - 1, m.last.trade_time, trade_time))
        out.write(line + b"\n")
        written = (trade_id, line, key)
        m.records += 1
        m.uncompressed_bytes += len(line) + 1
        if m.first is None:
            m.first = seen
            m.min_event_time = m.max_event_time = event_time
            m.min_trade_time = m.max_trade_time = trade_time
        m.last = seen
        m.min_event_time = min(m.min_event_time, event_time)  # type: ignore[type-var]
        m.max_event_time = max(m.max_event_time, event_time)  # type: ignore[type-var]
        m.min_trade_time = min(m.min_trade_time, trade_time)  # type: ignore[type-var]
        m.max_trade_time = max(m.max_trade_time, trade_time)  # type: ignore[type-var]
    return m


def _fetch_in_order(s3: Any, name: str, entries: list[Entry]) -> Iterator[tuple[int, Entry, bytes]]:
    """Bodies in order of first id, at most PREFETCH in flight or waiting, each with its source's rank."""
    rank = {e.data_key: i for i, e in enumerate(sorted(entries, key=source_order))}
    todo = iter(sorted(entries, key=lambda e: (e.first_trade_id, source_order(e))))
    with ThreadPoolExecutor(max_workers=PREFETCH) as pool:
        window: deque[tuple[Entry, Future[bytes]]] = deque()

        def fetch_next() -> None:
            entry = next(todo, None)
            if entry is not None:
                window.append((entry, pool.submit(bucket.read, s3, name, entry.data_key)))

        for _ in range(PREFETCH):
            fetch_next()
        while window:
            entry, future = window.popleft()
            fetch_next()
            yield rank[entry.data_key], entry, future.result()


@dataclass
class Curated:
    data_key: str
    manifest_key: str
    manifest: dict[str, Any]
    seconds: float


def _previous_data_key(s3: Any, name: str, manifest_key: str) -> str | None:
    try:
        return msgspec.json.decode(bucket.read(s3, name, manifest_key))["payload"]["key"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


def run(s3: Any, audit: Audit, *, quiet: bool = False, now_ms: int | None = None) -> Curated:
    started = time.monotonic()
    cov = audit.coverage
    sources = choose_sources(audit.entries, cov.start_ms, cov.end_ms)
    manifest_key = curated_manifest_key(audit.symbol, audit.day)
    with tempfile.TemporaryDirectory(prefix="curated-") as tmp:
        path = Path(tmp) / "day.jsonl.gz"
        trades_path = Path(tmp) / "trades.parquet"
        with path.open("wb") as raw, open_gzip(raw, GZIP_LEVEL) as out, TradesParquet(trades_path) as table:
            bodies = bucket.progress(_fetch_in_order(s3, audit.bucket, sources), total=len(sources),
                                     desc="merging", quiet=quiet)
            merged = merge_into(Tee(out, table), bodies, audit.symbol, cov.start_ms, cov.end_ms)  # type: ignore[arg-type]
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        data_key = curated_data_key(audit.symbol, audit.day, digest.hexdigest())
        doc = curated_manifest(audit, data_key, merged, path.stat().st_size, digest.hexdigest(),
                               int(time.time() * 1000) if now_ms is None else now_ms, len(sources))
        previous = _previous_data_key(s3, audit.bucket, manifest_key)
        previous_tables = curated_tables.previous_keys(s3, audit.bucket, manifest_key)
        s3.upload_file(str(path), audit.bucket, data_key,
                       ExtraArgs={"ServerSideEncryption": "AES256", "ContentType": "application/gzip"})
        doc["tables"] = curated_tables.upload(s3, audit.bucket,
                                              curated_tables.build(trades_path, audit.symbol, audit.day))
    # The manifest is the switch: it names data objects that are already complete.
    s3.put_object(Bucket=audit.bucket, Key=manifest_key, Body=manifest.encode(doc),
                  ServerSideEncryption="AES256", ContentType="application/json")
    if previous is not None and previous != data_key:
        s3.delete_object(Bucket=audit.bucket, Key=previous)
    curated_tables.delete_stale(s3, audit.bucket, previous_tables, doc["tables"])
    return Curated(data_key, manifest_key, doc, time.monotonic() - started)


def curated_manifest(audit: Audit, data_key: str, m: Merged, compressed_bytes: int, sha256: str,
                     created_at_ms: int, objects: int) -> dict[str, Any]:
    holes = m.holes()
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": CURATED_KIND,
        "source": {"exchange": EXCHANGE, "stream": STREAM, "symbol": audit.symbol, "date": audit.day.isoformat(),
                   "instances": sorted({e.instance_id for e in audit.entries}), "objects": objects},
        "payload": {
            "bucket": audit.bucket, "key": data_key, "format": "jsonl", "compression": "gzip",
            "record_count": m.records,
            "min_event_time": m.min_event_time, "max_event_time": m.max_event_time,
            "min_trade_time": m.min_trade_time, "max_trade_time": m.max_trade_time,
            "first_trade_id": m.first.trade_id if m.first else None,
            "last_trade_id": m.last.trade_id if m.last else None,
            "uncompressed_bytes": m.uncompressed_bytes, "compressed_bytes": compressed_bytes, "sha256": sha256,
        },
        "complete": not holes,
        "holes": [h._asdict() for h in holes],
        "quality": {"duplicates_dropped": m.duplicates_dropped, "disagreements": m.disagreements,
                    "disagreement_sample": m.disagreement_sample,
                    "rejected_manifests": sorted(audit.rejected),
                    "damaged_objects": sorted({*audit.mismatches, *m.damaged})},
        "created_at": iso_millis(created_at_ms),
    }
