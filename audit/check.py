"""`python -m audit check`: is one symbol's day complete across the replicas, and if not, where and why."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import msgspec

from audit import bucket
from audit.coverage import DayCoverage, day_coverage
from audit.days import day_bounds_ms, hours_to_read
from audit.entries import MANIFEST_MAX_BYTES, Entry, expected_data_key, problems
from audit.objects import ObjectCheck, check_object
from audit.ranges import Span
from collector.keys import BACKFILL_PREFIX, DATA_PREFIX, DATA_SUFFIX, MANIFEST_PREFIX, MANIFEST_SUFFIX, hour_prefix


@dataclass
class Audit:
    bucket: str
    symbol: str
    day: date
    coverage: DayCoverage
    entries: list[Entry]  # believed, and used for the coverage
    manifests_listed: int
    rejected: dict[str, list[str]] = field(default_factory=dict)  # manifest key → why it is not believed
    orphans: list[str] = field(default_factory=list)  # data objects without a manifest
    read_for_gaps: list[str] = field(default_factory=list)  # data objects read to locate gaps inside them
    verified: int | None = None  # data objects re-checked with --verify
    mismatches: dict[str, list[str]] = field(default_factory=dict)  # data key → what differs
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.coverage.complete


def partition_prefixes(symbol: str, day: date) -> list[str]:
    return [hour_prefix(prefix, symbol, d, h)
            for d, h in hours_to_read(day) for prefix in (MANIFEST_PREFIX, DATA_PREFIX, BACKFILL_PREFIX)]


def _believe(key: str, body: bytes, symbol: str, sizes: dict[str, int]) -> Entry | list[str]:
    """The manifest at `key` as an Entry, or why it is not believed."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        return [f"not JSON ({exc})"]
    found = problems(key, doc, symbol=symbol)
    if found:
        return found
    entry = Entry.from_doc(key, doc)
    size = sizes.get(entry.data_key)
    if size is None:
        return [f"data object {entry.data_key} missing"]
    if size != entry.compressed_bytes:
        return [f"data object is {size} bytes, manifest says {entry.compressed_bytes}"]
    return entry


def _read_manifests(s3: Any, name: str, keys: list[str], symbol: str, sizes: dict[str, int], quiet: bool
                    ) -> tuple[list[Entry], dict[str, list[str]]]:
    # Each worker parses and checks what it read, so that the checking overlaps the other requests' waits.
    def one(key: str) -> Entry | list[str]:
        if sizes[key] > MANIFEST_MAX_BYTES:
            return [f"{sizes[key]} bytes, over the {MANIFEST_MAX_BYTES}-byte cap for a manifest (not read)"]
        return _believe(key, bucket.read(s3, name, key, limit=MANIFEST_MAX_BYTES), symbol, sizes)

    results = bucket.concurrently(one, keys, desc="manifests", quiet=quiet)
    entries = [r for r in results if isinstance(r, Entry)]
    rejected = {key: r for key, r in zip(keys, results, strict=True) if not isinstance(r, Entry)}
    return entries, rejected


def _check_objects(s3: Any, name: str, entries: list[Entry], symbol: str, desc: str, quiet: bool
                   ) -> list[ObjectCheck]:
    def one(entry: Entry) -> ObjectCheck:
        result = check_object(entry, bucket.read(s3, name, entry.data_key, limit=entry.compressed_bytes), symbol)
        result.trades = []  # keep memory to what the audit needs: the spans
        return result

    return bucket.concurrently(one, entries, desc=desc, quiet=quiet)


def run(s3: Any, name: str, symbol: str, day: date, *, verify: bool = False, quiet: bool = False) -> Audit:
    started = time.monotonic()
    sizes = bucket.list_objects(s3, name, partition_prefixes(symbol, day), quiet=quiet)
    manifest_keys = sorted(k for k in sizes if k.endswith(MANIFEST_SUFFIX))
    entries, rejected = _read_manifests(s3, name, manifest_keys, symbol, sizes, quiet)
    described = {expected_data_key(k) for k in manifest_keys}
    orphans = sorted(k for k in sizes if k.endswith(DATA_SUFFIX) and k not in described)

    # Only the objects whose manifests cannot say which ids they hold are read, unless --verify reads all.
    to_read = entries if verify else [e for e in entries if e.inner_missing]
    checks = _check_objects(s3, name, to_read, symbol, "verifying" if verify else "locating gaps", quiet)
    mismatches = {e.data_key: c.problems for e, c in zip(to_read, checks, strict=True) if c.problems}
    exact: dict[str, list[Span]] = {e.data_key: c.spans for e, c in zip(to_read, checks, strict=True)}
    believed = [e for e in entries if e.data_key not in mismatches]
    start_ms, end_ms = day_bounds_ms(day)
    audit = Audit(name, symbol, day, day_coverage(believed, exact, start_ms, end_ms), believed, len(manifest_keys),
                  rejected, orphans, [e.data_key for e in to_read if e.inner_missing], None, mismatches)
    if verify:
        audit.verified = len(to_read)
    audit.seconds = time.monotonic() - started
    return audit

