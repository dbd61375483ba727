"""Phase 4: gzip levels on a real 2 MiB JSONL of feed trades, compressed exactly as the spool seals a file.

Timed with thread_time: zlib runs in the calling thread, and the local S3 server shares this process."""

from __future__ import annotations

import gzip
import io
import random
import shutil
import statistics
import time
from typing import Any

from collector.config import GZIP_LEVEL, ROTATE_BYTES
from sandbox.feed import FIRST_TRADE_ID, trade_message

LEVELS = (1, 6, 9)
REPEATS = 5
# The choice: the smallest output whose cost at peak load stays within a tenth of the collector's CPU
# budget (10% of one core), so compression can never be what breaks the budget on a slower instance.
CORE_SHARE_BUDGET = 0.01


def jsonl_file(rate: float = 3000.0, burst_seconds: float = 0.05) -> bytes:
    """One full data file: the feed's trades, bursts of `rate * burst_seconds` sharing an `E`, up to 2 MiB."""
    rng = random.Random(11)
    lines: list[bytes] = []
    size, trade_id, now_ms = 0, FIRST_TRADE_ID, 1_780_000_000_000
    per_burst = int(rate * burst_seconds)
    while True:
        for _ in range(per_burst):
            line = trade_message("BTCUSDT", trade_id, now_ms, rng) + b"\n"
            if size + len(line) > ROTATE_BYTES:
                return b"".join(lines)
            lines.append(line)
            size += len(line)
            trade_id += 1
        now_ms += int(burst_seconds * 1000)


def _seal_like_spool(data: bytes, level: int) -> bytes:
    # Same calls as collector.spool.Spool.seal: GzipFile, mtime 0, 64 KiB copies.
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0) as gz:
        shutil.copyfileobj(io.BytesIO(data), gz, 1 << 16)
    return out.getvalue()


def measure(rate: float = 3000.0) -> dict[str, Any]:
    data = jsonl_file(rate)
    records = data.count(b"\n")
    # At `rate` a 2 MiB file fills this often: what share of one core each level costs at peak load.
    files_per_second = rate / records
    rows = []
    for level in LEVELS:
        times, size = [], 0
        for _ in range(REPEATS):
            started = time.thread_time()
            size = len(_seal_like_spool(data, level))
            times.append(time.thread_time() - started)
        ms = statistics.median(times) * 1000
        rows.append({"level": level, "ms_per_file": ms, "us_per_msg": ms * 1000 / records, "ratio": len(data) / size,
                     "compressed_bytes": size, "core_share_at_rate": ms / 1000 * files_per_second})
    affordable = [r for r in rows if r["core_share_at_rate"] <= CORE_SHARE_BUDGET] or rows[:1]
    chosen = min(affordable, key=lambda r: r["compressed_bytes"])
    return {
        "file_bytes": len(data),
        "records": records,
        "rate": rate,
        "levels": rows,
        "default_level": GZIP_LEVEL,
        "chosen_by_measurement": chosen["level"],
        "rule": f"smallest output costing <= {CORE_SHARE_BUDGET:.0%} of a core at {rate:g} msg/s",
    }
