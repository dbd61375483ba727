"""Synth tests of the real stack, with cdk.json's context (feature flags included) as the CLI would load it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template
from cfnlint.api import lint

import stacks.collector_stack
import userdata
from collector.config import BINANCE_WS_URL, MAX_SYMBOLS
from stacks.application import STACK_NAME, create_app
from stacks.settings import CONTEXT_KEYS, Settings
from tests.cdk_support import REPO_ROOT, cdk_context
from userdata.archive import collector_archive, collector_files

BUCKET = "RawBucketF4E29A3F"  # stable logical id; a change would also orphan the retained bucket


def _synth(outdir: Path, **overrides: Any) -> dict[str, Any]:
    assembly = create_app(cdk_context(**overrides), outdir=str(outdir)).synth()
    return assembly.get_stack_by_name(STACK_NAME).template


@pytest.fixture(scope="session")
def template_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _synth(tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="session")
def template(template_json: dict[str, Any]) -> Template:
    return Template.from_json(template_json)


@pytest.fixture(scope="session")
def opt_in_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return Template.from_json(_synth(tmp_path_factory.mktemp("cdk.out"), destroyData="true", ssmAccess="true"))


def _resources(template_json: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template_json["Resources"].items() if r["Type"] == resource_type}


def _bucket_object_arn(suffix: str) -> dict[str, Any]:
    return {"Fn::Join": ["", [{"Fn::GetAtt": [BUCKET, "Arn"]}, suffix]]}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _fleet_role(template_json: dict[str, Any]) -> str:
    """The collectors' role's logical id."""
    (profile,) = _resources(template_json, "AWS::IAM::InstanceProfile").values()
    (role,) = profile["Properties"]["Roles"]
    return role["Ref"]


def _role_statements(template_json: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Every statement of the AWS::IAM::Policy resources attached to the role `role` (a logical id)."""
    return [statement for policy in _resources(template_json, "AWS::IAM::Policy").values()
            if {"Ref": role} in policy["Properties"]["Roles"]
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]]


def _iam_statements(template_json: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of every identity policy: inline role policies, AWS::IAM::Policy, managed policies."""
    statements = []
    for resource in template_json["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            statements += props["PolicyDocument"]["Statement"]
        if resource["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                statements += policy["PolicyDocument"]["Statement"]
    return statements


# --- bucket -------------------------------------------------------------------------------------------------


def test_bucket_is_sse_s3_private_without_acls(template: Template) -> None:
    template.resource_count_is("AWS::S3::Bucket", 1)
    template.has_resource_properties("AWS::S3::Bucket", {
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        ]},
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        },
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
    })


def test_bucket_is_retained_by_default(template: Template) -> None:
    template.has_resource("AWS::S3::Bucket", {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"})
    template.resource_count_is("Custom::S3AutoDeleteObjects", 0)


def test_bucket_denies_requests_without_tls(template: Template) -> None:
    template.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {"Statement": Match.array_with([{
        "Action": "s3:*",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        "Resource": [{"Fn::GetAtt": [BUCKET, "Arn"]}, _bucket_object_arn("/*")],
    }])}})


def test_bucket_blocks_customer_provided_keys_and_keeps_no_versions(template: Template) -> None:
    template.has_resource_properties("AWS::S3::Bucket", {
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [
            Match.object_like({"BlockedEncryptionTypes": {"EncryptionType": ["SSE-C"]}})
        ]},
        "VersioningConfiguration": Match.absent(),  # write-once by policy instead (docs/operations.md)
    })


# The bucket's own policy holds the role to what the collector promises, one Deny per promise. Neither moto's
# S3 nor its CloudFormation evaluates bucket policies (tests/rehearsal_support.py), so these are asserted here;
# test_least_privilege.py checks the collector's real requests against the same conditions.
@pytest.mark.parametrize(("sid", "condition"), [
    ("DenyWriterOverwrites", {"Null": {"s3:if-none-match": "true"}}),
    ("DenyWriterOtherEncryption", {"StringNotEquals": {"s3:x-amz-server-side-encryption": "AES256"}}),
    ("DenyWriterCustomerKeys", {"Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}}),
    ("DenyWriterOtherStorageClass", {"Null": {"s3:x-amz-storage-class": "false"},
                                     "StringNotEquals": {"s3:x-amz-storage-class": "STANDARD"}}),
    ("DenyWriterOutsideTheVpc", {"StringNotEquals": {"aws:SourceVpce": {"Ref": Match.string_like_regexp("VpcS3")}}}),
])
def test_bucket_denies_the_role_put_object_breaking_a_promise(template: Template, sid: str, condition: Any) -> None:
    template.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {"Statement": Match.array_with([{
        "Sid": sid,
        "Effect": "Deny",
        "Principal": {"AWS": {"Fn::GetAtt": [Match.string_like_regexp("^FleetRole"), "Arn"]}},
        "Action": "s3:PutObject",
        "Resource": _bucket_object_arn("/*"),
        "Condition": condition,
    }])}})


def test_the_policy_denies_the_role_nothing_but_put_object(template_json: dict[str, Any]) -> None:
    """Multipart uploads are refused with PutObject (CreateMultipartUpload and UploadPart are authorized as
    s3:PutObject and cannot carry If-None-Match); the role is granted no other S3 action to deny."""
    (policy,) = _resources(template_json, "AWS::S3::BucketPolicy").values()
    role_statements = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
                       if s["Principal"] == {"AWS": {"Fn::GetAtt": [_fleet_role(template_json), "Arn"]}}]
    assert len(role_statements) == 5
    assert {s["Action"] for s in role_statements} == {"s3:PutObject"}
    granted = {a for s in _role_statements(template_json, _fleet_role(template_json)) for a in _as_list(s["Action"])
               if a.startswith("s3:")}
    assert granted == {"s3:PutObject"}


def test_the_operations_page_lists_exactly_the_bucket_s_denials(template_json: dict[str, Any]) -> None:
    (policy,) = _resources(template_json, "AWS::S3::BucketPolicy").values()
    sids = [s["Sid"] for s in policy["Properties"]["PolicyDocument"]["Statement"] if "Sid" in s]
    page = (REPO_ROOT / "docs" / "operations.md").read_text()
    assert re.findall(r"^\| `(Deny\w+)` \|", page, re.MULTILINE) == sids


def test_destroy_data_flag_opts_into_deleting_the_bucket(opt_in_template: Template) -> None:
    opt_in_template.has_resource("AWS::S3::Bucket", {"DeletionPolicy": "Delete"})
    opt_in_template.resource_count_is("Custom::S3AutoDeleteObjects", 1)


# --- IAM ----------------------------------------------------------------------------------------------------


def test_role_may_only_put_objects_write_its_logs_and_read_and_signal_this_stack(
        template_json: dict[str, Any]) -> None:
    """Besides the PutObject statement and the log group's (test_observability.py), only what cfn-init and
    cfn-signal need, on this stack and nothing else."""
    (profile,) = _resources(template_json, "AWS::IAM::InstanceProfile").values()
    (instance_role,) = profile["Properties"]["Roles"]
    role = template_json["Resources"][instance_role["Ref"]]["Properties"]
    assert "Policies" not in role and "ManagedPolicyArns" not in role
    statements = [
        statement for policy in _resources(template_json, "AWS::IAM::Policy").values()
        if instance_role in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert len(statements) == 3, statements
    (cloudformation,) = [s for s in statements if s.get("Sid") not in ("PutCollectedObjects", "WriteCollectorLogs")]
    assert cloudformation == {
        "Action": ["cloudformation:DescribeStackResource", "cloudformation:SignalResource"],
        "Effect": "Allow",
        "Resource": {"Ref": "AWS::StackId"},
    }


def test_only_s3_permission_is_put_object_on_the_two_prefixes(template_json: dict[str, Any]) -> None:
    s3_statements = [
        statement for statement in _role_statements(template_json, _fleet_role(template_json))
        if any(action.startswith("s3:") or action == "*" for action in _as_list(statement["Action"]))
    ]
    assert len(s3_statements) == 1, s3_statements
    (statement,) = s3_statements
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "s3:PutObject"
    assert "Condition" not in statement and "NotResource" not in statement
    assert sorted(map(json.dumps, _as_list(statement["Resource"]))) == sorted(
        json.dumps(_bucket_object_arn(f"/{prefix}*")) for prefix in ("raw/", "manifests/")
    )


def test_put_object_policy_is_attached_to_the_instance_role(template_json: dict[str, Any]) -> None:
    (profile,) = _resources(template_json, "AWS::IAM::InstanceProfile").values()
    (instance_role,) = profile["Properties"]["Roles"]
    carrying_put = [
        policy["Properties"]["Roles"] for policy in _resources(template_json, "AWS::IAM::Policy").values()
        if any(s.get("Sid") == "PutCollectedObjects" for s in policy["Properties"]["PolicyDocument"]["Statement"])
    ]
    assert carrying_put == [[instance_role]]


def test_instance_role_has_no_managed_policy_unless_ssm_is_opted_in(
    template_json: dict[str, Any], opt_in_template: Template
) -> None:
    (profile,) = _resources(template_json, "AWS::IAM::InstanceProfile").values()
    role = template_json["Resources"][profile["Properties"]["Roles"][0]["Ref"]]
    assert "ManagedPolicyArns" not in role["Properties"]
    opt_in_template.has_resource_properties("AWS::IAM::Role", {
        "AssumeRolePolicyDocument": Match.object_like({"Statement": [Match.object_like(
            {"Principal": {"Service": "ec2.amazonaws.com"}}
        )]}),
        "ManagedPolicyArns": [{"Fn::Join": ["", [
            "arn:", {"Ref": "AWS::Partition"}, ":iam::aws:policy/AmazonSSMManagedInstanceCore"
        ]]}],
    })


# --- instances and network ----------------------------------------------------------------------------------


def test_three_t3_micro_instances_on_al2023_with_standard_credits(template_json: dict[str, Any]) -> None:
    instances = _resources(template_json, "AWS::EC2::Instance")
    assert len(instances) == 3
    for instance in instances.values():
        props = instance["Properties"]
        assert props["InstanceType"] == "t3.micro"
        assert props["CreditSpecification"] == {"CPUCredits": "standard"}
        assert "KeyName" not in props
        image_parameter = template_json["Parameters"][props["ImageId"]["Ref"]]
        assert image_parameter["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
        assert image_parameter["Default"].startswith("/aws/service/ami-amazon-linux-latest/al2023-ami-")


def test_root_volume_is_encrypted_gp3(template_json: dict[str, Any]) -> None:
    for instance in _resources(template_json, "AWS::EC2::Instance").values():
        (root,) = instance["Properties"]["BlockDeviceMappings"]
        assert root["DeviceName"] == "/dev/xvda"
        assert root["Ebs"]["Encrypted"] is True
        assert root["Ebs"]["VolumeType"] == "gp3"


def test_imdsv2_is_required_and_its_tokens_do_not_leave_the_instance(template_json: dict[str, Any]) -> None:
    for instance in _resources(template_json, "AWS::EC2::Instance").values():
        assert instance["Properties"]["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}


def test_instances_are_spread_over_public_subnets_with_public_ips(template_json: dict[str, Any]) -> None:
    public_subnets = {
        name for name, subnet in _resources(template_json, "AWS::EC2::Subnet").items()
        if subnet["Properties"]["MapPublicIpOnLaunch"] is True
    }
    assert public_subnets == set(_resources(template_json, "AWS::EC2::Subnet"))
    used = []
    for instance in _resources(template_json, "AWS::EC2::Instance").values():
        (interface,) = instance["Properties"]["NetworkInterfaces"]
        assert interface["AssociatePublicIpAddress"] is True
        used.append(interface["SubnetId"]["Ref"])
    assert set(used) == public_subnets and len(public_subnets) >= 2


def test_vpc_has_no_nat_gateway_and_an_s3_gateway_endpoint(template: Template) -> None:
    template.resource_count_is("AWS::EC2::NatGateway", 0)
    template.has_resource_properties("AWS::EC2::VPCEndpoint", {
        "VpcEndpointType": "Gateway",
        "ServiceName": {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".s3"]]},
    })


def test_security_group_has_no_inbound_rules(template_json: dict[str, Any]) -> None:
    assert not _resources(template_json, "AWS::EC2::SecurityGroupIngress")
    for group in _resources(template_json, "AWS::EC2::SecurityGroup").values():
        assert "SecurityGroupIngress" not in group["Properties"]
        egress = {(rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) for rule in
                  group["Properties"]["SecurityGroupEgress"]}
        assert egress == {("tcp", 443, 443), ("tcp", 9443, 9443)}


def test_outputs(template: Template) -> None:
    template.has_output("BucketName", {"Value": {"Ref": BUCKET}})
    template.has_output("InstanceRoleArn", {"Value": {"Fn::GetAtt": [Match.any_value(), "Arn"]}})
    template.has_output("InstanceIds", {"Value": {"Fn::Join": [",", Match.any_value()]}})
    assert len(Template.to_json(template)["Outputs"]["InstanceIds"]["Value"]["Fn::Join"][1]) == 3
    template.has_output("AthenaWorkGroup", {"Value": {"Ref": Match.any_value()}})


# --- Athena -------------------------------------------------------------------------------------------------


def _glue_tables(template_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["Properties"]["TableInput"]["Name"]: r["Properties"]["TableInput"]
            for r in _resources(template_json, "AWS::Glue::Table").values()}


def _location(template_json: dict[str, Any], value: Any) -> str:
    """An s3:// location with the bucket's Ref resolved to `BUCKET`."""
    assert value["Fn::Join"][0] == ""
    return "".join(BUCKET if part == {"Ref": BUCKET} else part for part in value["Fn::Join"][1])


def test_glue_tables_find_every_partition_by_projection_in_the_key_layout(template_json: dict[str, Any]) -> None:
    tables = _glue_tables(template_json)
    assert set(tables) == {"trades", "bars_1s", "bars_1m", "bars_1h", "raw_replicas"}
    assert not _resources(template_json, "AWS::Glue::Crawler")
    symbols = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]["symbols"]
    for name, table in tables.items():
        params = table["Parameters"]
        assert params["projection.enabled"] == "true" and params["projection.symbol.values"] == symbols
        assert params["projection.day.type"] == "date" and params["projection.day.range"].endswith(",NOW")
        assert [k["Name"] for k in table["PartitionKeys"]][:2] == ["symbol", "day"]
        template = _location(template_json, params["storage.location.template"])
        if name == "raw_replicas":
            assert template == (f"s3://{BUCKET}/raw/exchange=binance/stream=trade/symbol=${{symbol}}/date=${{day}}/"
                                "hour=${hour}/")
            serde = table["StorageDescriptor"]["SerdeInfo"]
            # Binance's keys differ only in case: the SerDe must match case, or E would read as e.
            assert serde["Parameters"]["case.insensitive"] == "false"
            assert serde["Parameters"]["mapping.event_time"] == "E" and serde["Parameters"]["mapping.trade_time"] == "T"
        else:
            folder = "trades" if name == "trades" else name.replace("_", "-")
            assert template == f"s3://{BUCKET}/curated/exchange=binance/symbol=${{symbol}}/date=${{day}}/{folder}/"
            assert table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")
    trade_columns = {c["Name"]: c["Type"] for c in tables["trades"]["StorageDescriptor"]["Columns"]}
    assert trade_columns == {"trade_id": "bigint", "price": "decimal(20,8)", "quantity": "decimal(20,8)",
                             "quote_quantity": "decimal(38,16)", "trade_time": "timestamp",
                             "event_time": "timestamp", "buyer_is_maker": "boolean", "corroboration": "string"}


def test_the_workgroup_enforces_encrypted_expiring_results_and_a_scan_cutoff(template_json: dict[str, Any]) -> None:
    (workgroup,) = _resources(template_json, "AWS::Athena::WorkGroup").values()
    config = workgroup["Properties"]["WorkGroupConfiguration"]
    assert config["EnforceWorkGroupConfiguration"] is True  # a query cannot choose another place or no cutoff
    assert config["BytesScannedCutoffPerQuery"] == 10 * 1024**3
    results = config["ResultConfiguration"]
    assert results["EncryptionConfiguration"] == {"EncryptionOption": "SSE_S3"}
    assert _location(template_json, results["OutputLocation"]) == f"s3://{BUCKET}/athena-results/"
    rules = template_json["Resources"][BUCKET]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert {"Id": "ExpireAthenaResults", "Prefix": "athena-results/", "ExpirationInDays": 7,
            "Status": "Enabled"} in rules
    assert workgroup["Properties"]["RecursiveDeleteOption"] is True  # cdk destroy removes it with its history


def test_named_queries_run_yesterday_in_the_workgroup_and_database(template_json: dict[str, Any]) -> None:
    queries = {q["Properties"]["Name"]: q["Properties"]
               for q in _resources(template_json, "AWS::Athena::NamedQuery").values()}
    assert set(queries) == {"trades_of_a_day", "bars_1s_of_a_day", "vwap_of_a_day"}
    (database,) = _resources(template_json, "AWS::Glue::Database").values()
    for query in queries.values():
        assert query["Database"] == database["Properties"]["DatabaseInput"]["Name"]
        assert query["WorkGroup"] == {"Ref": next(iter(_resources(template_json, "AWS::Athena::WorkGroup")))}
        assert "symbol = 'BTCUSDT' AND day = current_date - INTERVAL '1' DAY" in query["QueryString"]


# --- user-data ----------------------------------------------------------------------------------------------


def _user_data(template_json: dict[str, Any]) -> dict[str, Any]:
    return {name: i["Properties"]["UserData"] for name, i in _resources(template_json, "AWS::EC2::Instance").items()}


def _init_metadata(template_json: dict[str, Any]) -> dict[str, Any]:
    return {
        name: i["Metadata"]["AWS::CloudFormation::Init"]
        for name, i in _resources(template_json, "AWS::EC2::Instance").items()
    }


# Longest values CloudFormation can substitute: bucket names have at most 63 characters, stack names 128.
LOG_GROUP = "ObservabilityLogGroup43951639"
_WORST_CASE_REFS = {BUCKET: "b" * 63, "AWS::Region": "ap-southeast-5x", "AWS::StackName": "s" * 128,
                    LOG_GROUP: LOG_GROUP}


def _resolved_user_data(user_data: dict[str, Any], refs: dict[str, str] | None = None) -> str:
    """The script as EC2 receives it, with each Ref replaced by its (worst-case) deploy-time value."""
    separator, parts = user_data["Fn::Base64"]["Fn::Join"]
    values = _WORST_CASE_REFS if refs is None else refs
    return separator.join(part if isinstance(part, str) else values[part["Ref"]] for part in parts)


def test_user_data_and_init_metadata_are_byte_identical_across_synths(
    template_json: dict[str, Any], tmp_path: Path
) -> None:
    again = _synth(tmp_path)
    assert json.dumps(_user_data(template_json), sort_keys=True) == json.dumps(_user_data(again), sort_keys=True)
    assert json.dumps(_init_metadata(template_json), sort_keys=True) == json.dumps(
        _init_metadata(again), sort_keys=True)


def test_instances_differ_only_in_the_logical_id_their_script_reads_and_signals(
    template_json: dict[str, Any]
) -> None:
    scripts = {json.dumps(user_data).replace(name, "<self>") for name, user_data in _user_data(template_json).items()}
    assert len(scripts) == 1
    for name, user_data in _user_data(template_json).items():
        script = _resolved_user_data(user_data)
        assert f"--stack '{'s' * 128}' --resource '{name}' --region 'ap-southeast-5x'" in script
        assert script == userdata.render_user_data(
            archive=collector_archive(), bucket="b" * 63, region="ap-southeast-5x", stack="s" * 128, resource=name,
            symbols="BTCUSDT", ws_url=BINANCE_WS_URL, log_group=LOG_GROUP, namespace=STACK_NAME,
        )
    assert len({json.dumps(init, sort_keys=True) for init in _init_metadata(template_json).values()}) == 1


def test_synthesized_user_data_stays_well_under_the_ec2_limit(template_json: dict[str, Any]) -> None:
    for user_data in _user_data(template_json).values():
        size = len(_resolved_user_data(user_data).encode())
        assert size < 15_000 < userdata.USER_DATA_LIMIT, f"worst-case user-data is {size} bytes"


def test_user_data_gets_bucket_region_and_stack_at_deploy_time(template_json: dict[str, Any]) -> None:
    for user_data in _user_data(template_json).values():
        parts = user_data["Fn::Base64"]["Fn::Join"][1]
        assert {"Ref": BUCKET} in parts
        assert {"Ref": "AWS::Region"} in parts
        assert {"Ref": "AWS::StackName"} in parts


def test_instances_wait_for_a_boot_signal(template_json: dict[str, Any]) -> None:
    for instance in _resources(template_json, "AWS::EC2::Instance").values():
        assert instance["CreationPolicy"] == {"ResourceSignal": {"Count": 1, "Timeout": "PT15M"}}


def _delivered_archive(init: dict[str, Any]) -> bytes:
    assert init["configSets"] == {"default": ["config"]}
    assert init["config"].keys() == {"files"}
    files = init["config"]["files"]
    assert files.keys() == {userdata.ARCHIVE_PATH}
    entry = files[userdata.ARCHIVE_PATH]
    assert (entry["encoding"], entry["mode"], entry["owner"], entry["group"]) == ("base64", "000600", "root", "root")
    return base64.b64decode(entry["content"], validate=True)


def test_init_metadata_carries_the_collector_pinned_by_the_user_data(
    template_json: dict[str, Any], tmp_path: Path
) -> None:
    """Unpacks the archive from the synthesized template and imports the collector from it."""
    for name, init in _init_metadata(template_json).items():
        archive = _delivered_archive(init)
        assert archive == collector_archive()
        script = _resolved_user_data(_user_data(template_json)[name])
        pinned = re.findall(r"sha256sum --check --strict <<<'([0-9a-f]{64})  (\S+)'", script)
        assert pinned == [(hashlib.sha256(archive).hexdigest(), userdata.ARCHIVE_PATH)]

    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    for path in collector_files():
        assert (tmp_path / "collector" / path.name).read_bytes() == path.read_bytes()
    probe = "import collector, collector.config, collector.service; print(collector.__file__)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)}, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "collector" / "__init__.py")


def test_a_collector_code_change_replaces_the_instances(
    template_json: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = tmp_path / "collector"
    changed.mkdir()
    for path in collector_files():
        (changed / path.name).write_bytes(path.read_bytes())
    with (changed / "config.py").open("a") as config:
        config.write("# a change\n")
    monkeypatch.setattr(stacks.collector_stack, "collector_archive", lambda: collector_archive(changed))
    after = _synth(tmp_path / "cdk.out")

    assert {_delivered_archive(init) for init in _init_metadata(after).values()} == {collector_archive(changed)}
    before_ids, after_ids = set(_user_data(template_json)), set(_user_data(after))
    assert len(after_ids) == 3 and before_ids.isdisjoint(after_ids)
    # The only difference in the scripts, logical ids aside: the pinned sha256.
    old, new = (hashlib.sha256(a).hexdigest() for a in (collector_archive(), collector_archive(changed)))
    normalized = [
        {json.dumps(ud).replace(name, "<self>").replace(old, "<sha>").replace(new, "<sha>") for name, ud in t.items()}
        for t in (_user_data(template_json), _user_data(after))
    ]
    assert normalized[0] == normalized[1]


def test_changed_user_data_replaces_the_instances(template_json: dict[str, Any], tmp_path: Path) -> None:
    changed = _synth(tmp_path, symbols="BTCUSDT,ETHUSDT")
    before = set(_resources(template_json, "AWS::EC2::Instance"))
    after = set(_resources(changed, "AWS::EC2::Instance"))
    assert len(after) == 3 and before.isdisjoint(after)


# --- checks -------------------------------------------------------------------------------------------------


def test_cdk_nag_runs_in_the_app_and_rejects_unacknowledged_findings(tmp_path: Path) -> None:
    app = create_app(cdk_context(), outdir=str(tmp_path))
    stack = app.node.find_child(STACK_NAME)
    s3.Bucket(stack, "UnloggedBucket", removal_policy=cdk.RemovalPolicy.DESTROY)  # violates AwsSolutions-S1
    with pytest.raises(RuntimeError, match=r"ValidationFailed(.|\n)*UnloggedBucket(.|\n)*AwsSolutions-S1\b"):
        app.synth()


def test_every_nag_acknowledgement_gives_a_reason(tmp_path: Path) -> None:
    app = create_app(cdk_context(destroyData=True, ssmAccess=True), outdir=str(tmp_path))
    key = cdk.Validations.ACKNOWLEDGED_RULES_METADATA_KEY
    acknowledged = {
        rule: reason
        for construct in app.node.find_all()
        for entry in construct.node.metadata if entry.type == key
        for rule, reason in entry.data.items()
    }
    ours = {rule: reason for rule, reason in acknowledged.items() if "AwsSolutions-" in rule}
    assert ours, acknowledged
    for rule, reason in ours.items():
        assert len(reason.split()) >= 8, f"{rule}: the reason must say why, got {reason!r}"


def test_cfn_lint_finds_nothing_but_cdks_redundant_depends_on(template_json: dict[str, Any]) -> None:
    matches = lint(json.dumps(template_json), regions=["ap-northeast-1"])
    # W3005: a redundant DependsOn inside CDK's own custom-resource provider, outside our control.
    assert [str(m) for m in matches if m.rule.id != "W3005"] == []


# --- context ------------------------------------------------------------------------------------------------


def test_cdk_json_holds_every_context_default_and_keeps_the_cli_offline() -> None:
    cdk_json = json.loads((REPO_ROOT / "cdk.json").read_text())
    context = cdk_json["context"]
    assert set(CONTEXT_KEYS) <= context.keys()
    assert context["binanceWsUrl"] == BINANCE_WS_URL
    assert (context["instanceCount"], context["instanceType"]) == (3, "t3.micro")
    assert context["destroyData"] is False and context["ssmAccess"] is False
    assert cdk_json["notices"] is False and context["cli-telemetry"] is False


@pytest.mark.parametrize(("overrides", "message"), [
    ({"symbols": "BTC-USDT"}, "symbols"),
    ({"symbols": " , "}, "symbols"),
    ({"binanceWsUrl": "https://example.com"}, "binanceWsUrl"),
    ({"binanceWsUrl": "ws://stream.binance.com:9443"}, "binanceWsUrl.*must be a wss:// URL"),
    ({"instanceCount": "0"}, "instanceCount"),
    ({"instanceCount": "three"}, "instanceCount"),
    ({"destroyData": "yes"}, "destroyData"),
    ({"ssmAccess": None}, "ssmAccess"),
    ({"logRetentionDays": "31"}, "logRetentionDays"),
    ({"alarmEmail": "not an address"}, "alarmEmail"),
])
def test_bad_context_fails_at_synth_naming_the_key(overrides: dict[str, Any], message: str) -> None:
    app = cdk.App(context=cdk_context(**overrides))
    with pytest.raises(ValueError, match=message):
        Settings.from_context(app.node)


def test_more_symbols_than_one_instance_serves_fail_at_synth_with_the_limit_in_one_line() -> None:
    symbols = ",".join(f"S{n:04d}USDT" for n in range(MAX_SYMBOLS + 1))
    app = cdk.App(context=cdk_context(symbols=symbols))
    with pytest.raises(ValueError) as error:
        Settings.from_context(app.node)
    message = str(error.value)
    assert f"{MAX_SYMBOLS + 1} symbols, more than the {MAX_SYMBOLS} one instance serves" in message
    assert "\n" not in message and len(message) < 250
    at_limit = cdk.App(context=cdk_context(symbols=",".join(symbols.split(",")[:MAX_SYMBOLS])))
    assert len(Settings.from_context(at_limit.node).symbols) == MAX_SYMBOLS


def test_context_strings_from_the_command_line_are_parsed() -> None:
    app = cdk.App(context=cdk_context(
        symbols="btcusdt,ethusdt", instanceCount="5", destroyData="true", binanceWsUrl="wss://example.test/"
    ))
    settings = Settings.from_context(app.node)
    assert settings.symbols == ("BTCUSDT", "ETHUSDT")
    assert settings.instance_count == 5
    assert settings.destroy_data is True and settings.ssm_access is False
    assert (settings.ws_url, settings.ws_port) == ("wss://example.test", 443)


# --- the pinned CLI -----------------------------------------------------------------------------------------


def _run_cdk(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cli = REPO_ROOT / "node_modules" / ".bin" / "cdk"
    if not cli.exists():
        message = "node_modules is missing: run `npm ci` (make test does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    env = {
        **os.environ,
        "CDK_DISABLE_VERSION_CHECK": "1",
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    return subprocess.run([str(cli), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
                          check=False)


@pytest.mark.cli
def test_cdk_cli_synthesizes_offline(tmp_path: Path) -> None:
    result = _run_cdk("synth", "--quiet", "--no-notices", "-o", str(tmp_path / "cdk.out"), cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    template = json.loads((tmp_path / "cdk.out" / f"{STACK_NAME}.template.json").read_text())
    assert len(_resources(template, "AWS::EC2::Instance")) == 3


@pytest.mark.cli
@pytest.mark.parametrize("command", ["synth", "deploy", "destroy"])
def test_cdk_cli_in_a_fresh_clone_without_a_venv_says_what_to_run(tmp_path: Path, command: str) -> None:
    for name in ("cdk.json", "app.py"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    result = _run_cdk(command, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == ("tradecollector: no .venv here yet: run `make synth` once (it installs "
                                             "the pinned packages), then `npx cdk ...` works")
    assert "127" not in result.stderr


# --- the daily job ------------------------------------------------------------------------------------------


def _daily(template_json: dict[str, Any], resource_type: str) -> dict[str, Any]:
    (resource,) = [r for name, r in _resources(template_json, resource_type).items() if name.startswith("DailyJob")]
    return resource


def test_the_daily_job_runs_arm64_python_3_12_with_a_full_vcpu_for_15_minutes(template_json: dict[str, Any]) -> None:
    function = _daily(template_json, "AWS::Lambda::Function")["Properties"]
    assert (function["Runtime"], function["Architectures"], function["Handler"]) == (
        "python3.12", ["arm64"], "audit.daily.handler")
    assert (function["MemorySize"], function["Timeout"]) == (1769, 900)
    assert function["Environment"]["Variables"] == {
        "DAILY_BUCKET": {"Ref": BUCKET}, "DAILY_REST_URL": "https://api.binance.com",
        "DAILY_METRICS_NAMESPACE": f"{STACK_NAME}/DailyJob"}
    layer = _daily(template_json, "AWS::Lambda::LayerVersion")["Properties"]
    assert function["Layers"] == [{"Ref": next(n for n in template_json["Resources"] if n.startswith(
        "DailyJobDependencies"))}]
    assert (layer["CompatibleRuntimes"], layer["CompatibleArchitectures"]) == (["python3.12"], ["arm64"])
    # A failed day waits for the next hourly attempt, not for Lambda's retries a minute or two later.
    assert _daily(template_json, "AWS::Lambda::EventInvokeConfig")["Properties"]["MaximumRetryAttempts"] == 0
    log_group = _daily(template_json, "AWS::Logs::LogGroup")
    assert log_group["Properties"] == {"RetentionInDays": 30}
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": next(
        n for n, r in template_json["Resources"].items() if r is log_group)}}


def test_each_symbol_is_scheduled_every_hour_from_00_10_utc(tmp_path: Path) -> None:
    template_json = _synth(tmp_path, symbols="BTCUSDT,ETHUSDT")
    schedules = sorted(_resources(template_json, "AWS::Scheduler::Schedule").values(),
                       key=lambda r: r["Properties"]["Target"]["Input"])
    assert [json.loads(s["Properties"]["Target"]["Input"]) for s in schedules] == [
        {"symbol": "BTCUSDT"}, {"symbol": "ETHUSDT"}]
    function = next(n for n in _resources(template_json, "AWS::Lambda::Function") if n.startswith("DailyJob"))
    for schedule in schedules:
        props = schedule["Properties"]
        assert (props["ScheduleExpression"], props["ScheduleExpressionTimezone"]) == ("cron(10 * * * ? *)", "Etc/UTC")
        assert props["FlexibleTimeWindow"] == {"Mode": "OFF"} and props["State"] == "ENABLED"
        assert props["Target"]["Arn"] == {"Fn::GetAtt": [function, "Arn"]}
        assert props["Target"]["RetryPolicy"] == {"MaximumEventAgeInSeconds": 1800, "MaximumRetryAttempts": 2}
    alarms = [a for n, a in _resources(template_json, "AWS::CloudWatch::Alarm").items() if n.startswith("DailyJob")]
    assert sorted(d["Value"] for a in alarms for d in a["Properties"]["Dimensions"]) == ["BTCUSDT", "ETHUSDT"]


def test_the_daily_job_s_role_reads_four_prefixes_writes_two_and_deletes_nothing(template_json: dict[str, Any]
                                                                                 ) -> None:
    role = next(n for n in _resources(template_json, "AWS::IAM::Role") if n.startswith("DailyJobRole"))
    assert template_json["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}}]
    assert "Policies" not in template_json["Resources"][role]["Properties"]
    assert "ManagedPolicyArns" not in template_json["Resources"][role]["Properties"]
    log_group = next(n for n in _resources(template_json, "AWS::Logs::LogGroup") if n.startswith("DailyJob"))

    def objects(*prefixes: str) -> list[dict[str, Any]]:
        return [_bucket_object_arn(f"/{prefix}") for prefix in prefixes]

    assert _role_statements(template_json, role) == [
        {"Sid": "WriteOwnLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": {"Fn::GetAtt": [log_group, "Arn"]}},
        {"Sid": "ReadTheDays", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": objects("backfill/*", "curated/*", "manifests/*", "raw/*")},
        {"Sid": "ListTheDays", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": {"Fn::GetAtt": [BUCKET, "Arn"]}},
        {"Sid": "WriteBackfillAndCurated", "Effect": "Allow", "Action": "s3:PutObject",
         "Resource": objects("backfill/*", "curated/*")},
        {"Sid": "AbortOwnUploads", "Effect": "Allow", "Action": "s3:AbortMultipartUpload",
         "Resource": _bucket_object_arn("/curated/*")},
    ]
    granted = {a for s in _iam_statements(template_json) for a in _as_list(s["Action"])}
    assert not [a for a in granted if "Delete" in a or a.endswith("*")]


def test_the_bucket_holds_the_daily_job_to_write_once_backfill_sse_s3_and_standard(template_json: dict[str, Any]
                                                                                   ) -> None:
    """IAM conditions are not evaluated by moto: asserted on the template. The curated manifest is rewritten by
    design (the day's switch), so write-once covers backfill/ only; curated objects are named by their sha256."""
    (policy,) = _resources(template_json, "AWS::S3::BucketPolicy").values()
    role = next(n for n in _resources(template_json, "AWS::IAM::Role") if n.startswith("DailyJobRole"))
    denials = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
               if s["Principal"] == {"AWS": {"Fn::GetAtt": [role, "Arn"]}}]
    everywhere = _bucket_object_arn("/*")
    assert denials == [
        {"Sid": "DenyJobOverwrites", "Effect": "Deny", "Action": "s3:PutObject", "Principal": denials[0]["Principal"],
         "Resource": _bucket_object_arn("/backfill/*"), "Condition": {"Null": {"s3:if-none-match": "true"}}},
        {"Sid": "DenyJobOtherEncryption", "Effect": "Deny", "Action": "s3:PutObject",
         "Principal": denials[0]["Principal"], "Resource": everywhere,
         "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": "AES256"}}},
        {"Sid": "DenyJobCustomerKeys", "Effect": "Deny", "Action": "s3:PutObject", "Principal": denials[0]["Principal"],
         "Resource": everywhere,
         "Condition": {"Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}}},
        {"Sid": "DenyJobOtherStorageClass", "Effect": "Deny", "Action": "s3:PutObject",
         "Principal": denials[0]["Principal"], "Resource": everywhere,
         "Condition": {"Null": {"s3:x-amz-storage-class": "false"},
                       "StringNotEquals": {"s3:x-amz-storage-class": "STANDARD"}}},
    ]


def test_uploads_the_daily_job_leaves_unfinished_are_removed_after_a_day(template: Template) -> None:
    template.has_resource_properties("AWS::S3::Bucket", {"LifecycleConfiguration": {"Rules": Match.array_with([{
        "Id": "AbortIncompleteCuratedUploads", "Prefix": "curated/", "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}])}})


def test_the_scheduler_may_invoke_the_daily_job_and_nothing_else(template_json: dict[str, Any]) -> None:
    role = next(n for n in _resources(template_json, "AWS::IAM::Role") if n.startswith("DailyJobSchedulerRole"))
    assert template_json["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "scheduler.amazonaws.com"},
         "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}}]
    function = next(n for n in _resources(template_json, "AWS::Lambda::Function") if n.startswith("DailyJob"))
    arn = {"Fn::GetAtt": [function, "Arn"]}
    assert _role_statements(template_json, role) == [
        {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": [arn, {"Fn::Join": ["", [arn, ":*"]]}]}]


def test_an_alarm_fires_when_yesterday_is_overdue_or_the_job_is_silent(template_json: dict[str, Any]) -> None:
    alarm = _daily(template_json, "AWS::CloudWatch::Alarm")["Properties"]
    assert alarm == {**alarm, "Namespace": f"{STACK_NAME}/DailyJob", "MetricName": "Overdue", "Statistic": "Maximum",
                     "Dimensions": [{"Name": "Symbol", "Value": "BTCUSDT"}], "Period": 3600, "EvaluationPeriods": 1,
                     "Threshold": 1, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                     "TreatMissingData": "breaching"}
    # Into the stack's alarm topic, under a name its policy lets publish (`<stack name>-*`).
    assert alarm["AlarmName"] == f"{STACK_NAME}-BTCUSDT-daily-not-certified"
    (topic,) = [n for n in _resources(template_json, "AWS::SNS::Topic")]
    assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": topic}]
