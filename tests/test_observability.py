"""Synth tests of what watches the fleet: log group, alarms, their topic, the dashboard, the role's log permission.

CloudWatch evaluates none of this offline: the alarms' thresholds, periods and missing-data treatment, the key
policy and the IAM resource are asserted on the template; the rehearsal deploys and destroys the resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template

from collector import metrics
from stacks import observability
from stacks.application import STACK_NAME
from tests.test_stack import _resources, _synth

NAMESPACE = STACK_NAME
LOG_GROUP_NAME = f"/tradecollector/{STACK_NAME}"


@pytest.fixture(scope="module")
def template_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _synth(tmp_path_factory.mktemp("cdk.out"))


def _one(template_json: dict[str, Any], resource_type: str) -> tuple[str, dict[str, Any]]:
    """The Observability construct's one resource of this type (the daily job has a log group and alarms of its
    own: test_stack.py)."""
    ((name, resource),) = _watching(template_json, resource_type).items()
    return name, resource["Properties"]


def _watching(template_json: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {n: r for n, r in _resources(template_json, resource_type).items() if n.startswith("Observability")}


def _instances(template_json: dict[str, Any]) -> list[str]:
    return sorted(_resources(template_json, "AWS::EC2::Instance"))


def _alarms(template_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["Properties"]["AlarmName"]: r["Properties"]
            for r in _watching(template_json, "AWS::CloudWatch::Alarm").values()}


def test_one_log_group_encrypted_with_the_stacks_key_and_kept_30_days(template_json: dict[str, Any]) -> None:
    key, _ = _one(template_json, "AWS::KMS::Key")
    _, group = _one(template_json, "AWS::Logs::LogGroup")
    assert group == {"LogGroupName": LOG_GROUP_NAME, "RetentionInDays": 30, "KmsKeyId": {"Fn::GetAtt": [key, "Arn"]}}


def test_log_retention_is_a_context_setting(tmp_path: Path) -> None:
    _, group = _one(_synth(tmp_path, logRetentionDays="90"), "AWS::Logs::LogGroup")
    assert group["RetentionInDays"] == 90


def test_the_key_rotates_and_serves_cloudwatch_logs_for_this_group_and_the_alarms(
        template_json: dict[str, Any]) -> None:
    _, key = _one(template_json, "AWS::KMS::Key")
    assert key["EnableKeyRotation"] is True
    by_sid = {s.get("Sid"): s for s in key["KeyPolicy"]["Statement"]}
    logs = by_sid["CloudWatchLogsEncryptsTheCollectorLogGroup"]
    assert logs["Principal"] == {"Service": {"Fn::Join": ["", ["logs.", {"Ref": "AWS::Region"}, ".amazonaws.com"]]}}
    assert logs["Condition"] == {"ArnEquals": {"kms:EncryptionContext:aws:logs:arn": {"Fn::Join": ["", [
        "arn:", {"Ref": "AWS::Partition"}, ":logs:", {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"},
        f":log-group:{LOG_GROUP_NAME}"]]}}}
    alarms = by_sid["CloudWatchAlarmsPublishToTheEncryptedTopic"]
    assert alarms["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert sorted(alarms["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]


def test_alarm_topic_is_encrypted_tls_only_and_has_no_subscription_by_default(template_json: dict[str, Any]) -> None:
    key, _ = _one(template_json, "AWS::KMS::Key")
    topic, props = _one(template_json, "AWS::SNS::Topic")
    assert props["KmsMasterKeyId"] == {"Fn::GetAtt": [key, "Arn"]}
    _, policy = _one(template_json, "AWS::SNS::TopicPolicy")
    tls, alarms = policy["PolicyDocument"]["Statement"]
    assert (tls["Effect"], tls["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": "false"}})
    # Only this stack's alarms may publish (the policy replaces SNS's default one).
    assert alarms == {"Sid": "ThisStacksAlarmsPublish", "Effect": "Allow", "Action": "sns:Publish",
                      "Principal": {"Service": "cloudwatch.amazonaws.com"}, "Resource": {"Ref": topic},
                      "Condition": {"ArnLike": {"aws:SourceArn": {"Fn::Join": ["", [
                          "arn:", {"Ref": "AWS::Partition"}, ":cloudwatch:", {"Ref": "AWS::Region"}, ":",
                          {"Ref": "AWS::AccountId"}, f":alarm:{STACK_NAME}-*"]]}}}}
    assert not _resources(template_json, "AWS::SNS::Subscription")
    for alarm in _alarms(template_json).values():
        assert {"Ref": topic} in alarm["AlarmActions"] and alarm["OKActions"] == [{"Ref": topic}]


def test_alarm_email_subscribes_to_the_topic(tmp_path: Path) -> None:
    template = Template.from_json(_synth(tmp_path, alarmEmail="ops@example.com"))
    template.has_resource_properties("AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"})


def test_the_role_may_write_to_this_log_group_only(template_json: dict[str, Any]) -> None:
    group, _ = _one(template_json, "AWS::Logs::LogGroup")
    (role,) = [n for n in _resources(template_json, "AWS::IAM::Role") if n.startswith("FleetRole")]
    statements = [s for p in _resources(template_json, "AWS::IAM::Policy").values()
                  if {"Ref": role} in p["Properties"]["Roles"] for s in p["Properties"]["PolicyDocument"]["Statement"]]
    logs = [s for s in statements if any(a.startswith(("logs:", "cloudwatch:")) for a in
                                         (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))]
    # The group's ARN ends in `:*`: its streams. No PutMetricData: the metrics travel in the log stream (EMF).
    assert logs == [{"Sid": "WriteCollectorLogs", "Effect": "Allow",
                     "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                     "Resource": {"Fn::GetAtt": [group, "Arn"]}}]


def _metric(alarm: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return alarm["Namespace"], alarm["MetricName"], {d["Name"]: d["Value"] for d in alarm["Dimensions"]}


def test_per_instance_alarms_with_thresholds_and_missing_data_treatment(template_json: dict[str, Any]) -> None:
    alarms = _alarms(template_json)
    for index, instance in enumerate(_instances(template_json)):
        ref = {"Ref": instance}
        silent = alarms[f"{STACK_NAME}-{index}-no-object-shipped"]
        assert _metric(silent) == (NAMESPACE, metrics.OBJECTS_SHIPPED, {"InstanceId": ref})
        assert (silent["Statistic"], silent["Period"], silent["EvaluationPeriods"], silent["DatapointsToAlarm"],
                silent["ComparisonOperator"], silent["Threshold"], silent["TreatMissingData"]) == (
            "Sum", 60, 3, 3, "LessThanThreshold", 1, "breaching")

        backlog = alarms[f"{STACK_NAME}-{index}-backlog-old"]
        assert _metric(backlog) == (NAMESPACE, metrics.BACKLOG_AGE, {"InstanceId": ref})
        assert (backlog["Statistic"], backlog["ComparisonOperator"], backlog["Threshold"],
                backlog["TreatMissingData"]) == ("Maximum", "GreaterThanThreshold", 300, "notBreaching")

        missing = alarms[f"{STACK_NAME}-{index}-missing-trade-ids"]
        (expression, stat) = missing["Metrics"]
        assert expression["Expression"] == "FILL(m0, 0)"
        assert stat["MetricStat"] == {"Metric": {"Namespace": NAMESPACE, "MetricName": metrics.MISSING_TRADE_IDS,
                                                 "Dimensions": [{"Name": "InstanceId", "Value": ref},
                                                                {"Name": "Symbol", "Value": "BTCUSDT"}]},
                                      "Period": 900, "Stat": "Sum"}
        assert (missing["Threshold"], missing["ComparisonOperator"]) == (
            observability.MISSING_IDS_THRESHOLD, "GreaterThanThreshold")

        credits = alarms[f"{STACK_NAME}-{index}-cpu-credits-low"]
        assert _metric(credits) == ("AWS/EC2", "CPUCreditBalance", {"InstanceId": ref})
        assert (credits["Statistic"], credits["Period"], credits["ComparisonOperator"], credits["Threshold"]) == (
            "Minimum", 300, "LessThanThreshold", observability.CPU_CREDITS_LOW)

        system = alarms[f"{STACK_NAME}-{index}-system-check-failed"]
        assert _metric(system) == ("AWS/EC2", "StatusCheckFailed_System", {"InstanceId": ref})
        assert (system["Statistic"], system["Period"], system["EvaluationPeriods"], system["Threshold"]) == (
            "Maximum", 60, 2, 1)
        assert {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":automate:", {"Ref": "AWS::Region"},
                                  ":ec2:recover"]]} in system["AlarmActions"]
    assert len(alarms) == 5 * 3 + 1


def test_fleet_alarm_fires_when_fewer_than_two_deliver(template_json: dict[str, Any]) -> None:
    fleet = _alarms(template_json)[f"{STACK_NAME}-fleet-fewer-than-2-delivering"]
    assert (fleet["ComparisonOperator"], fleet["Threshold"], fleet["EvaluationPeriods"], fleet["TreatMissingData"]) \
        == ("LessThanThreshold", 2, 3, "breaching")
    expression, *stats = fleet["Metrics"]
    assert expression["Expression"] == " + ".join(f"IF(FILL(m{n}, 0) > 0, 1, 0)" for n in range(3))
    assert [s["MetricStat"]["Metric"]["Dimensions"] for s in stats] == [
        [{"Name": "InstanceId", "Value": {"Ref": instance}}] for instance in _instances(template_json)]


def test_every_alarm_says_what_to_look_at_first(template_json: dict[str, Any]) -> None:
    for name, alarm in _alarms(template_json).items():
        assert "Look first at" in alarm["AlarmDescription"], name


def test_the_dashboard_names_every_instance_and_shows_the_alarms(template_json: dict[str, Any]) -> None:
    _, dashboard = _one(template_json, "AWS::CloudWatch::Dashboard")
    # The body as CloudFormation will write it, with each reference shown as its JSON.
    body = "".join(p if isinstance(p, str) else json.dumps(p) for p in dashboard["DashboardBody"]["Fn::Join"][1])
    for instance in _instances(template_json):
        assert json.dumps({"Ref": instance}) in body
    for name in ("TradesReceived", "BacklogBytes", "BacklogAgeSeconds", "TradeIdGaps", "Reconnects",
                 "CPUUtilization", "CPUCreditBalance", '"type":"alarm"'):
        assert name in body, name
    alarms = _watching(template_json, "AWS::CloudWatch::Alarm")
    for alarm in alarms.values():
        assert f':alarm:{alarm["Properties"]["AlarmName"]}"' in body
    assert sorted(_resources(template_json, "AWS::CloudWatch::Dashboard").popitem()[1]["DependsOn"]) == sorted(alarms)
    assert dashboard["DashboardName"] == STACK_NAME


def test_instances_get_the_log_group_and_namespace_in_their_environment(template_json: dict[str, Any]) -> None:
    group, _ = _one(template_json, "AWS::Logs::LogGroup")
    for instance in _resources(template_json, "AWS::EC2::Instance").values():
        parts = instance["Properties"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
        assert {"Ref": group} in parts
        assert any(f"COLLECTOR_METRICS_NAMESPACE={NAMESPACE}\n" in p for p in parts if isinstance(p, str))
