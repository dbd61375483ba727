"""Phase 4: gzip codecs and levels on a real 2 MiB JSONL of feed trades.

The collector's codec (ISA-L igzip, `collector.spool.open_gzip`) next to the standard library's zlib, so the
choice stays a measured one. Timed with thread_time: both run in the calling thread, and the local S3 server
shares this process."""

from __future__ import annotations

import gzip
import io
import random
import shutil
import statistics
import time
from typing import Any

from collector.config import GZIP_LEVEL, ROTATE_BYTES
from collector.spool import open_gzip
from sandbox.feed import FIRST_TRADE_ID, trade_message

CANDIDATES = (("zlib", 1), ("zlib", 6), ("zlib", 9), ("isal", 0), ("isal", 1), ("isal", 2), ("isal", 3))
DEFAULT = ("isal", GZIP_LEVEL)
REPEATS = 5
# The choice: affordable = costs at most a tenth of what receiving a message costs the bare client (so the
# collector can stay within 1.4x of it); among those, the cheapest within 1% of the best ratio.
SHARE_OF_BARE = 0.1
RATIO_SLACK = 0.01


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


def _compress(data: bytes, codec: str, level: int) -> bytes:
    # Same calls as collector.spool.Spool.seal: a gzip writer, mtime 0, 64 KiB copies.
    out = io.BytesIO()
    gz = open_gzip(out, level) if codec == "isal" else gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level,
                                                                      mtime=0)
    with gz:
        shutil.copyfileobj(io.BytesIO(data), gz, 1 << 16)
    return out.getvalue()


def choose(levels: list[dict[str, Any]], bare_us_per_msg: float) -> dict[str, Any]:
    affordable = [r for r in levels if r["us_per_msg"] <= SHARE_OF_BARE * bare_us_per_msg] or levels
    best = max(r["ratio"] for r in affordable)
    return min((r for r in affordable if r["ratio"] >= best * (1 - RATIO_SLACK)), key=lambda r: r["us_per_msg"])


def measure(rate: float = 3000.0) -> dict[str, Any]:
    data = jsonl_file(rate)
    records = data.count(b"\n")
    # At `rate` a 2 MiB file fills this often: what share of one core each level costs at peak load.
    files_per_second = rate / records
    rows = []
    for codec, level in CANDIDATES:
        times, size = [], 0
        for _ in range(REPEATS):
            started = time.thread_time()
            size = len(_compress(data, codec, level))
            times.append(time.thread_time() - started)
        ms = statistics.median(times) * 1000
        rows.append({"codec": codec, "level": level, "ms_per_file": ms, "us_per_msg": ms * 1000 / records,
                     "ratio": len(data) / size, "compressed_bytes": size,
                     "core_share_at_rate": ms / 1000 * files_per_second})
    return {
        "file_bytes": len(data),
        "records": records,
        "rate": rate,
        "levels": rows,
        "default": list(DEFAULT),
        "rule": f"cost <= {SHARE_OF_BARE:.0%} of the bare client's us/msg; then the cheapest within "
        f"{RATIO_SLACK:.0%} of the best ratio",
    }
