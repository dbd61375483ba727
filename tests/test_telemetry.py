"""The metrics policy (per-interval EMF documents) and the log buffer (bounded, batches within PutLogEvents'
limits, nothing lost while CloudWatch answers, drops counted while it does not)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from botocore.exceptions import EndpointConnectionError
from hypothesis import given
from hypothesis import strategies as st

from collector import cloudwatch_logs, metrics
from collector.cloudwatch_logs import LogHandler, LogShipper, batch_size
from collector.keys import Part
from collector.metrics import IntervalMetrics, Totals
from collector.stats import FileStats
from collector.telemetry import spool_backlog

T0 = 1_764_000_000_000


def _totals(**overrides: Any) -> Totals:
    values = {"objects_shipped": 0, "bytes_shipped": 0, "upload_failures": 0, "telemetry_dropped": 0,
              "backlog_bytes": 0, "oldest_unshipped_ms": None}
    return Totals(**(values | overrides))


def _by_symbol(docs: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {doc.get(metrics.SYMBOL_DIMENSION): doc for doc in docs}


def test_an_interval_reports_what_the_sealed_files_and_the_shipper_say_then_starts_from_zero():
    m = IntervalMetrics(namespace="NS", instance_id="i-1", symbols=("BTCUSDT", "ETHUSDT"), interval_ms=60_000,
                        now_ms=T0)
    m.add_file("BTCUSDT", FileStats(record_count=100, trade_id_gaps=1, missing_trade_ids=7, reconnects=1,
                                    malformed_messages=2))
    m.add_file("BTCUSDT", FileStats(record_count=50))
    assert not m.due(T0 + 59_999) and m.due(T0 + 60_000)
    docs = _by_symbol(m.flush(T0 + 60_000, _totals(objects_shipped=4, bytes_shipped=1000, upload_failures=1,
                                                   backlog_bytes=300, oldest_unshipped_ms=T0 + 30_000)))
    btc, eth, instance = docs["BTCUSDT"], docs["ETHUSDT"], docs[None]
    assert (btc["TradesReceived"], btc["TradeIdGaps"], btc["MissingTradeIds"], btc["Reconnects"],
            btc["RejectedMessages"]) == (150, 1, 7, 1, 2)
    assert eth["TradesReceived"] == 0, "a symbol without trades still reports, so silence is missing data"
    assert (instance["ObjectsShipped"], instance["BytesShipped"], instance["UploadFailures"],
            instance["BacklogBytes"], instance["BacklogAgeSeconds"], instance["Heartbeat"]) == (4, 1000, 1, 300, 30, 1)
    assert btc["_aws"] == {"Timestamp": T0 + 60_000, "CloudWatchMetrics": [{
        "Namespace": "NS", "Dimensions": [["InstanceId", "Symbol"]],
        "Metrics": [{"Name": name, "Unit": unit} for name, unit in metrics.SYMBOL_METRICS.items()]}]}
    assert instance["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["InstanceId"]]
    assert {doc["InstanceId"] for doc in docs.values()} == {"i-1"}

    # Running totals become per-interval differences; counts start again at zero.
    again = _by_symbol(m.flush(T0 + 120_000, _totals(objects_shipped=6, bytes_shipped=1500, upload_failures=1)))
    assert again["BTCUSDT"]["TradesReceived"] == 0
    assert (again[None]["ObjectsShipped"], again[None]["BytesShipped"], again[None]["UploadFailures"],
            again[None]["BacklogAgeSeconds"]) == (2, 500, 0, 0)


def test_a_stalled_loop_reports_once_not_a_burst():
    m = IntervalMetrics(namespace="NS", instance_id="i-1", symbols=("BTCUSDT",), interval_ms=60_000, now_ms=T0)
    m.flush(T0 + 600_000, _totals())
    assert not m.due(T0 + 600_001) and m.due(T0 + 660_000)


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=40))
def test_trades_reported_sum_to_the_records_sealed(records: list[int]):
    m = IntervalMetrics(namespace="NS", instance_id="i", symbols=("S",), interval_ms=1000, now_ms=0)
    reported = 0
    for n, count in enumerate(records):
        m.add_file("S", FileStats(record_count=count))
        if n % 3 == 0:
            reported += _by_symbol(m.flush(n * 1000, _totals()))["S"]["TradesReceived"]
    reported += _by_symbol(m.flush(10**9, _totals()))["S"]["TradesReceived"]
    assert reported == sum(records)


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), st.text(max_size=300)), max_size=200),
       st.integers(min_value=0, max_value=3))
def test_batches_stay_within_put_log_events_limits(events: list[tuple[int, str]], scale: int):
    # Scaled so that the byte limit, not only the count, is reached.
    big = deque((t, m * (1 + scale * 2000)) for t, m in events)
    while big:
        n = batch_size(big)
        assert n >= 1
        batch = [big.popleft() for _ in range(n)]
        assert n <= cloudwatch_logs.MAX_BATCH_EVENTS
        assert len(batch) == 1 or sum(len(m.encode()) + 26 for _, m in batch) <= cloudwatch_logs.MAX_BATCH_BYTES


def test_an_event_is_cut_to_the_largest_message_cloudwatch_takes():
    assert cloudwatch_logs.fit("short") == "short"
    assert len(cloudwatch_logs.fit("é" * 300_000).encode()) <= cloudwatch_logs.MAX_EVENT_BYTES


class _FakeLogs:
    """A CloudWatch Logs client that is down until `up` is set; records what it accepted."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.accepted: list[dict[str, Any]] = []
        self.streams: list[str] = []

    def create_log_stream(self, *, logGroupName: str, logStreamName: str) -> None:
        if not self.up.is_set():
            raise EndpointConnectionError(endpoint_url="http://logs.invalid")
        self.streams.append(logStreamName)

    def put_log_events(self, *, logGroupName: str, logStreamName: str, logEvents: list[dict[str, Any]]) -> None:
        if not self.up.is_set():
            raise EndpointConnectionError(endpoint_url="http://logs.invalid")
        assert [e["timestamp"] for e in logEvents] == sorted(e["timestamp"] for e in logEvents)
        self.accepted += logEvents


def test_while_cloudwatch_is_down_the_buffer_stays_bounded_counts_drops_and_then_delivers_in_order(caplog):
    client = _FakeLogs()
    shipper = LogShipper(client, group="g", stream="i-1", capacity=5, send_seconds=0.01)
    handler = LogHandler(shipper)
    handler.setFormatter(logging.Formatter("%(message)s"))
    record_log = logging.getLogger("test.telemetry")
    record_log.addHandler(handler)
    record_log.propagate = False
    try:
        with caplog.at_level(logging.WARNING, logger="collector.telemetry"):
            for n in range(8):
                record_log.warning("line %d", n)
            assert shipper.pending() == 5 and shipper.dropped == 3
            shipper.start()
            deadline = time.monotonic() + 5
            while "CloudWatch Logs unreachable" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
            client.up.set()
            shipper.close(5)
    finally:
        record_log.removeHandler(handler)
    assert [e["message"] for e in client.accepted] == [f"line {n}" for n in range(5)]
    assert client.streams == ["i-1"]
    assert "CloudWatch Logs accepts events again" in caplog.text and "3 event(s) dropped meanwhile" in caplog.text


def test_at_exit_what_could_not_be_sent_is_counted_in_the_log(caplog):
    shipper = LogShipper(_FakeLogs(), group="g", stream="i-1", capacity=2, send_seconds=60)
    shipper.start()
    for n in range(3):
        shipper.put(T0 + n, f"line {n}")
    with caplog.at_level(logging.WARNING, logger="collector.telemetry"):
        shipper.close(5)
    assert "2 event(s) not sent at exit, 1 dropped" in caplog.text


def test_the_backlog_is_the_spool_s_bytes_and_its_oldest_file(tmp_path: Path):
    assert spool_backlog(tmp_path) == (0, None)
    older, newer = Part("BTCUSDT", "i-1", T0), Part("ETHUSDT", "i-1", T0 + 5000)
    (tmp_path / f"{newer.stem}.jsonl").write_bytes(b"x" * 10)
    (tmp_path / f"{older.stem}.manifest.json").write_bytes(b"x" * 3)
    (tmp_path / "stray.tmp").write_bytes(b"x")
    assert spool_backlog(tmp_path) == (14, T0)
