"""`python -m audit status` against moto's CloudWatch and S3 (one server): three instances, one of them silent.

moto keeps alarms and their states (it does not evaluate them: the states are set here as CloudWatch would) and
serves metric data; the manifests are the collector's own documents under the collector's own keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from audit.__main__ import STACK_NAME as AUDIT_DEFAULT_STACK
from collector import manifest, metrics
from collector.keys import Part
from collector.stats import FileStats
from sandbox.local_s3 import REGION, LocalS3
from tests.conftest import ROOT

STACK = "StatusTestStack"
BUCKET = "status-test"
INSTANCES = ("i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2", "i-0ccccccccccccccc3")
SILENT = INSTANCES[2]


def _cloudwatch(s3: LocalS3) -> Any:
    key, secret = s3.admin_credentials
    return boto3.client("cloudwatch", endpoint_url=s3.endpoint, region_name=REGION, aws_access_key_id=key,
                        aws_secret_access_key=secret)


def _put_manifest(s3: LocalS3, instance: str, opened_ms: int, first_id: int) -> str:
    part = Part("BTCUSDT", instance, opened_ms)
    stats = FileStats(record_count=10, first_trade_id=first_id, last_trade_id=first_id + 9)
    doc = manifest.build(part=part, stats=stats, bucket=BUCKET, compressed_bytes=100, sha256="0" * 64,
                         created_at_ms=opened_ms + 5000)
    s3.client().put_object(Bucket=BUCKET, Key=part.manifest_key, Body=manifest.encode(doc))
    return part.manifest_key


def _alarm(cloudwatch: Any, name: str, instance: str, state: str) -> None:
    cloudwatch.put_metric_alarm(
        AlarmName=name, Namespace=STACK, MetricName=metrics.OBJECTS_SHIPPED, Statistic="Sum", Period=60,
        EvaluationPeriods=3, Threshold=1, ComparisonOperator="LessThanThreshold", TreatMissingData="breaching",
        Dimensions=[{"Name": metrics.INSTANCE_DIMENSION, "Value": instance}])
    cloudwatch.set_alarm_state(AlarmName=name, StateValue=state, StateReason="set by the test")


@pytest.fixture
def fleet(s3_server: LocalS3) -> Iterator[tuple[LocalS3, str]]:
    """Two instances shipping (newest objects seconds old), the third silent for 10 minutes with its alarm on."""
    s3_server.create_bucket(BUCKET)
    cloudwatch = _cloudwatch(s3_server)
    now_ms = int(time.time() * 1000)
    newest = ""
    for n, instance in enumerate(INSTANCES):
        opened = now_ms - (600_000 if instance == SILENT else 5_000 + n * 1000)
        _put_manifest(s3_server, instance, opened - 5000, 100 + 20 * n)
        key = _put_manifest(s3_server, instance, opened, 110 + 20 * n)
        if n == 0:
            newest = key
        _alarm(cloudwatch, f"{STACK}-{n}-no-object-shipped", instance, "ALARM" if instance == SILENT else "OK")
        cloudwatch.put_metric_data(Namespace=STACK, MetricData=[
            {"MetricName": metrics.BACKLOG_BYTES, "Value": 1000.0 * (n + 1),
             "Dimensions": [{"Name": metrics.INSTANCE_DIMENSION, "Value": instance}]},
            {"MetricName": metrics.BACKLOG_AGE, "Value": 4.0,
             "Dimensions": [{"Name": metrics.INSTANCE_DIMENSION, "Value": instance}]}])
    cloudwatch.put_metric_alarm(
        AlarmName=f"{STACK}-fleet-fewer-than-2-delivering", EvaluationPeriods=3, Threshold=2,
        ComparisonOperator="LessThanThreshold", Metrics=[
            {"Id": "e", "Expression": "m0 + m1", "ReturnData": True},
            *({"Id": f"m{n}", "ReturnData": False, "MetricStat": {"Metric": {
                "Namespace": STACK, "MetricName": metrics.OBJECTS_SHIPPED,
                "Dimensions": [{"Name": metrics.INSTANCE_DIMENSION, "Value": instance}]},
                "Period": 60, "Stat": "Sum"}} for n, instance in enumerate(INSTANCES[:2]))])
    yield s3_server, newest
    cloudwatch.delete_alarms(AlarmNames=[a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]])
    s3_server.delete_bucket(BUCKET)


def _status(s3: LocalS3, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3.env() | {"AWS_ENDPOINT_URL_CLOUDWATCH": s3.endpoint})
    return subprocess.run([sys.executable, "-m", "audit", "status", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_status_names_the_silent_instance_and_its_alarm_and_exits_1(fleet: tuple[LocalS3, str]) -> None:
    s3, newest = fleet
    done = _status(s3, "--bucket", BUCKET, "--stack", STACK)
    assert done.returncode == 1 and done.stdout, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("fleet at ") and ": ALARMING\n" in out.splitlines()[0] + "\n"
    blocks = {block.split("\n")[0].split()[0]: block for block in out.split("\n\n")[1].split("\ni-")}
    assert len(blocks) == 3
    for instance in INSTANCES:
        block = next(b for b in blocks.values() if instance.removeprefix("i-") in b.split("\n")[0])
        silent = instance == SILENT
        assert ("SILENT" in block.split("\n")[0]) is silent
        ago = int(re.search(r"last object:  \S+ \((\d+) s ago\)", block)[1])
        assert 600 <= ago < 700 if silent else ago < 60, block
        assert f"{'ALARM' if silent else 'OK':<17} {STACK}-{INSTANCES.index(instance)}-no-object-shipped" in block
        assert f"backlog:      {1000 * (INSTANCES.index(instance) + 1)} bytes, oldest 4 s" in block
    assert f"{STACK}-fleet-fewer-than-2-delivering" in out, out
    assert f"  BTCUSDT: {newest}: 10 records, ids 110..119" in out
    assert f"  {STACK}-2-no-object-shipped is in ALARM" in out
    assert f"  {SILENT} shipped nothing for over {metrics.SILENT_SECONDS} s" in out


def test_status_is_0_when_every_instance_ships_and_no_alarm_is_on(fleet: tuple[LocalS3, str]) -> None:
    """An instance a deploy replaced (objects in the bucket, no alarm of the stack) is shown but alarms nobody."""
    s3, _ = fleet
    cloudwatch = _cloudwatch(s3)
    _put_manifest(s3, SILENT, int(time.time() * 1000) - 2000, 500)
    _put_manifest(s3, "i-0replaced00000000", int(time.time() * 1000) - 900_000, 50)
    cloudwatch.set_alarm_state(AlarmName=f"{STACK}-2-no-object-shipped", StateValue="OK", StateReason="test")
    done = _status(s3, "--bucket", BUCKET, "--stack", STACK, "--symbols", "btcusdt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].endswith(": all well"), done.stdout
    assert "\ni-0replaced00000000  SILENT  (not in the stack)\n" in done.stdout
    assert done.stdout.count("SILENT") == 1


def test_status_exits_2_on_bad_input_or_an_unreadable_bucket(s3_server: LocalS3) -> None:
    for args, says in ((["--bucket", "Not_A_Bucket"], "--bucket"), (["--bucket", "no-such-bucket-here"],
                                                                    "NoSuchBucket")):
        done = _status(s3_server, *args)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_default_stack_is_the_stacks_name() -> None:
    from stacks.application import STACK_NAME

    assert AUDIT_DEFAULT_STACK == STACK_NAME
