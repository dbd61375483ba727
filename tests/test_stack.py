"""Synth tests of the real stack, with cdk.json's context (feature flags included) as the CLI would load it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template
from cfnlint.api import lint

from collector.config import BINANCE_WS_URL
from stacks.application import STACK_NAME, create_app
from stacks.settings import CONTEXT_KEYS, Settings
from tests.cdk_support import REPO_ROOT, cdk_context

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


def test_destroy_data_flag_opts_into_deleting_the_bucket(opt_in_template: Template) -> None:
    opt_in_template.has_resource("AWS::S3::Bucket", {"DeletionPolicy": "Delete"})
    opt_in_template.resource_count_is("Custom::S3AutoDeleteObjects", 1)


# --- IAM ----------------------------------------------------------------------------------------------------


def test_only_s3_permission_is_put_object_on_the_two_prefixes(template_json: dict[str, Any]) -> None:
    s3_statements = [
        statement for statement in _iam_statements(template_json)
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
        if any(s["Action"] == "s3:PutObject" for s in policy["Properties"]["PolicyDocument"]["Statement"])
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


def test_imdsv2_is_required(template_json: dict[str, Any]) -> None:
    templates = _resources(template_json, "AWS::EC2::LaunchTemplate")
    for instance in _resources(template_json, "AWS::EC2::Instance").values():
        version = instance["Properties"]["LaunchTemplate"]["Version"]["Fn::GetAtt"][0]
        metadata = templates[version]["Properties"]["LaunchTemplateData"]["MetadataOptions"]
        assert metadata["HttpTokens"] == "required"


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


# --- user-data ----------------------------------------------------------------------------------------------


def _user_data(template_json: dict[str, Any]) -> list[Any]:
    return [i["Properties"]["UserData"] for i in _resources(template_json, "AWS::EC2::Instance").values()]


def test_user_data_is_byte_identical_across_synths(template_json: dict[str, Any], tmp_path: Path) -> None:
    first = _user_data(template_json)
    again = _user_data(_synth(tmp_path))
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert all(user_data == first[0] for user_data in first)


def test_user_data_gets_bucket_and_region_at_deploy_time(template_json: dict[str, Any]) -> None:
    parts = _user_data(template_json)[0]["Fn::Base64"]["Fn::Join"][1]
    assert {"Ref": BUCKET} in parts
    assert {"Ref": "AWS::Region"} in parts


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
    ({"instanceCount": "0"}, "instanceCount"),
    ({"instanceCount": "three"}, "instanceCount"),
    ({"destroyData": "yes"}, "destroyData"),
    ({"ssmAccess": None}, "ssmAccess"),
])
def test_bad_context_fails_at_synth_naming_the_key(overrides: dict[str, Any], message: str) -> None:
    app = cdk.App(context=cdk_context(**overrides))
    with pytest.raises(ValueError, match=message):
        Settings.from_context(app.node)


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


@pytest.mark.cli
def test_cdk_cli_synthesizes_offline(tmp_path: Path) -> None:
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
    result = subprocess.run(
        [str(cli), "synth", "--quiet", "--no-notices", "-o", str(tmp_path / "cdk.out")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    template = json.loads((tmp_path / "cdk.out" / f"{STACK_NAME}.template.json").read_text())
    assert len(_resources(template, "AWS::EC2::Instance")) == 3
