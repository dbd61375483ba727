"""The collector's log lines and metrics against moto's CloudWatch Logs (the same server as the local S3): what
arrives is what happened, and an unreachable CloudWatch changes nothing about collection and delivery.

moto stores the Embedded Metric Format documents as the log events they are but does not turn them into metrics
(CloudWatch does, on AWS); the documents are read back and summed here."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from typing import Any

import boto3
import pytest

from collector import metrics
from sandbox.local_s3 import REGION, LocalS3
from tests.conftest import landed

pytestmark = pytest.mark.e2e

GROUP = "/tradecollector/test"
NAMESPACE = "TradeCollectorTest"


def _events(s3: LocalS3, stream: str) -> list[dict[str, Any]]:
    logs = _logs_client(s3)
    events, token = [], None
    while True:
        kwargs = {"nextToken": token} if token else {}
        page = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True, **kwargs)
        events += page["events"]
        if page["nextForwardToken"] == token:
            return events
        token = page["nextForwardToken"]


def _logs_client(s3: LocalS3) -> Any:
    key, secret = s3.admin_credentials
    return boto3.client("logs", endpoint_url=s3.endpoint, region_name=REGION, aws_access_key_id=key,
                        aws_secret_access_key=secret)


@pytest.fixture
def log_group(s3: LocalS3) -> Any:
    logs = _logs_client(s3)
    logs.create_log_group(logGroupName=GROUP)
    yield logs
    logs.delete_log_group(logGroupName=GROUP)


def test_metrics_in_the_log_stream_add_up_to_what_the_manifests_hold(
        feed, s3, log_group, start_collector, manifest_schema):
    collector = start_collector(ws_url=feed.feed.url, symbols="BTCUSDT,ETHUSDT", log_group=GROUP,
                                metrics_namespace=NAMESPACE, metrics_interval=1,
                                aws_env={"AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": s3.endpoint})
    collector.wait_for_log("uploaded s3://", count=8)
    time.sleep(2.5)  # at least two whole metric intervals, however slowly the machine got here
    assert collector.terminate() == 0
    landing = landed(s3, feed, ("BTCUSDT", "ETHUSDT"), manifest_schema)

    events = _events(s3, "test-1")
    docs = [json.loads(e["message"]) for e in events if e["message"].startswith("{")]
    lines = [e["message"] for e in events if not e["message"].startswith("{")]
    assert any(" INFO collector: rotated BTCUSDT-test-1-" in line for line in lines), lines[:5]
    assert any("stopped: everything shipped" in line for line in lines)

    trades: Counter[str] = Counter()
    objects = shipped_bytes = heartbeats = 0
    for doc in docs:
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == NAMESPACE and doc[metrics.INSTANCE_DIMENSION] == "test-1"
        assert all(name["Name"] in doc for name in directive["Metrics"])
        if metrics.SYMBOL_DIMENSION in doc:
            trades[doc[metrics.SYMBOL_DIMENSION]] += doc[metrics.TRADES_RECEIVED]
        else:
            objects += doc[metrics.OBJECTS_SHIPPED]
            shipped_bytes += doc[metrics.BYTES_SHIPPED]
            heartbeats += doc[metrics.HEARTBEAT]
            assert doc[metrics.UPLOAD_FAILURES] == 0 and doc[metrics.TELEMETRY_DROPPED] == 0
    recorded: Counter[str] = Counter()
    for manifest in landing.manifests:
        recorded[manifest["source"]["symbol"]] += manifest["payload"]["record_count"]
    assert trades == recorded and sum(trades.values()) > 0
    assert objects == len(landing.objects)
    assert heartbeats >= 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_cloudwatch_changes_nothing_for_the_data_and_the_drops_are_logged(
        feed, s3, start_collector, manifest_schema):
    collector = start_collector(ws_url=feed.feed.url, log_group=GROUP, metrics_interval=0.2,
                                aws_env={"AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": f"http://127.0.0.1:{_closed_port()}"})
    collector.wait_for_log("CloudWatch Logs unreachable")
    collector.wait_for_log("uploaded s3://", count=6)
    assert collector.terminate() == 0
    landed(s3, feed, ("BTCUSDT",), manifest_schema)
    log = collector.log
    assert "stopped: everything shipped" in log
    assert "CloudWatch Logs: " in log and "not sent at exit" in log
