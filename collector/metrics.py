"""The collector's metrics, aggregated per interval into CloudWatch Embedded Metric Format documents.

No I/O, no clock: the shell passes the time in. Nothing here runs per message: the per-symbol counts come from
the statistics every sealed file carries anyway (`FileStats`), the shipping counts from the shipper's running
totals, the backlog from the spool directory once per interval. One document per symbol and one for the
instance go out per interval, whether anything happened or not, so that a silent instance is missing data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from collector.stats import FileStats

# An instance that shipped no object for this long is down (it ships every few seconds when well): the stack's
# alarm and `python -m audit status` both use it.
SILENT_SECONDS = 180

INSTANCE_DIMENSION = "InstanceId"  # the EC2 instance id: the same dimension as AWS/EC2's own metrics
SYMBOL_DIMENSION = "Symbol"

# Per instance and symbol, summed from the files sealed in the interval (the manifests say the same).
TRADES_RECEIVED = "TradesReceived"
TRADE_ID_GAPS = "TradeIdGaps"
MISSING_TRADE_IDS = "MissingTradeIds"
RECONNECTS = "Reconnects"
REJECTED_MESSAGES = "RejectedMessages"
SYMBOL_METRICS = {TRADES_RECEIVED: "Count", TRADE_ID_GAPS: "Count", MISSING_TRADE_IDS: "Count",
                  RECONNECTS: "Count", REJECTED_MESSAGES: "Count"}

# Per instance.
OBJECTS_SHIPPED = "ObjectsShipped"
BYTES_SHIPPED = "BytesShipped"
UPLOAD_FAILURES = "UploadFailures"
BACKLOG_BYTES = "BacklogBytes"
BACKLOG_AGE = "BacklogAgeSeconds"
HEARTBEAT = "Heartbeat"
TELEMETRY_DROPPED = "TelemetryEventsDropped"
INSTANCE_METRICS = {OBJECTS_SHIPPED: "Count", BYTES_SHIPPED: "Bytes", UPLOAD_FAILURES: "Count",
                    BACKLOG_BYTES: "Bytes", BACKLOG_AGE: "Seconds", HEARTBEAT: "Count", TELEMETRY_DROPPED: "Count"}


@dataclass(frozen=True, slots=True)
class Totals:
    """Running totals (since start) and gauges the shell reads once per interval."""

    objects_shipped: int
    bytes_shipped: int
    upload_failures: int
    telemetry_dropped: int
    backlog_bytes: int
    oldest_unshipped_ms: int | None  # when the oldest file still in the spool was opened


_ZERO = Totals(objects_shipped=0, bytes_shipped=0, upload_failures=0, telemetry_dropped=0, backlog_bytes=0,
               oldest_unshipped_ms=None)


class IntervalMetrics:
    """Counts for the current interval; `flush` turns them into EMF documents and starts the next interval."""

    def __init__(self, *, namespace: str, instance_id: str, symbols: Iterable[str], interval_ms: int,
                 now_ms: int) -> None:
        self.namespace = namespace
        self.instance_id = instance_id
        self.interval_ms = interval_ms
        self.next_flush_ms = now_ms + interval_ms
        self._counts = {symbol: dict.fromkeys(SYMBOL_METRICS, 0) for symbol in symbols}
        self._last = _ZERO

    def add_file(self, symbol: str, stats: FileStats) -> None:
        """A sealed file's statistics; called once per rotation, not per message."""
        counts = self._counts[symbol]
        counts[TRADES_RECEIVED] += stats.record_count
        counts[TRADE_ID_GAPS] += stats.trade_id_gaps
        counts[MISSING_TRADE_IDS] += stats.missing_trade_ids
        counts[RECONNECTS] += stats.reconnects
        counts[REJECTED_MESSAGES] += stats.malformed_messages

    def due(self, now_ms: int) -> bool:
        return now_ms >= self.next_flush_ms

    def flush(self, now_ms: int, totals: Totals) -> list[dict[str, Any]]:
        """One document per symbol and one for the instance, stamped `now_ms`; the counts start again at 0."""
        docs = [self._document(now_ms, [[INSTANCE_DIMENSION, SYMBOL_DIMENSION]], SYMBOL_METRICS,
                               {SYMBOL_DIMENSION: symbol, **counts})
                for symbol, counts in self._counts.items()]
        last = self._last
        age = 0.0 if totals.oldest_unshipped_ms is None else max(0, now_ms - totals.oldest_unshipped_ms) / 1000
        docs.append(self._document(now_ms, [[INSTANCE_DIMENSION]], INSTANCE_METRICS, {
            OBJECTS_SHIPPED: totals.objects_shipped - last.objects_shipped,
            BYTES_SHIPPED: totals.bytes_shipped - last.bytes_shipped,
            UPLOAD_FAILURES: totals.upload_failures - last.upload_failures,
            TELEMETRY_DROPPED: totals.telemetry_dropped - last.telemetry_dropped,
            BACKLOG_BYTES: totals.backlog_bytes,
            BACKLOG_AGE: age,
            HEARTBEAT: 1,
        }))
        self._last = totals
        for counts in self._counts.values():
            counts.update(dict.fromkeys(counts, 0))
        self.next_flush_ms += self.interval_ms
        if self.next_flush_ms <= now_ms:  # a stalled loop: one document for the whole stall, not a burst
            self.next_flush_ms = now_ms + self.interval_ms
        return docs

    def _document(self, now_ms: int, dimensions: list[list[str]], metrics: dict[str, str],
                  values: dict[str, Any]) -> dict[str, Any]:
        return {
            "_aws": {"Timestamp": now_ms, "CloudWatchMetrics": [{
                "Namespace": self.namespace,
                "Dimensions": dimensions,
                "Metrics": [{"Name": name, "Unit": unit} for name, unit in metrics.items()],
            }]},
            INSTANCE_DIMENSION: self.instance_id,
            **values,
        }
