"""Event-loop lag of the collector while one symbol's connection is replaced about every second.

Against the local feed (200 trades/s) and local S3, each for `--seconds`: a calm run for reference, planned
handovers (a connection lifetime of 2 s: a new connection, an overlap and a switch every 1 to 2 s) and dropped
connections (cut by the feed every second, reconnected after the backoff, which grows). The collector writes
its lag at exit (`COLLECTOR_LAG_REPORT`).

Run: `python -m bench.reconnect_storm --seconds 60`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.collector_proc import LAG_REPORT_ENV
from bench.procs import ROOT
from bench.procstat import percentile
from bench.report import LAG_P99_MS
from collector.config import ALLOW_INSECURE_WS_ENV
from sandbox.feed import FeedThread
from sandbox.local_s3 import running_s3

BUCKET = "bench-storm"
KINDS = ("calm", "handovers", "drops")


def storm(s3: Any, kind: str, seconds: float) -> dict[str, Any]:
    with FeedThread(rate=200) as feed, tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        lag_path = Path(tmp) / "lag.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "AWS_"))}
        env.update(s3.env(), COLLECTOR_BUCKET=BUCKET, COLLECTOR_WS_URL=feed.feed.url, COLLECTOR_SPOOL_DIR=tmp,
                   COLLECTOR_INSTANCE_ID="bench", COLLECTOR_RECONNECT_DELAY="0.2")
        env[ALLOW_INSECURE_WS_ENV] = "1"  # the local feed is ws://
        env[LAG_REPORT_ENV] = str(lag_path)
        if kind == "handovers":
            env["COLLECTOR_CONNECTION_LIFETIME"] = "2"
        proc = subprocess.Popen([sys.executable, "-m", "collector"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while feed.feed.handshakes == 0:
                if proc.poll() is not None:
                    raise RuntimeError(f"the collector exited with status {proc.returncode} before connecting")
                time.sleep(0.05)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(1)
                if kind == "drops":
                    feed.call(feed.feed.drop_connections)
            handshakes = feed.feed.handshakes
        finally:
            proc.terminate()
            status = proc.wait(30)
        samples = json.loads(lag_path.read_text())["lag_ms"]
    return {"storm": kind, "seconds": seconds, "connections": handshakes, "exit_status": status,
            "lag_samples": len(samples), "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "max_ms": max(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconnect_storm", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", nargs="+", choices=KINDS, default=list(KINDS))
    args = parser.parse_args()
    with running_s3("moto") as s3:
        s3.create_bucket(BUCKET)
        results = [storm(s3, kind, args.seconds) for kind in args.runs]
    for result in results:
        print(json.dumps(result))
    return 0 if all(r["p99_ms"] <= LAG_P99_MS and r["exit_status"] == 0 for r in results) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
