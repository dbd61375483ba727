"""`python -m audit compact`: one deduplicated, id-ordered day per symbol under curated/.

The data objects of every replica and of the backfill are merged by trade id, streaming: objects are opened
in order of their first id, so only those that overlap the merge point are open at once, and a bounded window
of them is fetched ahead. Lines stay byte-identical to the raw ones; where two sources hold different bytes for
one id, the first source wins (replicas before the backfill, then by instance and key) and it is reported.
The curated manifest certifies `complete: true` or lists the holes. The output is deterministic (same
sources, same bytes), so a re-run writes the same objects again.
"""

from __future__ import annotations

import hashlib
import heapq
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from isal import igzip

from audit import bucket
from audit.check import Audit
from audit.entries import Entry
from audit.ranges import Hole
from collector.config import GZIP_LEVEL
from collector.keys import BACKFILL_INSTANCE, EXCHANGE, STREAM, curated_keys
from collector.manifest import SCHEMA_VERSION, iso_millis
from collector.spool import open_gzip

# Objects fetched ahead of the merge point: enough to hide S3's latency, few enough to bound memory
# (a data object is at most 2 MiB of JSONL, a fraction of that compressed).
PREFETCH = 32
DISAGREEMENT_SAMPLE = 20


def source_order(entry: Entry) -> tuple[bool, str, str]:
    """Which source wins for an id several hold: replicas before the backfill, then by instance, then key."""
    return (entry.instance_id == BACKFILL_INSTANCE, entry.instance_id, entry.data_key)


@dataclass
class Merged:
    """What the merge saw, beside the lines it wrote."""

    records: int = 0
    first_trade_id: int | None = None
    last_trade_id: int | None = None
    min_event_time: int | None = None
    max_event_time: int | None = None
    min_trade_time: int | None = None
    max_trade_time: int | None = None
    uncompressed_bytes: int = 0
    duplicates_dropped: int = 0
    disagreements: int = 0
    disagreement_sample: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[Hole] = field(default_factory=list)  # id jumps inside the day's output
    bracket_before: bool = False  # the trade just before the first output id is held and is before midnight
    bracket_after: bool = False


def _lines(body: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    for line in igzip.decompress(body).splitlines():
        event = orjson.loads(line)
        yield event["t"], event["T"], event["E"], line


def merge_into(out: Any, bodies: Iterator[tuple[int, Entry, bytes]], start_ms: int, end_ms: int) -> Merged:
    """Write the day's lines of `bodies` (given in order of first id) to `out`, each id once. No S3 here."""
    m = Merged()
    heap: list[tuple[int, int, int, int, bytes, Iterator[tuple[int, int, int, bytes]], str]] = []
    pending = iter(bodies)
    nxt = next(pending, None)
    kept: dict[int, tuple[bytes, str]] = {}  # only the last id written: a duplicate follows it directly
    last_id: int | None = None  # last id seen in id order (written or not)
    last_time: int | None = None
    while heap or nxt is not None:
        # Open every object that starts at or before the merge point before taking the next line.
        while nxt is not None and (not heap or nxt[1].first_trade_id <= heap[0][0]):
            rank, entry, body = nxt
            lines = _lines(body)
            first = next(lines, None)
            if first is not None:
                heapq.heappush(heap, (first[0], rank, first[1], first[2], first[3], lines, entry.data_key))
            nxt = next(pending, None)
        trade_id, rank, trade_time, event_time, line, lines, key = heapq.heappop(heap)
        following = next(lines, None)
        if following is not None:
            heapq.heappush(heap, (following[0], rank, following[1], following[2], following[3], lines, key))
        if trade_id == last_id:
            if trade_id in kept:
                m.duplicates_dropped += 1
                kept_line, kept_key = kept[trade_id]
                if line != kept_line:
                    m.disagreements += 1
                    if len(m.disagreement_sample) < DISAGREEMENT_SAMPLE:
                        m.disagreement_sample.append({"trade_id": trade_id, "kept": kept_key, "dropped": key})
            continue
        in_day = start_ms <= trade_time < end_ms
        if in_day:
            if m.last_trade_id is None:
                m.bracket_before = last_id == trade_id - 1 and last_time is not None and last_time < start_ms
            elif trade_id > m.last_trade_id + 1:
                m.gaps.append(Hole(m.last_trade_id + 1, trade_id - 1, last_time, trade_time))
            out.write(line + b"\n")
            kept.clear()
            kept[trade_id] = (line, key)
            m.records += 1
            m.uncompressed_bytes += len(line) + 1
            if m.first_trade_id is None:
                m.first_trade_id = trade_id
                m.min_event_time = m.max_event_time = event_time
                m.min_trade_time = m.max_trade_time = trade_time
            m.last_trade_id = trade_id
            m.min_event_time = min(m.min_event_time, event_time)  # type: ignore[type-var]
            m.max_event_time = max(m.max_event_time, event_time)  # type: ignore[type-var]
            m.min_trade_time = min(m.min_trade_time, trade_time)  # type: ignore[type-var]
            m.max_trade_time = max(m.max_trade_time, trade_time)  # type: ignore[type-var]
        else:
            kept.clear()
            if trade_time >= end_ms and m.last_trade_id is not None and trade_id == m.last_trade_id + 1:
                m.bracket_after = True
        last_id, last_time = trade_id, trade_time
    return m


def _fetch_in_order(s3: Any, name: str, entries: list[Entry], damaged: list[str]
                    ) -> Iterator[tuple[int, Entry, bytes]]:
    """Bodies in order of first id, at most PREFETCH in flight or waiting. A body whose sha256 is not its
    manifest's is left out and its key added to `damaged`: the other replicas stand in for it."""
    ordered = sorted(entries, key=lambda e: (e.first_trade_id, source_order(e)))
    rank = {e.data_key: i for i, e in enumerate(sorted(entries, key=source_order))}
    with ThreadPoolExecutor(max_workers=min(bucket.WORKERS, PREFETCH)) as pool:
        window: deque[tuple[Entry, Future[bytes]]] = deque()
        todo = iter(ordered)
        for entry in todo:
            window.append((entry, pool.submit(lambda k: s3.get_object(Bucket=name, Key=k)["Body"].read(),
                                              entry.data_key)))
            if len(window) >= PREFETCH:
                break
        while window:
            entry, future = window.popleft()
            following = next(todo, None)
            if following is not None:
                window.append((following, pool.submit(
                    lambda k: s3.get_object(Bucket=name, Key=k)["Body"].read(), following.data_key)))
            body = future.result()
            if hashlib.sha256(body).hexdigest() == entry.sha256:
                yield rank[entry.data_key], entry, body
            else:
                damaged.append(entry.data_key)


@dataclass
class Curated:
    data_key: str
    manifest_key: str
    manifest: dict[str, Any]
    seconds: float


def run(s3: Any, audit: Audit, *, quiet: bool = False, now_ms: int | None = None) -> Curated:
    started = time.monotonic()
    cov = audit.coverage
    sources = [e for e in audit.entries if e.max_trade_time >= cov.start_ms and e.min_trade_time < cov.end_ms]
    # The neighbours of the day's edges are read too, so that the trade on the other side of midnight is seen.
    before = [e for e in audit.entries if e.max_trade_time < cov.start_ms]
    after = [e for e in audit.entries if e.min_trade_time >= cov.end_ms]
    if before:
        sources.append(max(before, key=lambda e: (e.last_trade_id, source_order(e))))
    if after:
        sources.append(min(after, key=lambda e: (e.first_trade_id, source_order(e))))
    data_key, manifest_key = curated_keys(audit.symbol, audit.day)
    with tempfile.TemporaryDirectory(prefix="curated-") as tmp:
        path = Path(tmp) / "day.jsonl.gz"
        with path.open("wb") as raw, open_gzip(raw, GZIP_LEVEL) as out:
            damaged: list[str] = []
            bodies = bucket.progress(_fetch_in_order(s3, audit.bucket, sources, damaged), total=len(sources),
                                     desc="merging", quiet=quiet)
            merged = merge_into(out, bodies, cov.start_ms, cov.end_ms)
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        size = path.stat().st_size
        holes = list(merged.gaps)
        if merged.first_trade_id is None:
            holes = [Hole(None, None, None, None)]
        else:
            if not merged.bracket_before:
                holes.insert(0, Hole(None, merged.first_trade_id - 1, None, merged.min_trade_time))
            if not merged.bracket_after:
                holes.append(Hole(merged.last_trade_id + 1, None, merged.max_trade_time, None))  # type: ignore[operator]
        doc = curated_manifest(audit, data_key, merged, holes, size, digest.hexdigest(),
                               now_ms if now_ms is not None else int(time.time() * 1000), len(sources), damaged)
        s3.upload_file(str(path), audit.bucket, data_key,
                       ExtraArgs={"ServerSideEncryption": "AES256", "ContentType": "application/gzip"})
    # The manifest goes last: it certifies a data object that is already there.
    s3.put_object(Bucket=audit.bucket, Key=manifest_key, Body=orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n",
                  ServerSideEncryption="AES256", ContentType="application/json")
    return Curated(data_key, manifest_key, doc, time.monotonic() - started)


def curated_manifest(audit: Audit, data_key: str, m: Merged, holes: list[Hole], compressed_bytes: int, sha256: str,
                     created_at_ms: int, objects: int, damaged: list[str]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "curated-day",
        "source": {"exchange": EXCHANGE, "stream": STREAM, "symbol": audit.symbol, "date": audit.day.isoformat(),
                   "instances": sorted(audit.coverage.instances), "objects": objects},
        "payload": {
            "bucket": audit.bucket, "key": data_key, "format": "jsonl", "compression": "gzip",
            "record_count": m.records,
            "min_event_time": m.min_event_time, "max_event_time": m.max_event_time,
            "min_trade_time": m.min_trade_time, "max_trade_time": m.max_trade_time,
            "first_trade_id": m.first_trade_id, "last_trade_id": m.last_trade_id,
            "uncompressed_bytes": m.uncompressed_bytes, "compressed_bytes": compressed_bytes, "sha256": sha256,
        },
        "complete": not holes,
        "holes": [h._asdict() for h in holes],
        "quality": {"duplicates_dropped": m.duplicates_dropped, "disagreements": m.disagreements,
                    "disagreement_sample": m.disagreement_sample,
                    "rejected_manifests": sorted(audit.rejected),
                    "mismatched_objects": sorted({*audit.mismatches, *damaged})},
        "created_at": iso_millis(created_at_ms),
    }
