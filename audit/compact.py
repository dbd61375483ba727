"""`python -m audit compact`: one deduplicated, id-ordered, corroborated day per symbol under curated/.

The data objects of every replica and of the backfill are merged by trade id, streaming: objects are opened
in order of their first id, so only those that overlap the merge point are open at once, and a bounded window
of them is fetched ahead. Each object is checked whole against its manifest as it is opened; one that is not
what its manifest says (sha256, sizes, ids, a line that is not a trade, ids going back) is quarantined, named
in the manifest, and the other sources stand in for it. All copies of an id are decided together
(`audit.corroborate`): lines stay byte-identical to a raw one (or are the exchange's, where it overrules every
replica). The curated manifest certifies `complete: true` only when no id of the day is missing and every line
is corroborated; otherwise it lists the holes and the uncorroborated ids. The output is deterministic (same
sources and answers, same bytes), and its data object is named by its sha256, so a re-run never leaves a
manifest that describes other bytes than those it names.
"""

from __future__ import annotations

import hashlib
import heapq
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import msgspec
from botocore.exceptions import ClientError

from audit import bucket, curated_tables
from audit.binance_rest import HistoricalTrades
from audit.check import Audit
from audit.corroborate import (
    CERTIFIED,
    DEFAULT_MODE,
    Certificate,
    Copy,
    Exchange,
    How,
    Judge,
    Mode,
    judge_with,
)
from audit.days import reaches_into
from audit.entries import MAX_OBJECT_BYTES, Entry, instance_order
from audit.objects import Line, check_object
from audit.parquet_day import TradesParquet
from audit.ranges import Hole
from collector import manifest
from collector.config import GZIP_LEVEL
from collector.keys import EXCHANGE, STREAM, curated_data_key, curated_manifest_key
from collector.manifest import SCHEMA_VERSION, iso_millis
from collector.spool import open_gzip

# Objects fetched ahead of the merge point: enough to hide S3's latency, few enough to bound memory
# (a data object is at most 2 MiB of JSONL, a fraction of that compressed).
PREFETCH = 32
CURATED_KIND = "curated-day"


def source_order(entry: Entry) -> tuple[tuple[bool, str], str]:
    """The order of the copies of an id, which breaks ties between equally supported ones: replicas by
    instance, then the backfill, then by key."""
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

    certificate: Certificate
    records: int = 0
    first: Seen | None = None  # first and last line written
    last: Seen | None = None
    min_event_time: int | None = None
    max_event_time: int | None = None
    min_trade_time: int | None = None
    max_trade_time: int | None = None
    uncompressed_bytes: int = 0
    duplicates_dropped: int = 0
    gaps: list[Hole] = field(default_factory=list)  # id jumps between the lines written
    last_before: Seen | None = None  # the last line before the day, in id order
    first_after: Seen | None = None  # the first line after the day
    last_before_how: How | None = None  # what vouches for those two
    first_after_how: How | None = None
    quarantined: dict[str, str] = field(default_factory=dict)  # data key → why it was left out

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

    def uncorroborated(self) -> list[tuple[int, int]]:
        """Runs of ids whose lines nothing vouches for: the day's, and the lines that close its edges."""
        runs = [(first, last) for first, last in self.certificate.uncorroborated]
        edges = [(seen.trade_id, seen.trade_id) for seen, how in ((self.last_before, self.last_before_how),
                                                                 (self.first_after, self.first_after_how))
                 if seen is not None and how not in CERTIFIED]
        joined: list[tuple[int, int]] = []
        for first, last in sorted(runs + edges):
            if joined and first == joined[-1][1] + 1:
                joined[-1] = (joined[-1][0], last)
            else:
                joined.append((first, last))
        return joined


def _opened(entry: Entry, body: bytes, symbol: str, m: Merged) -> Iterator[Line] | None:
    """The object's lines, or None (and the key in `m.quarantined`) when it is not what its manifest says:
    those ids are taken from the other sources."""
    checked = check_object(entry, body, symbol)
    if checked.problems:
        m.quarantined[entry.data_key] = "; ".join(checked.problems)
        return None
    return iter(checked.trades)


def merge_into(out: BinaryIO, bodies: Iterable[tuple[int, Entry, bytes]], symbol: str, start_ms: int,
               end_ms: int, *, judge: Judge, certificate: Certificate,
               kept: Callable[[bytes, How], None] | None = None) -> Merged:
    """Write the day's lines of `bodies` (given in order of first id; the int ranks the source, lower first)
    to `out`, each id once, in id order, as `judge` decides from all the copies of it; `kept` also gets each
    line written, with what vouches for it. No S3 here."""
    m = Merged(certificate)
    heap: list[tuple[int, int, Line, Iterator[Line], Entry]] = []
    pending = iter(bodies)
    nxt = next(pending, None)
    # Nothing after the first trade past midnight bears on the day (ids grow with trade time): stop there.
    while (heap or nxt is not None) and m.first_after is None:
        # Open every object that starts at or before the merge point: then every copy of that id is at hand.
        while nxt is not None and (not heap or nxt[1].first_trade_id <= heap[0][0]):
            rank, entry, body = nxt
            lines = _opened(entry, body, symbol, m)
            first = None if lines is None else next(lines, None)
            if lines is not None and first is not None:
                heapq.heappush(heap, (first[0], rank, first, lines, entry))
            nxt = next(pending, None)
        if not heap:
            continue
        trade_id = heap[0][0]
        copies = []
        while heap and heap[0][0] == trade_id:
            _, rank, (_, trade_time, event_time, line), lines, entry = heap[0]
            copies.append(Copy(entry.instance_id, entry.data_key, trade_time, event_time, line))
            following = next(lines, None)
            if following is None:
                heapq.heappop(heap)
            else:  # its next id is above this one: it takes the popped place in one sift
                heapq.heapreplace(heap, (following[0], rank, following, lines, entry))
        decision = judge(trade_id, copies)
        if decision.lost:
            certificate.dispute(trade_id, decision)
        if decision.line is None:  # no such trade: the id stays a hole
            continue
        seen = Seen(trade_id, decision.trade_time)
        if decision.trade_time < start_ms:
            if m.first is None:
                m.last_before, m.last_before_how = seen, decision.how
            continue
        if decision.trade_time >= end_ms:
            m.first_after, m.first_after_how = seen, decision.how
            continue
        if m.last is not None and trade_id > m.last.trade_id + 1:
            m.gaps.append(Hole(m.last.trade_id + 1, trade_id - 1, m.last.trade_time, decision.trade_time))
        out.write(decision.line + b"\n")
        assert decision.how is not None
        if kept is not None:
            kept(decision.line, decision.how)
        certificate.count(trade_id, decision.how)
        m.duplicates_dropped += len(copies) - 1
        m.records += 1
        m.uncompressed_bytes += len(decision.line) + 1
        event_time = decision.event_time
        if m.first is None:
            m.first = seen
            m.min_event_time = m.max_event_time = event_time
            m.min_trade_time = m.max_trade_time = decision.trade_time
        m.last = seen
        m.min_event_time = min(m.min_event_time, event_time)  # type: ignore[type-var]
        m.max_event_time = max(m.max_event_time, event_time)  # type: ignore[type-var]
        m.min_trade_time = min(m.min_trade_time, decision.trade_time)  # type: ignore[type-var]
        m.max_trade_time = max(m.max_trade_time, decision.trade_time)  # type: ignore[type-var]
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
                window.append((entry, pool.submit(bucket.read, s3, name, entry.data_key,
                                                  limit=entry.compressed_bytes)))

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
        return msgspec.json.decode(bucket.read(s3, name, manifest_key, limit=MAX_OBJECT_BYTES))["payload"]["key"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


def run(s3: Any, audit: Audit, *, mode: Mode = DEFAULT_MODE, history: HistoricalTrades | None = None,
        quiet: bool = False, now_ms: int | None = None, prune: bool = True, certified_only: bool = False
        ) -> Curated:
    """Compact `audit`'s day; `history` is asked what `mode` says (None: the exchange cannot be asked).
    For a caller that may not delete (the daily job): `prune=False` leaves the objects only a previous manifest
    named, and `certified_only` uploads nothing unless the day is certified, so that such a caller writes a day
    once and never supersedes its own objects."""
    started = time.monotonic()
    cov = audit.coverage
    sources = choose_sources(audit.entries, cov.start_ms, cov.end_ms)
    manifest_key = curated_manifest_key(audit.symbol, audit.day)
    exchange = Exchange(None if history is None else lambda from_id, limit: history.page(audit.symbol, from_id,
                                                                                         limit))
    with tempfile.TemporaryDirectory(prefix="curated-") as tmp:
        path = Path(tmp) / "day.jsonl.gz"
        trades_path = Path(tmp) / "trades.parquet"
        with path.open("wb") as raw, open_gzip(raw, GZIP_LEVEL) as out, TradesParquet(trades_path) as table:
            bodies = bucket.progress(_fetch_in_order(s3, audit.bucket, sources), total=len(sources),
                                     desc="merging", quiet=quiet)
            merged = merge_into(out, bodies, audit.symbol, cov.start_ms, cov.end_ms,
                                judge=judge_with(mode, exchange, audit.symbol), certificate=Certificate(mode),
                                kept=table.add)
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        data_key = curated_data_key(audit.symbol, audit.day, digest.hexdigest())
        asked = {"ids_asked": exchange.ids_asked, "calls": 0 if history is None else history.calls,
                 "weight": 0 if history is None else history.weight_used, "unreachable": exchange.unreachable}
        doc = curated_manifest(audit, data_key, merged, path.stat().st_size, digest.hexdigest(),
                               int(time.time() * 1000) if now_ms is None else now_ms, len(sources), asked)
        if certified_only and not doc["complete"]:
            return Curated(data_key, manifest_key, doc, time.monotonic() - started)  # nothing uploaded
        previous = _previous_data_key(s3, audit.bucket, manifest_key)
        previous_tables = curated_tables.previous_keys(s3, audit.bucket, manifest_key)
        s3.upload_file(str(path), audit.bucket, data_key,
                       ExtraArgs={"ServerSideEncryption": "AES256", "ContentType": "application/gzip"})
        doc["tables"] = curated_tables.upload(s3, audit.bucket,
                                              curated_tables.build(trades_path, audit.symbol, audit.day))
    # The manifest is the switch: it names data objects that are already complete.
    s3.put_object(Bucket=audit.bucket, Key=manifest_key, Body=manifest.encode(doc),
                  ServerSideEncryption="AES256", ContentType="application/json")
    if prune:
        if previous is not None and previous != data_key:
            s3.delete_object(Bucket=audit.bucket, Key=previous)
        curated_tables.delete_stale(s3, audit.bucket, previous_tables, doc["tables"])
    return Curated(data_key, manifest_key, doc, time.monotonic() - started)


def curated_manifest(audit: Audit, data_key: str, m: Merged, compressed_bytes: int, sha256: str,
                     created_at_ms: int, objects: int, exchange: dict[str, Any]) -> dict[str, Any]:
    holes = m.holes()
    uncorroborated = m.uncorroborated()
    damaged = {**{key: "; ".join(problems) for key, problems in audit.mismatches.items()}, **m.quarantined}
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
        "complete": not holes and not uncorroborated,
        "holes": [h._asdict() for h in holes],
        "corroboration": m.certificate.as_json(uncorroborated, exchange),
        "quality": {"duplicates_dropped": m.duplicates_dropped,
                    "rejected_manifests": sorted(audit.rejected),
                    "damaged_objects": [{"key": key, "reason": damaged[key]} for key in sorted(damaged)]},
        "created_at": iso_millis(created_at_ms),
    }
