"""`python -m audit status`: the fleet's health now, from CloudWatch (the stack's alarms and the collectors'
metrics) and from the bucket (the newest manifests). The stack's name is the metrics' namespace and the prefix
of its alarms' names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from audit.bucket import read
from audit.entries import MANIFEST_MAX_BYTES
from collector import metrics
from collector.keys import MANIFEST_PREFIX, MANIFEST_SUFFIX, Part, hour_prefix, symbols_prefix
from collector.manifest import iso_millis

# How far back the bucket is searched for each instance's last object: the current and the previous hour.
LOOKBACK_HOURS = 2
BACKLOG_WINDOW = timedelta(minutes=10)


@dataclass
class Instance:
    instance_id: str
    last_object_ms: int | None = None  # when the newest file it shipped was opened
    backlog_bytes: float | None = None
    backlog_age_seconds: float | None = None
    alarms: dict[str, str] = field(default_factory=dict)  # alarm name -> state
    # Named by the stack's alarms: a current instance. One seen only in the bucket or the metrics may have been
    # replaced by a deploy; its silence is shown but alarms nobody.
    current: bool = True


@dataclass
class Newest:
    symbol: str
    key: str
    doc: dict[str, Any]


@dataclass
class Status:
    now_ms: int
    instances: dict[str, Instance]
    fleet_alarms: dict[str, str]
    newest: list[Newest]

    def silent(self, instance: Instance) -> bool:
        last = instance.last_object_ms
        return last is None or self.now_ms - last > metrics.SILENT_SECONDS * 1000

    @property
    def alarming(self) -> list[str]:
        """What is wrong, in words; empty when all is well."""
        problems = [f"{name} is in ALARM" for name, state in self.fleet_alarms.items() if state == "ALARM"]
        for instance in self.instances.values():
            problems += [f"{name} is in ALARM" for name, state in instance.alarms.items() if state == "ALARM"]
            if instance.current and self.silent(instance):
                problems.append(f"{instance.instance_id} shipped nothing for over {metrics.SILENT_SECONDS} s")
        return problems


def _alarm_instances(alarm: dict[str, Any]) -> set[str]:
    dimensions = list(alarm.get("Dimensions", []))
    for query in alarm.get("Metrics", []):
        dimensions += query.get("MetricStat", {}).get("Metric", {}).get("Dimensions", [])
    return {d["Value"] for d in dimensions if d["Name"] == metrics.INSTANCE_DIMENSION}


def _latest(cloudwatch: Any, namespace: str, name: str, instance_id: str, now: datetime) -> float | None:
    result = cloudwatch.get_metric_data(
        MetricDataQueries=[{"Id": "m", "MetricStat": {"Metric": {
            "Namespace": namespace, "MetricName": name,
            "Dimensions": [{"Name": metrics.INSTANCE_DIMENSION, "Value": instance_id}]},
            "Period": 60, "Stat": "Maximum"}}],
        # The end is exclusive and cut to the second: a minute ahead keeps the point reported this very second.
        StartTime=now - BACKLOG_WINDOW, EndTime=now + timedelta(minutes=1), ScanBy="TimestampDescending")
    values = result["MetricDataResults"][0]["Values"]
    return values[0] if values else None


def _symbols(s3: Any, bucket: str) -> list[str]:
    folder = symbols_prefix(MANIFEST_PREFIX)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder, Delimiter="/")
    return sorted(p["Prefix"][len(folder):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))


def _recent_manifests(s3: Any, bucket: str, symbol: str, now: datetime) -> list[tuple[Part, str]]:
    found = []
    for hours in range(LOOKBACK_HOURS):
        moment = now - timedelta(hours=hours)
        prefix = hour_prefix(MANIFEST_PREFIX, symbol, moment.date(), moment.hour)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                if name.startswith("part-") and name.endswith(MANIFEST_SUFFIX):
                    stem = f"{symbol}-{name[len('part-'):-len(MANIFEST_SUFFIX)]}"
                    try:
                        found.append((Part.from_stem(stem), obj["Key"]))
                    except ValueError:
                        continue
    return found


def gather(*, cloudwatch: Any, s3: Any, bucket: str, stack: str, now: datetime,
           symbols: Iterable[str] | None = None) -> Status:
    now_ms = int(now.timestamp() * 1000)
    instances: dict[str, Instance] = {}
    fleet_alarms: dict[str, str] = {}
    for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=f"{stack}-",
                                                                      AlarmTypes=["MetricAlarm"]):
        for alarm in page["MetricAlarms"]:
            ids = _alarm_instances(alarm)
            if len(ids) == 1:
                (iid,) = ids
                instances.setdefault(iid, Instance(iid)).alarms[alarm["AlarmName"]] = alarm["StateValue"]
            else:
                fleet_alarms[alarm["AlarmName"]] = alarm["StateValue"]
    # Without the stack's alarms (another stack name, or none deployed), every instance found counts as current.
    alarmed = bool(instances)
    for page in cloudwatch.get_paginator("list_metrics").paginate(Namespace=stack, MetricName=metrics.HEARTBEAT):
        for metric in page["Metrics"]:
            for dimension in metric["Dimensions"]:
                if dimension["Name"] == metrics.INSTANCE_DIMENSION:
                    instances.setdefault(dimension["Value"], Instance(dimension["Value"], current=not alarmed))

    newest: list[Newest] = []
    for symbol in symbols if symbols is not None else _symbols(s3, bucket):
        manifests = _recent_manifests(s3, bucket, symbol, now)
        for part, _ in manifests:
            instance = instances.setdefault(part.instance_id, Instance(part.instance_id, current=not alarmed))
            if instance.last_object_ms is None or part.opened_at_ms > instance.last_object_ms:
                instance.last_object_ms = part.opened_at_ms
        if manifests:
            part, key = max(manifests, key=lambda found: found[0].opened_at_ms)
            newest.append(Newest(symbol, key, msgspec.json.decode(read(s3, bucket, key, limit=MANIFEST_MAX_BYTES))))

    for instance in instances.values():
        instance.backlog_bytes = _latest(cloudwatch, stack, metrics.BACKLOG_BYTES, instance.instance_id, now)
        instance.backlog_age_seconds = _latest(cloudwatch, stack, metrics.BACKLOG_AGE, instance.instance_id, now)
    return Status(now_ms=now_ms, instances=dict(sorted(instances.items())), fleet_alarms=fleet_alarms,
                  newest=newest)


def _ago(status: Status, ms: int | None) -> str:
    if ms is None:
        return f"none in the last {LOOKBACK_HOURS} h"
    return f"{iso_millis(ms)} ({(status.now_ms - ms) / 1000:.0f} s ago)"


def _backlog(instance: Instance) -> str:
    if instance.backlog_bytes is None:
        return "no metrics"
    return f"{instance.backlog_bytes:.0f} bytes, oldest {instance.backlog_age_seconds or 0:.0f} s"


def table(status: Status) -> str:
    problems = status.alarming
    lines = [f"fleet at {iso_millis(status.now_ms)}: {'ALARMING' if problems else 'all well'}", ""]
    for instance in status.instances.values():
        notes = ("  SILENT" if status.silent(instance) else "") + ("" if instance.current else "  (not in the stack)")
        lines.append(f"{instance.instance_id}{notes}")
        lines.append(f"  last object:  {_ago(status, instance.last_object_ms)}")
        lines.append(f"  backlog:      {_backlog(instance)}")
        for name, state in sorted(instance.alarms.items()):
            lines.append(f"  alarm:        {state:<17} {name}")
    for name, state in sorted(status.fleet_alarms.items()):
        lines.append(f"fleet alarm:    {state:<17} {name}")
    lines += ["", "newest manifest per symbol:"]
    for newest in status.newest:
        payload = newest.doc["payload"]
        lines.append(f"  {newest.symbol}: {newest.key}: {payload['record_count']} records, ids "
                     f"{payload['first_trade_id']}..{payload['last_trade_id']}, created {newest.doc['created_at']} "
                     f"by {newest.doc['source']['instance_id']}")
    if not status.newest:
        lines.append(f"  none in the last {LOOKBACK_HOURS} h")
    if problems:
        lines += ["", "alarming:", *(f"  {problem}" for problem in problems)]
    return "\n".join(lines)


def utc_now() -> datetime:
    return datetime.now(UTC)
