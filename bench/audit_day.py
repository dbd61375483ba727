"""`make bench-audit`: the audit of one full day (3 replicas x 17,280 five-second files, plus the hour on
either side that the audit also reads: 56,160 manifests) against an S3 stand-in that answers from memory
after a fixed per-request latency.

moto answers ~350 requests/s on this machine, so it would measure moto, not the audit; this stand-in adds a
latency per request (sleeping, so the GIL is free, as it is while boto3 waits on a socket) and so measures
what the audit controls: requests in flight, and its own CPU per manifest (JSON parse, schema check,
coverage). Then the curated day is compacted from the three replicas (every data object read, 4.7 million
trades a replica) into its JSONL, its Parquet and its bars, with its time and the memory it adds at its
peak. Prints the numbers and writes bench/audit_results.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import resource
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from isal import igzip

from audit import check, compact
from audit.days import day_bounds_ms
from audit.report import table
from collector import manifest
from collector.config import GZIP_LEVEL
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
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        return {"Body": io.BytesIO(self.objects[Key])}

    def upload_file(self, filename: str, Bucket: str, Key: str, ExtraArgs: dict[str, str]) -> None:
        self._request()
        self.objects[Key] = Path(filename).read_bytes()

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: str) -> None:
        self._request()
        self.objects[Key] = Body

    def delete_object(self, *, Bucket: str, Key: str) -> None:
        self._request()
        del self.objects[Key]

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


def _body(first_id: int, opened: int) -> bytes:
    """One file's trades, spelled as Binance spells them, gzip as the collector writes them."""
    lines = b"".join(
        b'{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,"p":"43123.45000000","q":"0.00123000","T":%d,"m":true,"M":true}\n'
        % (opened + 20 * i + 1, first_id + i, opened + 20 * i) for i in range(TRADES_PER_FILE))
    return igzip.compress(lines, GZIP_LEVEL, mtime=0)


def full_day() -> dict[str, bytes]:
    """Every manifest and data object of the day: three replicas holding the same trades."""
    start, end = day_bounds_ms(DAY)
    objects: dict[str, bytes] = {}
    first_id = 5_400_000_001
    for offset, opened in enumerate(range(start - 3_600_000, end + 3_600_000, FILE_MS)):
        file_first = first_id + offset * TRADES_PER_FILE
        body = _body(file_first, opened)
        stats = FileStats(record_count=TRADES_PER_FILE, uncompressed_bytes=len(igzip.decompress(body)),
                          min_event_time=opened + 1, max_event_time=opened + 20 * (TRADES_PER_FILE - 1) + 1,
                          min_trade_time=opened, max_trade_time=opened + 20 * (TRADES_PER_FILE - 1),
                          first_trade_id=file_first, last_trade_id=file_first + TRADES_PER_FILE - 1)
        for instance in INSTANCES:
            part = Part("BTCUSDT", instance, opened + 3)
            doc = manifest.build(part=part, stats=stats, bucket="bench-bucket", compressed_bytes=len(body),
                                 sha256=hashlib.sha256(body).hexdigest(), created_at_ms=opened + FILE_MS + 900)
            objects[part.manifest_key] = manifest.encode(doc)
            objects[part.data_key] = body
    return objects


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_compact(objects: dict[str, bytes], latency: float) -> dict[str, Any]:
    """The curated day from the three replicas: time, CPU, and how much memory it adds at its peak."""
    s3 = LatencyS3(objects, latency)
    audit = check.run(s3, "bench-bucket", "BTCUSDT", DAY, quiet=True)
    baseline = _rss_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    curated = compact.run(s3, audit, quiet=True)
    wall = time.monotonic() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    assert curated.manifest["complete"], curated.manifest["holes"]
    trades = curated.manifest["tables"]["trades"]
    return {"latency_ms": latency * 1000, "objects": curated.manifest["source"]["objects"],
            "records": curated.manifest["payload"]["record_count"], "wall_s": round(wall, 2),
            "cpu_s": round(cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime, 2),
            "peak_extra_mib": round(_rss_mib("VmHWM") - baseline, 1),
            "jsonl_gzip_mib": round(curated.manifest["payload"]["compressed_bytes"] / 2**20, 1),
            "parquet_mib": round(trades["bytes"] / 2**20, 1), "parquet_row_groups": trades["row_groups"],
            "bars_1s": curated.manifest["tables"]["bars_1s"]["rows"]}


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
    parser.add_argument("--compact-latency-ms", type=float, default=10.0,
                        help="per-request latency for the compaction (default: %(default)s)")
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
    merged = measure_compact(objects, args.compact_latency_ms / 1000)
    print(f"\ncompact at {merged['latency_ms']:.0f} ms/request: {merged['objects']} objects, {merged['records']} "
          f"trades in {merged['wall_s']:.1f} s ({merged['cpu_s']:.1f} s CPU), memory at its peak "
          f"+{merged['peak_extra_mib']:.0f} MiB; JSONL gzip {merged['jsonl_gzip_mib']} MiB, Parquet (zstd) "
          f"{merged['parquet_mib']} MiB in {merged['parquet_row_groups']} row groups, {merged['bars_1s']} 1 s bars")
    RESULTS.write_text(json.dumps({"day": DAY.isoformat(), "rows": rows, "compact": merged}, indent=2) + "\n")


if __name__ == "__main__":
    main()
