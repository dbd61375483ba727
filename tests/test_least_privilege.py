"""Least privilege, for real: the instance role exactly as the synthesized template defines it, created in moto's
IAM with enforcement on, assumed through STS, and the real collector run with those temporary credentials.

The collector must deliver everything with them, and the same credentials must be refused everything else in S3
(read, list, delete, writes outside `raw/` and `manifests/`, writes to another bucket): the collector needs
nothing beyond what the stack grants, and the stack grants nothing beyond what the collector needs.

moto evaluates actions and resource ARNs of identity policies but NOT their conditions (an Allow with a
condition allows as if it had none), and it does not evaluate bucket policies at all; whatever depends on a
condition -- TLS only, the bucket's denials of overwrites, other encryption, other storage classes, other networks --
stays asserted on the template (test_stack.py). What moto cannot do is done here for the denials: the collector's
real PUT requests, recorded on their way to moto, are evaluated against the template's Deny conditions. moto runs
in its own process (tests/rehearsal_support.py), so switching its IAM enforcement on leaves the other tests' S3
endpoint alone.
"""

from __future__ import annotations

import json
import os
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from collector.config import ALLOW_INSECURE_WS_ENV
from collector.keys import DATA_PREFIX, MANIFEST_PREFIX
from stacks.application import STACK_NAME, create_app
from tests.cdk_support import cdk_context
from tests.conftest import BUCKET, Collector, landed, unshipped
from tests.rehearsal_support import ACCOUNT, REGION, MotoServer, as_moto_authorizes, resolve, trust_also
from tests.s3_faults import S3Faults

pytestmark = [pytest.mark.e2e, pytest.mark.rehearsal]

OTHER_BUCKET = "someone-elses-bucket"
LOG_GROUP = f"/tradecollector/{STACK_NAME}"
OTHER_LOG_GROUP = "/someone/elses"
STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK_NAME}/{uuid.UUID(int=1)}"
STACK_ENDPOINT = "vpce-0collectors"  # the stack's S3 gateway endpoint, which the instances' requests go through


@dataclass
class InstanceRole:
    name: str
    trust: dict[str, Any]
    statements: list[dict[str, Any]]  # every identity-policy statement attached to the role, template order
    managed_policy_arns: list[str]


def _references(template: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    """Values for the Refs and GetAtts the role and the bucket policy use."""
    resources = template["Resources"]
    (bucket_id,) = (k for k, r in resources.items() if r["Type"] == "AWS::S3::Bucket")
    (endpoint_id,) = (k for k, r in resources.items() if r["Type"] == "AWS::EC2::VPCEndpoint")
    (role_id,) = (k for k, r in resources.items() if r["Type"] == "AWS::IAM::Role" and k.startswith("FleetRole"))
    (group_id,) = (k for k, r in resources.items() if r["Type"] == "AWS::Logs::LogGroup")
    refs = {"AWS::StackId": STACK_ID, "AWS::StackName": STACK_NAME, "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", bucket_id: BUCKET,
            endpoint_id: STACK_ENDPOINT, group_id: LOG_GROUP}
    # A log group's Arn attribute on AWS ends in `:*` (its streams).
    attributes = {(bucket_id, "Arn"): f"arn:aws:s3:::{BUCKET}",
                  (role_id, "Arn"): f"arn:aws:iam::{ACCOUNT}:role/{role_id}",
                  (group_id, "Arn"): f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{LOG_GROUP}:*"}
    return refs, attributes


def _instance_role(template: dict[str, Any]) -> InstanceRole:
    """The role the instances get (through the instance profile), with references resolved for the test."""
    resources = template["Resources"]
    refs, attributes = _references(template)
    (profile,) = (r for r in resources.values() if r["Type"] == "AWS::IAM::InstanceProfile")
    (role_ref,) = profile["Properties"]["Roles"]
    role_id = role_ref["Ref"]
    role = resources[role_id]["Properties"]
    statements = [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    for resource in resources.values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in resource["Properties"].get("Roles", []):
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return InstanceRole(
        name=role_id,
        trust=resolve(role["AssumeRolePolicyDocument"], refs, attributes),
        statements=resolve(statements, refs, attributes),
        managed_policy_arns=resolve(role.get("ManagedPolicyArns", []), refs, attributes),
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    assembly = create_app(cdk_context(), outdir=str(tmp_path_factory.mktemp("cdk.out"))).synth()
    return assembly.get_stack_by_name(STACK_NAME).template


@pytest.fixture(scope="module")
def instance_role(template: dict[str, Any]) -> InstanceRole:
    return _instance_role(template)


@pytest.fixture(scope="module")
def put_denials(template: dict[str, Any]) -> list[dict[str, Any]]:
    """The bucket policy's Deny statements on the instance role's PutObject, references resolved."""
    (policy,) = (r for r in template["Resources"].values() if r["Type"] == "AWS::S3::BucketPolicy")
    refs, attributes = _references(template)
    statements = resolve(policy["Properties"]["PolicyDocument"]["Statement"], refs, attributes)
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/{_instance_role(template).name}"
    return [s for s in statements if s["Effect"] == "Deny" and s["Principal"] == {"AWS": role_arn}]


def _denied_by(denials: list[dict[str, Any]], headers: dict[str, str], source_vpce: str | None) -> list[str]:
    """The Sids of the statements that deny a PutObject with these (lower-cased) headers, by IAM's rules for the
    operators the policy uses; a condition key this test does not know fails it."""
    context = {"s3:if-none-match": headers.get("if-none-match"),
               "s3:x-amz-server-side-encryption": headers.get("x-amz-server-side-encryption"),
               "s3:x-amz-server-side-encryption-customer-algorithm":
                   headers.get("x-amz-server-side-encryption-customer-algorithm"),
               "s3:x-amz-storage-class": headers.get("x-amz-storage-class"),
               "aws:SourceVpce": source_vpce}

    def holds(operator: str, key: str, expected: str) -> bool:
        value = context[key]
        if operator == "Null":
            return (value is None) == (expected == "true")
        if operator == "StringNotEquals":
            return value != expected  # a key missing from the request matches a negated operator
        raise AssertionError(f"teach _denied_by the {operator} operator")

    return [s["Sid"] for s in denials if s["Action"] == "s3:PutObject"
            and all(holds(op, key, value) for op, pairs in s["Condition"].items() for key, value in pairs.items())]


@dataclass
class Enforced:
    server: MotoServer
    admin: dict[str, str]  # an IAM user allowed everything: sets up, reads back
    role: dict[str, str]  # the instance role's temporary credentials (STS AssumeRole)

    def s3(self, credentials: dict[str, str]) -> Any:
        return self.server.client("s3", credentials)


@pytest.fixture(scope="module")
def enforced(instance_role: InstanceRole, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enforced]:
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        iam = server.client("iam")
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="everything", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        admin_arn = iam.get_user(UserName="admin")["User"]["Arn"]
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        admin = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        s3 = server.client("s3")
        for bucket in (BUCKET, OTHER_BUCKET):
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        for group in (LOG_GROUP, OTHER_LOG_GROUP):
            server.client("logs").create_log_group(logGroupName=group)
        # The template's trust names only the EC2 service; the admin may assume the role too (rehearsal_support).
        trust = trust_also(instance_role.trust, admin_arn)
        role = iam.create_role(RoleName=instance_role.name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        iam.put_role_policy(RoleName=instance_role.name, PolicyName="FromTheTemplate", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": as_moto_authorizes(instance_role.statements)}))
        for arn in instance_role.managed_policy_arns:
            iam.attach_role_policy(RoleName=instance_role.name, PolicyArn=arn)

        server.set_iam_enforcement(True)
        credentials = server.client("sts", admin).assume_role(
            RoleArn=role["Arn"], RoleSessionName="collector")["Credentials"]
        yield Enforced(server=server, admin=admin, role={"AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
                                                         "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
                                                         "AWS_SESSION_TOKEN": credentials["SessionToken"]})


def test_the_role_grants_s3_put_object_only(instance_role: InstanceRole) -> None:
    """What gets created below, in words: PutObject on two prefixes of one bucket is the only S3 permission."""
    s3 = [s for s in instance_role.statements if any(str(a).startswith("s3:") for a in _as_list(s["Action"]))]
    assert [(_as_list(s["Action"]), s["Effect"]) for s in s3] == [(["s3:PutObject"], "Allow")]
    assert sorted(s3[0]["Resource"]) == sorted(f"arn:aws:s3:::{BUCKET}/{p}*" for p in (DATA_PREFIX, MANIFEST_PREFIX))
    assert instance_role.managed_policy_arns == []  # ssmAccess is off by default


def test_collector_delivers_everything_with_only_the_roles_permissions(
        enforced: Enforced, put_denials: list[dict[str, Any]], feed, tmp_path: Path, manifest_schema) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "AWS_"))}
    env.update(enforced.server.env(enforced.role))
    env.update({"COLLECTOR_BUCKET": BUCKET, "COLLECTOR_WS_URL": feed.feed.url, "COLLECTOR_SYMBOLS": "BTCUSDT,ETHUSDT",
                "COLLECTOR_SPOOL_DIR": str(tmp_path / "spool"), "COLLECTOR_INSTANCE_ID": "i-0leastprivilege",
                "COLLECTOR_ROTATE_SECONDS": "1", ALLOW_INSECURE_WS_ENV: "1", "COLLECTOR_LOG_GROUP": LOG_GROUP,
                "COLLECTOR_METRICS_INTERVAL": "1"})
    with S3Faults(enforced.server.endpoint) as recorder:  # passes everything on, keeps the PUTs' headers
        env["AWS_ENDPOINT_URL_S3"] = recorder.url
        collector = Collector(env, tmp_path / "collector.log")
        try:
            collector.wait_for_log("uploaded s3://", count=6)
            assert collector.terminate() == 0
        finally:
            if collector.proc.poll() is None:
                collector.kill()
    log = collector.log
    assert "AccessDenied" not in log and "retrying" not in log, log
    assert "stopped: everything shipped" in log
    assert "CloudWatch Logs" not in log, "log lines and metrics went out with the role's permissions"
    events = enforced.server.client("logs", enforced.admin).get_log_events(
        logGroupName=LOG_GROUP, logStreamName="i-0leastprivilege", startFromHead=True)["events"]
    assert any(e["message"].startswith('{"_aws"') for e in events) and any("rotated" in e["message"] for e in events)
    assert unshipped(tmp_path / "spool") == []
    # Read back with the admin's credentials: the role itself may not read.
    landing = landed(types.SimpleNamespace(client=lambda: enforced.s3(enforced.admin)), feed,
                     ("BTCUSDT", "ETHUSDT"), manifest_schema)
    assert landing.objects and len(landing.manifests) == len(landing.objects)

    # The bucket's own denials let every request the collector made through (from inside the VPC)...
    puts = recorder.put_headers
    assert len(puts) == len(landing.objects) + len(landing.manifests)
    assert [_denied_by(put_denials, headers, STACK_ENDPOINT) for headers in puts] == [[]] * len(puts)
    # ...and refuse the same request bent in each way the collector never bends it.
    real = puts[0]
    without = {k: v for k, v in real.items() if k not in ("if-none-match", "x-amz-server-side-encryption")}
    assert _denied_by(put_denials, without | {"x-amz-server-side-encryption": "AES256"}, STACK_ENDPOINT) == [
        "DenyWriterOverwrites"]
    assert _denied_by(put_denials, real | {"x-amz-server-side-encryption": "aws:kms"}, STACK_ENDPOINT) == [
        "DenyWriterOtherEncryption"]
    assert _denied_by(put_denials, without | {"if-none-match": "*",
                                              "x-amz-server-side-encryption-customer-algorithm": "AES256"},
                      STACK_ENDPOINT) == ["DenyWriterOtherEncryption", "DenyWriterCustomerKeys"]
    assert _denied_by(put_denials, real | {"x-amz-storage-class": "GLACIER"}, STACK_ENDPOINT) == [
        "DenyWriterOtherStorageClass"]
    assert _denied_by(put_denials, real | {"x-amz-storage-class": "STANDARD"}, STACK_ENDPOINT) == []
    assert _denied_by(put_denials, real, None) == _denied_by(put_denials, real, "vpce-0elsewhere") == [
        "DenyWriterOutsideTheVpc"]


@pytest.mark.parametrize(("operation", "kwargs"), [
    ("get_object", {"Bucket": BUCKET, "Key": f"{DATA_PREFIX}probe/existing.jsonl.gz"}),
    ("list_objects_v2", {"Bucket": BUCKET}),
    ("list_objects_v2", {"Bucket": BUCKET, "Prefix": DATA_PREFIX}),
    ("delete_object", {"Bucket": BUCKET, "Key": f"{DATA_PREFIX}probe/existing.jsonl.gz"}),
    ("put_object", {"Bucket": BUCKET, "Key": "backfill/exchange=binance/x.jsonl.gz"}),
    ("put_object", {"Bucket": BUCKET, "Key": "curated/x.parquet"}),
    ("put_object", {"Bucket": BUCKET, "Key": "rawx/x.jsonl.gz"}),
    ("put_object", {"Bucket": BUCKET, "Key": "x.jsonl.gz"}),
    ("put_object", {"Bucket": OTHER_BUCKET, "Key": f"{DATA_PREFIX}x.jsonl.gz"}),
    ("put_object_acl", {"Bucket": BUCKET, "Key": f"{DATA_PREFIX}probe/existing.jsonl.gz", "ACL": "public-read"}),
    ("delete_bucket", {"Bucket": BUCKET}),
])
def test_everything_else_is_refused(enforced: Enforced, operation: str, kwargs: dict[str, Any]) -> None:
    admin = enforced.s3(enforced.admin)
    existing = f"{DATA_PREFIX}probe/existing.jsonl.gz"
    admin.put_object(Bucket=BUCKET, Key=existing, Body=b"kept", ServerSideEncryption="AES256")
    role = enforced.s3(enforced.role)
    # Control: the same credentials do write where the stack allows it, so a refusal below is the policy's.
    role.put_object(Bucket=BUCKET, Key=f"{MANIFEST_PREFIX}probe/control.json", Body=b"{}",
                    ServerSideEncryption="AES256")
    if operation.startswith("put_object") and "ACL" not in kwargs:
        kwargs = {**kwargs, "Body": b"x", "ServerSideEncryption": "AES256"}

    with pytest.raises(ClientError) as refused:
        getattr(role, operation)(**kwargs)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert admin.get_object(Bucket=BUCKET, Key=existing)["Body"].read() == b"kept"
    if operation == "put_object":
        with pytest.raises(ClientError, match="404"):
            admin.head_object(Bucket=kwargs["Bucket"], Key=kwargs["Key"])
    for key in (existing, f"{MANIFEST_PREFIX}probe/control.json"):
        admin.delete_object(Bucket=BUCKET, Key=key)


# Writing to another group is refused on AWS by the statement's resource, which moto does not check outside S3
# (rehearsal_support.py); test_observability.py asserts it on the template. Every other action is refused here.
@pytest.mark.parametrize(("operation", "kwargs"), [
    ("create_log_group", {"logGroupName": "/tradecollector/another"}),
    ("delete_log_group", {"logGroupName": LOG_GROUP}),
    ("get_log_events", {"logGroupName": LOG_GROUP, "logStreamName": "i-x"}),
    ("put_retention_policy", {"logGroupName": LOG_GROUP, "retentionInDays": 1}),
])
def test_in_cloudwatch_logs_the_role_may_only_create_streams_and_put_events(
        enforced: Enforced, operation: str, kwargs: dict[str, Any]) -> None:
    admin = enforced.server.client("logs", enforced.admin)
    role = enforced.server.client("logs", enforced.role)
    # Control: the same credentials do write to the stack's group.
    stream = f"i-control-{operation}"
    role.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    role.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=[{"timestamp": 0, "message": "x"}])
    with pytest.raises(ClientError) as refused:
        getattr(role, operation)(**kwargs)
    # moto answers this JSON API with an XML error, so botocore reports the HTTP status as the code.
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert f"is not authorized to perform: logs:{refused.value.operation_name}" in str(refused.value)
    assert [g["logGroupName"] for g in admin.describe_log_groups()["logGroups"]] == sorted([LOG_GROUP, OTHER_LOG_GROUP])
    admin.delete_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
