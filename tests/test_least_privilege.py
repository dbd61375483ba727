"""Least privilege, for real: the instance role exactly as the synthesized template defines it, created in moto's
IAM with enforcement on, assumed through STS, and the real collector run with those temporary credentials.

The collector must deliver everything with them, and the same credentials must be refused everything else in S3
(read, list, delete, writes outside `raw/` and `manifests/`, writes to another bucket): the collector needs
nothing beyond what the stack grants, and the stack grants nothing beyond what the collector needs. The daily
job's role likewise: with its credentials alone the job certifies a day with a hole (read, list, backfill,
compact), and they delete nothing and write nowhere but backfill/ and curated/.

moto evaluates actions and resource ARNs of identity policies but NOT their conditions (an Allow with a
condition allows as if it had none), and it does not evaluate bucket policies at all; whatever depends on a
condition -- TLS only, the bucket's denials of overwrites, other encryption, other storage classes, other networks --
stays asserted on the template (test_stack.py). What moto cannot do is done here for the denials: the collector's
real PUT requests, recorded on their way to moto, are evaluated against the template's Deny conditions. moto runs
in its own process (tests/rehearsal_support.py), so switching its IAM enforcement on leaves the other tests' S3
endpoint alone.
"""

from __future__ import annotations

import fnmatch
import json
import os
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest
from botocore.exceptions import ClientError

from audit import daily
from audit.binance_rest import HistoricalTrades
from audit.days import day_bounds_ms
from collector.config import ALLOW_INSECURE_WS_ENV
from collector.keys import CURATED_PREFIX, DATA_PREFIX, MANIFEST_PREFIX
from collector.spool import unshipped
from sandbox.binance_rest import HistoryServer
from sandbox.market import Market
from sandbox.replicas import Run, write
from stacks.application import STACK_NAME, create_app
from tests.cdk_support import cdk_context
from tests.conftest import BUCKET, Collector, landed
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
    roles = [k for k, r in resources.items() if r["Type"] == "AWS::IAM::Role"]
    (group_id,) = (k for k, r in resources.items() if r["Type"] == "AWS::Logs::LogGroup"
                   and k.startswith("Observability"))
    (job_group_id,) = (k for k, r in resources.items() if r["Type"] == "AWS::Logs::LogGroup"
                       and k.startswith("DailyJob"))
    refs = {"AWS::StackId": STACK_ID, "AWS::StackName": STACK_NAME, "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", bucket_id: BUCKET,
            endpoint_id: STACK_ENDPOINT, group_id: LOG_GROUP}
    # A log group's Arn attribute on AWS ends in `:*` (its streams).
    attributes = {(bucket_id, "Arn"): f"arn:aws:s3:::{BUCKET}",
                  (group_id, "Arn"): f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{LOG_GROUP}:*",
                  (job_group_id, "Arn"): f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{job_group_id}:*",
                  **{(role_id, "Arn"): f"arn:aws:iam::{ACCOUNT}:role/{role_id}" for role_id in roles}}
    return refs, attributes


def _instance_role(template: dict[str, Any]) -> InstanceRole:
    """The role the instances get (through the instance profile), with references resolved for the test."""
    (profile,) = (r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::InstanceProfile")
    (role_ref,) = profile["Properties"]["Roles"]
    return _role(template, role_ref["Ref"])


def _role(template: dict[str, Any], role_id: str) -> InstanceRole:
    """The role `role_id` (a logical id) with its statements, references resolved for the test."""
    resources = template["Resources"]
    refs, attributes = _references(template)
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
    return _denials_of(template, _instance_role(template).name)


def _denials_of(template: dict[str, Any], role_id: str) -> list[dict[str, Any]]:
    (policy,) = (r for r in template["Resources"].values() if r["Type"] == "AWS::S3::BucketPolicy")
    refs, attributes = _references(template)
    statements = resolve(policy["Properties"]["PolicyDocument"]["Statement"], refs, attributes)
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/{role_id}"
    return [s for s in statements if s["Effect"] == "Deny" and s["Principal"] == {"AWS": role_arn}]


def _denied_by(denials: list[dict[str, Any]], headers: dict[str, str], source_vpce: str | None,
               key: str = "any/key") -> list[str]:
    """The Sids of the statements that deny a PutObject of `key` with these (lower-cased) headers, by IAM's rules
    for the operators the policy uses; a condition key this test does not know fails it."""
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
        if operator == "StringNotEqualsIfExists":
            return value is not None and value != expected
        raise AssertionError(f"teach _denied_by the {operator} operator")

    return [s["Sid"] for s in denials if s["Action"] == "s3:PutObject"
            and any(fnmatch.fnmatchcase(f"arn:aws:s3:::{BUCKET}/{key}", r) for r in _as_list(s["Resource"]))
            and all(holds(op, name, value) for op, pairs in s["Condition"].items() for name, value in pairs.items())]


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


# --- the daily job --------------------------------------------------------------------------------------------

JOB_DAY = date(2026, 11, 28)
JOB_SYMBOL = "BTCUSDT"


@dataclass
class JobEnforced:
    server: MotoServer
    admin: dict[str, str]
    role: dict[str, str]  # the daily job's role's temporary credentials
    market: Market
    denials: list[dict[str, Any]]  # the bucket policy's statements on the job's PutObject, resolved


@pytest.fixture(scope="module")
def job_enforced(template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobEnforced]:
    """The daily job's role as the template defines it, in moto's IAM with enforcement on, and a day with a hole
    that two replicas share, planted with the admin's credentials."""
    (role_id,) = (k for k, r in template["Resources"].items()
                  if r["Type"] == "AWS::IAM::Role" and k.startswith("DailyJobRole"))
    job_role = _role(template, role_id)
    with MotoServer(tmp_path_factory.mktemp("moto-job") / "moto.log") as server:
        iam = server.client("iam")
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="everything", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        admin = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        s3 = server.client("s3")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        start, end = day_bounds_ms(JOB_DAY)
        market = Market.generate(JOB_SYMBOL, start_ms=start - 600_000, end_ms=end + 600_000, spacing_ms=30_000)
        a, z = market.trades[0].id, market.trades[-1].id
        lost = frozenset(range(a + 1000, a + 1100))
        write(s3, BUCKET, market, [Run("i-a", a, z, lost=lost), Run("i-b", a, z, lost=lost)])
        trust = trust_also(job_role.trust, iam.get_user(UserName="admin")["User"]["Arn"])
        role = iam.create_role(RoleName=job_role.name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        iam.put_role_policy(RoleName=job_role.name, PolicyName="FromTheTemplate", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": job_role.statements}))
        server.set_iam_enforcement(True)
        credentials = server.client("sts", admin).assume_role(
            RoleArn=role["Arn"], RoleSessionName="daily-job")["Credentials"]
        yield JobEnforced(server, admin, {"AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
                                          "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
                                          "AWS_SESSION_TOKEN": credentials["SessionToken"]}, market,
                          _denials_of(template, role_id))


def test_the_daily_job_certifies_a_day_with_only_its_roles_permissions(job_enforced: JobEnforced) -> None:
    """Read, list and write backfill/ and curated/ are all it needs (the control for the refusals below), and
    the bucket's denials let each of its real writes through: write-once under backfill/, SSE-S3 everywhere."""
    creds = job_enforced.role
    with S3Faults(job_enforced.server.endpoint) as recorder, HistoryServer({JOB_SYMBOL: job_enforced.market}) as rest:
        s3 = boto3.client("s3", endpoint_url=recorder.url, region_name=REGION,
                          aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                          aws_session_token=creds["AWS_SESSION_TOKEN"])
        run = daily.run_day(s3, BUCKET, JOB_SYMBOL, JOB_DAY, HistoricalTrades(rest.url),
                            now_ms=day_bounds_ms(JOB_DAY)[1] + 3_600_000)
        assert run.certified and run.backfilled == 100, run.summary()
        again = daily.run_day(s3, BUCKET, JOB_SYMBOL, JOB_DAY, HistoricalTrades(rest.url),
                              now_ms=day_bounds_ms(JOB_DAY)[1] + 3_600_000)
    assert again.already_certified
    keys = [unquote(path.split("?")[0]).split("/", 2)[2] for path in recorder.put_paths]
    assert {k.split("/")[0] for k in keys} == {"backfill", "curated"}
    assert [_denied_by(job_enforced.denials, h, None, k) for h, k in zip(recorder.put_headers, keys, strict=True)
            ] == [[]] * len(keys)
    # The same requests bent: an overwrite under backfill/ is refused, under curated/ (the manifest) it is not.
    backfilled = next(i for i, k in enumerate(keys) if k.startswith("backfill/"))
    bent = {k: v for k, v in recorder.put_headers[backfilled].items() if k != "if-none-match"}
    assert _denied_by(job_enforced.denials, bent, None, keys[backfilled]) == ["DenyJobOverwrites"]
    assert _denied_by(job_enforced.denials, bent, None, "curated/x/manifest.json") == []
    assert _denied_by(job_enforced.denials, bent | {"x-amz-server-side-encryption": "aws:kms"}, None,
                      "curated/x/manifest.json") == ["DenyJobOtherEncryption"]


@pytest.mark.parametrize("operation", ["delete_raw", "delete_curated", "put_raw", "put_manifests", "put_elsewhere"])
def test_the_daily_job_may_delete_nothing_and_write_nowhere_else(job_enforced: JobEnforced, operation: str) -> None:
    admin = job_enforced.server.client("s3", job_enforced.admin)
    s3 = job_enforced.server.client("s3", job_enforced.role)
    existing = f"{DATA_PREFIX}probe/existing.jsonl.gz"
    admin.put_object(Bucket=BUCKET, Key=existing, Body=b"kept", ServerSideEncryption="AES256")
    put = {"Body": b"x", "ServerSideEncryption": "AES256"}
    calls = {"delete_raw": lambda: s3.delete_object(Bucket=BUCKET, Key=existing),
             "delete_curated": lambda: s3.delete_object(Bucket=BUCKET, Key=f"{CURATED_PREFIX}probe/x.parquet"),
             "put_raw": lambda: s3.put_object(Bucket=BUCKET, Key=f"{DATA_PREFIX}probe/x.jsonl.gz", **put),
             "put_manifests": lambda: s3.put_object(Bucket=BUCKET, Key=f"{MANIFEST_PREFIX}probe/x.json", **put),
             "put_elsewhere": lambda: s3.put_object(Bucket=BUCKET, Key="athena-results/x.csv", **put)}
    with pytest.raises(ClientError) as refused:
        calls[operation]()
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert admin.get_object(Bucket=BUCKET, Key=existing)["Body"].read() == b"kept"
    admin.delete_object(Bucket=BUCKET, Key=existing)
