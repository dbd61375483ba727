"""`make bench-audit`: the audit of one full day (3 replicas x 17,280 five-second files, plus the hour on
either side that the audit also reads: 56,160 manifests) against an S3 stand-in that answers from memory
after a fixed per-request latency.

moto answers ~350 requests/s on this machine, so it would measure moto, not the audit; this stand-in adds a
latency per request (sleeping, so the GIL is free, as it is while boto3 waits on a socket) and so measures
what the audit controls: requests in flight, and its own CPU per manifest (JSON parse, schema check,
coverage). Prints the times for a few latencies and writes bench/audit_results.json.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from audit import check
from audit.days import day_bounds_ms
from audit.report import table
from collector import manifest
from collector.keys import Part
from collector.stats import FileStats

RESULTS = Path(__file__).resolve().parent / "audit_results.json"
DAY = date(2026, 11, 28)
FILE_MS = 5_000
INSTANCES = ("i-0a1b2c3d4e5f60001", "i-0a1b2c3d4e5f60002", "i-0a1b2c3d4e5f60003")
TRADES_PER_FILE = 250  # ~50 trades/s, a busy BTCUSDT hour
LIST_PAGE = 1000


class LatencyS3:
    """The calls the audit makes (ListObjectsV2 pages, GetObject), from a dict, each after `latency` s."""

    def __init__(self, objects: dict[str, bytes], latency: float) -> None:
        self.objects = objects
        self.keys = sorted(objects)
        self.latency = latency
        self.requests = 0
        self._lock = threading.Lock()

    def _request(self) -> None:
        with self._lock:
            self.requests += 1
        time.sleep(self.latency)

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._request()
        return {"Body": io.BytesIO(self.objects[Key])}

    def get_paginator(self, name: str) -> LatencyS3:
        assert name == "list_objects_v2"
        return self

    def paginate(self, *, Bucket: str, Prefix: str) -> Iterator[dict[str, Any]]:
        import bisect

        i = bisect.bisect_left(self.keys, Prefix)
        while True:
            self._request()
            page = []
            while i < len(self.keys) and self.keys[i].startswith(Prefix) and len(page) < LIST_PAGE:
                # A data object's stand-in has the size its manifest says, so the listing matches.
                key = self.keys[i]
                page.append({"Key": key, "Size": len(self.objects[key])})
                i += 1
            yield {"Contents": page}
            if len(page) < LIST_PAGE:
                return


def full_day() -> dict[str, bytes]:
    """Every manifest of the day, and a same-sized stand-in for each data object (never read unless a
    manifest shows ids missing inside its file, which none here does)."""
    start, end = day_bounds_ms(DAY)
    objects: dict[str, bytes] = {}
    first_id = 5_400_000_001
    for offset, opened in enumerate(range(start - 3_600_000, end + 3_600_000, FILE_MS)):
        stats = FileStats(record_count=TRADES_PER_FILE, uncompressed_bytes=TRADES_PER_FILE * 135,
                          min_event_time=opened + 1, max_event_time=opened + FILE_MS - 1,
                          min_trade_time=opened, max_trade_time=opened + FILE_MS - 2,
                          first_trade_id=first_id + offset * TRADES_PER_FILE,
                          last_trade_id=first_id + (offset + 1) * TRADES_PER_FILE - 1)
        for instance in INSTANCES:
            part = Part("BTCUSDT", instance, opened + 3)
            compressed = 4_800 + offset % 97
            doc = manifest.build(part=part, stats=stats, bucket="bench-bucket", compressed_bytes=compressed,
                                 sha256="0" * 64, created_at_ms=opened + FILE_MS + 900)
            objects[part.manifest_key] = manifest.encode(doc)
            objects[part.data_key] = bytes(compressed)
    return objects


def measure(objects: dict[str, bytes], latency: float) -> dict[str, Any]:
    s3 = LatencyS3(objects, latency)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    audit = check.run(s3, "bench-bucket", "BTCUSDT", DAY, quiet=True)
    wall = time.monotonic() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    assert audit.complete, table(audit)
    return {"latency_ms": latency * 1000, "manifests": audit.manifests_listed, "requests": s3.requests,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "cpu_us_per_manifest": round(cpu / audit.manifests_listed * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_day", description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 10.0, 30.0],
                        help="per-request latencies to measure (default: %(default)s)")
    args = parser.parse_args()
    t = time.monotonic()
    objects = full_day()
    print(f"a full day: {sum(k.endswith('.manifest.json') for k in objects)} manifests "
          f"(built in {time.monotonic() - t:.1f} s)")
    rows = [measure(objects, ms / 1000) for ms in args.latency_ms]
    print(f"\n{'latency/request':>16} {'requests':>9} {'wall s':>8} {'CPU s':>7} {'CPU µs/manifest':>16}")
    for r in rows:
        print(f"{r['latency_ms']:>13.0f} ms {r['requests']:>9} {r['wall_s']:>8.1f} {r['cpu_s']:>7.1f} "
              f"{r['cpu_us_per_manifest']:>16.0f}")
    worst = max(r["wall_s"] for r in rows)
    print(f"\ntarget: a full day in under 60 s: {'PASS' if worst < 60 else 'MISS'} (slowest: {worst:.1f} s)")
    RESULTS.write_text(json.dumps({"day": DAY.isoformat(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
