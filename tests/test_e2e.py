"""The collector as a subprocess against the local feed and the local S3 endpoint."""

import time

import pytest

from collector.spool import unshipped
from tests.conftest import BUCKET, landed, on_both_s3_servers
from tests.s3_faults import S3Faults

pytestmark = pytest.mark.e2e


@on_both_s3_servers
def test_everything_received_lands_byte_identical_and_the_spool_ends_empty(
        feed, s3, start_collector, spool_dir, manifest_schema):
    collector = start_collector(ws_url=feed.feed.url, symbols="btcusdt,ETHUSDT")
    collector.wait_for_log("uploaded s3://", count=4)
    assert collector.terminate() == 0
    landing = landed(s3, feed, ("BTCUSDT", "ETHUSDT"), manifest_schema)
    assert unshipped(spool_dir) == []
    for symbol in ("BTCUSDT", "ETHUSDT"):
        ids = landing.ids(symbol)
        assert len(ids) == len(set(ids)), "a clean run delivers each trade once"
    assert all(m["source"]["instance_id"] == "test-1" and m["payload"]["bucket"] == BUCKET for m in landing.manifests)
    assert all(m["quality"] == {"malformed_messages": 0, "trade_id_gaps": 0, "missing_trade_ids": 0, "reconnects": 0}
               for m in landing.manifests)
    log = collector.log
    assert "connected /ws/btcusdt@trade (extensions: none)" in log
    assert "rotated BTCUSDT-test-1-" in log and "stopped: everything shipped" in log


def test_size_rotation_makes_several_objects_each_under_the_limit(feed, s3, start_collector, manifest_schema):
    feed.feed.rate = 2000
    collector = start_collector(ws_url=feed.feed.url, rotate_bytes=20_000, rotate_seconds=60)
    collector.wait_for_log("rotated BTCUSDT", count=4)
    assert collector.terminate() == 0
    landing = landed(s3, feed, ("BTCUSDT",), manifest_schema)
    sizes = [o.uncompressed_bytes for o in landing.objects]
    assert len(sizes) >= 5
    assert all(size <= 20_000 for size in sizes)
    assert sum(size > 19_000 for size in sizes) >= 4, "size, not time, closed these files"


def test_uploads_are_retried_after_s3_errors_and_ambiguous_failures(feed, s3, start_collector, manifest_schema):
    with S3Faults(s3.endpoint) as faults:
        faults.reject_puts = 2  # two 503 SlowDown answers
        faults.lose_put_replies = 1  # then one PUT that is written but answered 500
        collector = start_collector(ws_url=feed.feed.url, endpoint=faults.url)
        collector.wait_for_log("uploaded s3://", count=4)
        time.sleep(1)
        assert collector.terminate() == 0
    log = collector.log
    assert "HTTP 503 SlowDown); attempt 1/3, retrying in 0.5 s" in log
    assert "attempt 2/3, retrying in 1.0 s" in log
    assert ", already there" in log, "the retry after a lost reply found its own object (412) and moved on"
    landed(s3, feed, ("BTCUSDT",), manifest_schema)
