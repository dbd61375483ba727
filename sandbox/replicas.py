"""Synthetic replicas: what collector instances would have written to S3 for a simulated market.

Each instance's runs are given as id ranges (with ids it lost inside a run, as on a reconnect); files are cut
by the collector's own rotator at trade time and described by the collector's own manifest code, so the audit
is tested against the real data contract without running collectors for a whole day.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from isal import igzip

from audit.bucket import read
from audit.entries import MAX_OBJECT_BYTES
from audit.files import cut
from collector import manifest
from collector.config import GZIP_LEVEL
from collector.rotator import Rotator, SpoolFile
from sandbox.market import Market


@dataclass(frozen=True)
class Run:
    """One collector run of `instance`: it received ids `first..last` except `lost`."""

    instance: str
    first: int
    last: int
    lost: frozenset[int] = field(default_factory=frozenset)
    # Rewrites a line before it is stored: a replica that disagrees with the others on a trade's bytes.
    alter: Callable[[int, bytes], bytes] | None = None


def files_of(market: Market, run: Run, *, rotate_seconds: float, rotate_bytes: int = 2_097_152
             ) -> list[tuple[SpoolFile, bytes]]:
    """The (file, JSONL bytes) the collector's rotator makes of `run`, clocked by the trade times."""
    rotator = Rotator(symbol=market.symbol, instance_id=run.instance, rotate_bytes=rotate_bytes,
                      rotate_seconds=rotate_seconds)

    def lines() -> Iterator[bytes]:
        for trade_id in range(run.first, run.last + 1):
            if trade_id not in run.lost:
                line = market.by_id(trade_id).stream_line(market.symbol)
                yield line if run.alter is None else run.alter(trade_id, line)

    return list(cut(rotator, lines(), lambda trade: trade.trade_time))


def write(s3: Any, bucket: str, market: Market, runs: Iterable[Run], *, rotate_seconds: float = 600
          ) -> list[dict[str, Any]]:
    """Upload every run's data objects and manifests as the collector would; returns the manifests."""
    written = []
    for run in runs:
        for spool, data in files_of(market, run, rotate_seconds=rotate_seconds):
            body = igzip.compress(data, GZIP_LEVEL, mtime=0)
            doc = manifest.build(part=spool.part, stats=spool.stats, bucket=bucket, compressed_bytes=len(body),
                                 sha256=hashlib.sha256(body).hexdigest(),
                                 created_at_ms=spool.stats.max_event_time + 1500)
            s3.put_object(Bucket=bucket, Key=spool.part.data_key, Body=body, ServerSideEncryption="AES256")
            s3.put_object(Bucket=bucket, Key=spool.part.manifest_key, Body=manifest.encode(doc),
                          ServerSideEncryption="AES256")
            written.append(doc)
    return written


def corrupt(s3: Any, bucket: str, key: str) -> None:
    """Flip one byte inside the stored object: same size, different content (only a re-read finds it)."""
    body = bytearray(read(s3, bucket, key, limit=MAX_OBJECT_BYTES))
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
