"""CloudWatch for one collector: its log lines and, in the same stream, its metrics as Embedded Metric Format
documents (CloudWatch Logs turns them into metrics), so the role needs nothing beyond writing to its log group.

The policy (what to count, when to report) is `metrics.IntervalMetrics`; the sending is `cloudwatch_logs`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from collector import cloudwatch_logs
from collector.config import Config
from collector.keys import Part
from collector.metrics import IntervalMetrics, Totals
from collector.shipper import Shipper
from collector.spool import GZ, JSONL, MANIFEST
from collector.stats import FileStats

# At exit, how long the last send may take before the rest is given up (the unit's stop timeout has margin).
CLOSE_SECONDS = 5.0


def spool_backlog(directory: Path) -> tuple[int, int | None]:
    """Bytes in the spool, and when its oldest file (open, sealed or half-shipped) was opened."""
    total, oldest = 0, None
    for entry in os.scandir(directory):
        try:
            total += entry.stat().st_size
        except FileNotFoundError:  # shipped since the listing
            continue
        for suffix in (GZ, MANIFEST, JSONL):
            if entry.name.endswith(suffix):
                try:
                    opened = Part.from_stem(entry.name[: -len(suffix)]).opened_at_ms
                except ValueError:
                    break
                oldest = opened if oldest is None else min(oldest, opened)
                break
    return total, oldest


class Telemetry:
    def __init__(self, config: Config, *, now_ms: int, client: Any = None) -> None:
        assert config.log_group, "telemetry needs a log group"
        self.spool_dir = config.spool_dir
        self.logs = cloudwatch_logs.LogShipper(client or cloudwatch_logs.make_client(), group=config.log_group,
                                               stream=config.instance_id)
        self.handler = cloudwatch_logs.LogHandler(self.logs)
        self.metrics = IntervalMetrics(namespace=config.metrics_namespace, instance_id=config.instance_id,
                                       symbols=config.symbols, interval_ms=int(config.metrics_interval * 1000),
                                       now_ms=now_ms)

    def start(self) -> None:
        logging.getLogger().addHandler(self.handler)
        self.logs.start()

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.logs.close(CLOSE_SECONDS)

    def sealed(self, symbol: str, stats: FileStats) -> None:
        self.metrics.add_file(symbol, stats)

    async def report(self, now_ms: int, shipper: Shipper) -> None:
        """The interval's metrics into the log stream."""
        backlog_bytes, oldest = await asyncio.to_thread(spool_backlog, self.spool_dir)
        totals = Totals(objects_shipped=shipper.uploaded, bytes_shipped=shipper.uploaded_bytes,
                        upload_failures=shipper.failures, telemetry_dropped=self.logs.dropped,
                        backlog_bytes=backlog_bytes, oldest_unshipped_ms=oldest)
        for doc in self.metrics.flush(now_ms, totals):
            self.logs.put(now_ms, msgspec.json.encode(doc).decode())
