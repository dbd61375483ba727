"""Phases 1 and 2: the bare client and the collector against the flooding feed, one compression at a time."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.collector_proc import CollectorProc
from bench.procs import Child
from bench.procstat import Sample
from collector.spool import unshipped
from sandbox.local_s3 import LocalS3
from sandbox.verify import check_bucket

SYMBOL = "BTCUSDT"
BARE_MODULE = "bench.bare_client"


def ceiling(url: str, compression: str, seconds: float) -> dict[str, Any]:
    """A bare websockets client: messages/s and CPU per message, from its connection to its stop."""
    start: list[Sample] = []

    def on_line(child: Child, line: str) -> None:
        if line.startswith("connected"):
            start.append(child.sample())

    bare = Child(f"bare-{compression}", [BARE_MODULE, url, SYMBOL, "--compression", compression], on_line=on_line)
    try:
        extensions = bare.wait_for("connected")[0].split(" ", 2)[2]
        time.sleep(seconds)
        end = bare.sample()
    finally:
        bare.stop()
    count = int(bare.wait_for("count ")[0].split()[1])
    return {
        "compression": compression,
        "extensions": extensions,
        "messages": count,
        "seconds": round(end.at - start[0].at, 3),
        "msgs_per_s": count / (end.at - start[0].at),
        "cpu_us_per_msg": (end.cpu - start[0].cpu) / count * 1e6,
    }


def collector(url: str, s3: LocalS3, compression: str, seconds: float) -> dict[str, Any]:
    """The full pipeline: CPU from the connection to the exit (every file sealed and uploaded), per record
    that landed in S3; every object re-checked against its manifest."""
    bucket = f"bench-flood-{compression}"
    s3.create_bucket(bucket)
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        spool = Path(tmp)
        proc = CollectorProc(s3=s3, bucket=bucket, url=url, symbols=[SYMBOL], spool=spool, compression=compression)
        try:
            proc.wait_for("connected /ws/")
            time.sleep(seconds)
            stopped_at = time.monotonic()
        finally:
            end = proc.stop()
        spool_left = unshipped(spool)
    landing = check_bucket(s3.client(), bucket)
    records = sum(o.records for o in landing.objects)
    start = proc.connected[0]
    window = stopped_at - start.at
    return {
        "compression": compression,
        "extensions": proc.extensions[0],
        "exit_status": end.status,
        "received": proc.rotated_records(),
        "written": records,
        "objects": len(landing.objects),
        "verify_problems": landing.problems[:10],
        "spool_left": spool_left,
        "seconds": round(window, 3),
        "msgs_per_s": records / window if window else 0.0,
        "cpu_us_per_msg": (end.cpu - start.cpu) / records * 1e6 if records else float("nan"),
        "peak_rss_mib": end.peak_rss_kib / 1024,
    }
