"""Phase 3: the feed at a steady rate in small bursts; the bare client and the collector side by side.

Both processes read the same feed (same symbols, same bursts) at the same time and are measured separately
from /proc over the same window, after a warm-up that leaves out start-up (imports, the boto3 client).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from bench.collector_proc import CollectorProc
from bench.procs import Child
from bench.procstat import cpu_share, percentile
from collector.keys import MANIFEST_PREFIX
from sandbox.local_s3 import LocalS3
from sandbox.verify import check_bucket

WARMUP_SECONDS = 2.0
POLL_SECONDS = 0.1


class ManifestWatch:
    """Polls `manifests/` every ~100 ms and keeps the wall-clock time each manifest was first listed."""

    def __init__(self, s3: LocalS3, bucket: str) -> None:
        self.client = s3.client()
        self.bucket = bucket
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="manifest-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            listed = time.time()
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                               Prefix=MANIFEST_PREFIX):
                for obj in page.get("Contents", []):
                    self.first_seen.setdefault(obj["Key"], listed)
            self._stop.wait(max(0.0, POLL_SECONDS - (time.monotonic() - started)))

    @contextlib.contextmanager
    def running(self) -> Iterator[ManifestWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)

    def latencies_ms(self, before: float) -> list[float]:
        """For every record of every manifest listed before `before` (wall clock): first listing minus `E`.

        Manifests of the files sealed at shutdown are left out: they are sealed early, not by rotation."""
        out: list[float] = []
        for key, seen in self.first_seen.items():
            if seen > before:
                continue
            doc = msgspec.json.decode(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            body = self.client.get_object(Bucket=self.bucket, Key=doc["payload"]["key"])["Body"].read()
            seen_ms = seen * 1000
            out += [seen_ms - msgspec.json.decode(line)["E"] for line in gzip.decompress(body).splitlines()]
        return out


def _lag(path: Path) -> dict[str, float] | None:
    """The collector's loop-lag report (proposed hook), or None when this collector does not write one."""
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    samples = [float(x) for x in doc.get("lag_ms", [])]
    if not samples:
        return None
    return {"samples": len(samples), "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "max_ms": max(samples)}


def run(s3: LocalS3, symbols: list[str], rate: float, seconds: float, rotate_seconds: float) -> dict[str, Any]:
    bucket = f"bench-steady-{len(symbols)}"
    s3.create_bucket(bucket)
    feed = Child("steady-feed", ["bench.feed_proc", "--rate", str(rate), "--burst-seconds", "0.05"])
    with contextlib.ExitStack() as stack:
        stack.callback(feed.cleanup)
        url = f"ws://127.0.0.1:{feed.wait_for('PORT ')[0].split()[1]}"
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-steady-")))
        (tmp / "spool").mkdir()
        lag_path = tmp / "lag.json"
        watch = stack.enter_context(ManifestWatch(s3, bucket).running())
        collector = CollectorProc(s3=s3, bucket=bucket, url=url, symbols=symbols, spool=tmp / "spool",
                                  compression="none", lag_report=lag_path)
        stack.callback(collector.cleanup)
        bare = Child("bare", ["bench.bare_client", url, ",".join(symbols), "--compression", "none"])
        stack.callback(bare.cleanup)
        collector.wait_for("connected /ws/", count=len(symbols))
        bare.wait_for("connected", count=len(symbols))
        time.sleep(WARMUP_SECONDS)
        first = {c.name: c.sample() for c in (bare, collector, feed)}
        time.sleep(seconds)
        last = {c.name: c.sample() for c in (bare, collector, feed)}
        stopped_wall = time.time()
        collector_exit = collector.stop()
        bare_exit = bare.stop()
        bare_count = int(bare.wait_for("count ")[0].split()[1])
        time.sleep(2 * POLL_SECONDS)  # let the watcher list what was uploaded during shutdown
        lag = _lag(lag_path)
    latencies = watch.latencies_ms(before=stopped_wall)
    landing = check_bucket(s3.client(), bucket)
    share = {name: cpu_share(first[name], last[name]) for name in first}
    return {
        "symbols": symbols,
        "rate_per_symbol": rate,
        "window_seconds": seconds,
        "bare": {"cpu_share": share["bare"], "peak_rss_mib": bare_exit.peak_rss_kib / 1024, "messages": bare_count},
        "collector": {
            "cpu_share": share["collector"],
            # VmHWM just before the exit: the whole life, start-up and shutdown included.
            "peak_rss_mib": collector_exit.peak_rss_kib / 1024,
            "exit_status": collector_exit.status,
            "extensions": sorted(set(collector.extensions)),
            "written": sum(o.records for o in landing.objects),
            "objects": len(landing.objects),
            "verify_problems": landing.problems[:10],
            "loop_lag": lag,
            "manifest_latency": {
                "records": len(latencies),
                "p50_ms": percentile(latencies, 50),
                "p99_ms": percentile(latencies, 99),
                "max_ms": max(latencies, default=float("nan")),
                "budget_ms": (rotate_seconds + 1.5) * 1000,
            },
        },
        "feed_cpu_share": share["steady-feed"],
    }
