"""Deploy rehearsal: the pinned CDK CLI runs `cdk bootstrap`, `cdk deploy` and `cdk destroy` against moto's server
on 127.0.0.1, and boto3 checks what exists in between -- the path a user takes against AWS, without an account.

The tests share one deployment (module fixture) and run in file order: the deployment is inspected first, its
boot script is run in a throwaway root, and the last test destroys it. Run alone with `pytest -m rehearsal`.
moto's gaps and their workarounds live in tests/rehearsal_support.py, one comment each.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

import userdata
from audit import daily
from collector.keys import DATA_PREFIX, MANIFEST_PREFIX
from stacks.application import STACK_NAME
from stacks.daily_job import HANDLER, MEMORY_MB, TIMEOUT
from stacks.daily_job_package import layer_zip
from tests.cdk_support import cdk_context
from tests.rehearsal_support import (
    ACCOUNT,
    CDK_CLI,
    DEPLOY_METHOD,
    NOT_DELETED_BY_MOTO,
    REGION,
    CustomResourceResponder,
    MotoServer,
    cli_env,
    deployed_template,
    get_att_log_group_arn,
    kms_key_arns,
    remove_daily_job_leftovers,
    remove_network_leftovers,
    run_cli,
    schedule_as_cloudformation_would,
)
from userdata.archive import collector_archive, collector_files

pytestmark = [pytest.mark.rehearsal, pytest.mark.cli]

CONTEXT = cdk_context()
INSTANCE_COUNT = int(CONTEXT["instanceCount"])
INSTANCE_TYPE = CONTEXT["instanceType"]


@dataclass
class Deployment:
    server: MotoServer
    env: dict[str, str]
    outdir: Path
    log_path: Path
    outputs: dict[str, str]
    template: dict[str, Any]  # as CloudFormation holds it
    resources: list[dict[str, Any]]  # DescribeStackResources before destroy
    schedules: list[str]  # the daily job's, created as CloudFormation would (rehearsal_support.py)

    def client(self, service: str) -> Any:
        return self.server.client(service)

    def cdk(self, *args: str, timeout: float, while_running: Callable[[], None] | None = None) -> str:
        return run_cli([*args, "--output", str(self.outdir)], env=self.env, log_path=self.log_path,
                       timeout=timeout, while_running=while_running)

    def instances(self) -> list[dict[str, Any]]:
        ids = self.outputs["InstanceIds"].split(",")
        reservations = self.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    def logical_id(self, physical_id: str) -> str:
        (logical_id,) = (r["LogicalResourceId"] for r in self.resources if r.get("PhysicalResourceId") == physical_id)
        return logical_id

    def instance_resources(self) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.template["Resources"].items() if r["Type"] == "AWS::EC2::Instance"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if not CDK_CLI.is_file():
        message = "the pinned CDK CLI is not installed: run `npm ci` (make test does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    tmp = tmp_path_factory.mktemp("rehearsal")
    with MotoServer(tmp / "moto.log") as server:
        deployment = Deployment(server=server, env=cli_env(server), outdir=tmp / "cdk.out",
                                log_path=tmp / "cdk.log", outputs={}, template={}, resources=[],
                                schedules=[])
        deployment.cdk("bootstrap", f"aws://{ACCOUNT}/{REGION}", timeout=120)
        deployment.cdk("deploy", "--require-approval", "never", DEPLOY_METHOD, timeout=240,
                       while_running=CustomResourceResponder(server, STACK_NAME, deployment.log_path))
        cloudformation = server.client("cloudformation")
        (stack,) = cloudformation.describe_stacks(StackName=STACK_NAME)["Stacks"]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        deployment.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        deployment.template = deployed_template(server, STACK_NAME)
        deployment.resources = cloudformation.describe_stack_resources(StackName=STACK_NAME)["StackResources"]
        deployment.schedules = schedule_as_cloudformation_would(server, STACK_NAME)
        yield deployment


def test_bucket_exists_encrypted_with_sse_s3(deployment: Deployment) -> None:
    bucket = deployment.outputs["BucketName"]
    rules = deployment.client("s3").get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert [r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in rules] == ["AES256"]
    # Public access block, ownership and the TLS-only policy: moto's CloudFormation does not apply them
    # (rehearsal_support.py); test_stack.py asserts them on the template.


def test_role_holds_the_single_put_object_statement_the_log_statement_and_nothing_else(deployment: Deployment) -> None:
    iam = deployment.client("iam")
    role_name = deployment.outputs["InstanceRoleArn"].rsplit("/", 1)[1]
    role = iam.get_role(RoleName=role_name)["Role"]
    assert [s["Principal"] for s in role["AssumeRolePolicyDocument"]["Statement"]] == [
        {"Service": "ec2.amazonaws.com"}]
    assert iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"] == []  # ssmAccess is off
    statements = []
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        statements += iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]["Statement"]
    bucket_arn = f"arn:aws:s3:::{deployment.outputs['BucketName']}"
    s3_statements = [s for s in statements if any(a.startswith("s3:") for a in _as_list(s["Action"]))]
    assert s3_statements == [{
        "Sid": "PutCollectedObjects", "Effect": "Allow", "Action": "s3:PutObject",
        "Resource": [f"{bucket_arn}/{MANIFEST_PREFIX}*", f"{bucket_arn}/{DATA_PREFIX}*"],
    }]
    (stack,) = deployment.client("cloudformation").describe_stacks(StackName=STACK_NAME)["Stacks"]
    (group,) = deployment.client("logs").describe_log_groups(
        logGroupNamePrefix=deployment.outputs["LogGroupName"])["logGroups"]
    logs_statements = [s for s in statements if s.get("Sid") == "WriteCollectorLogs"]
    assert logs_statements == [{"Sid": "WriteCollectorLogs", "Effect": "Allow",
                                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                                "Resource": get_att_log_group_arn(group["arn"])}]
    for statement in statements:
        if statement not in s3_statements + logs_statements:  # cfn-init and cfn-signal, on this stack only
            assert set(_as_list(statement["Action"])) <= {"cloudformation:DescribeStackResource",
                                                          "cloudformation:SignalResource"}
            assert statement["Resource"] == stack["StackId"]


def test_instances_run_the_image_type_profile_and_imds_options_the_stack_asks_for(deployment: Deployment) -> None:
    ec2 = deployment.client("ec2")
    instances = deployment.instances()
    assert len(instances) == INSTANCE_COUNT == 3
    everything = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert len(everything) == INSTANCE_COUNT, "the deploy created instances the stack does not know"
    assert {i["State"]["Name"] for i in instances} == {"running"}
    assert {i["InstanceType"] for i in instances} == {INSTANCE_TYPE}

    # The AMI is the deploy-time value of the public SSM parameter the template names.
    (parameter,) = (p for p in deployment.template["Parameters"].values()
                    if p["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>")
    assert parameter["Default"] == "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"
    image = deployment.client("ssm").get_parameter(Name=parameter["Default"])["Parameter"]["Value"]
    assert {i["ImageId"] for i in instances} == {image}

    (profile,) = deployment.client("iam").list_instance_profiles()["InstanceProfiles"]
    assert [r["Arn"] for r in profile["Roles"]] == [deployment.outputs["InstanceRoleArn"]]
    assert {i["IamInstanceProfile"]["Arn"] for i in instances} == {profile["Arn"]}

    # moto's CloudFormation does not apply an instance's MetadataOptions (rehearsal_support.py): read as deployed.
    for instance in deployment.instance_resources().values():
        assert instance["Properties"]["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
    credits = ec2.describe_instance_credit_specifications(InstanceIds=[i["InstanceId"] for i in instances])
    assert {c["CpuCredits"] for c in credits["InstanceCreditSpecifications"]} == {"standard"}
    volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                             "Values": [i["InstanceId"] for i in instances]}])["Volumes"]
    assert len(volumes) == INSTANCE_COUNT
    assert {(v["Encrypted"], v["VolumeType"]) for v in volumes} == {(True, "gp3")}

    # The stack's one group: no inbound rule. (moto ignores its egress rules and does not list an instance's
    # groups: rehearsal_support.py; test_stack.py asserts both on the template.)
    (group,) = (r["PhysicalResourceId"] for r in deployment.resources
                if r.get("ResourceType") == "AWS::EC2::SecurityGroup")
    (sg,) = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
    assert sg["IpPermissions"] == []


def test_log_group_key_topic_and_dashboard_are_deployed(deployment: Deployment) -> None:
    # The stack's one key (its rotation and policy: test_observability.py).
    (key_id,) = (r["PhysicalResourceId"] for r in deployment.resources if r.get("ResourceType") == "AWS::KMS::Key")
    (key_arn,) = (arn for arn in kms_key_arns(deployment.server) if arn.endswith(f":key/{key_id}"))
    (group,) = deployment.client("logs").describe_log_groups(
        logGroupNamePrefix=deployment.outputs["LogGroupName"])["logGroups"]
    assert (group["logGroupName"], group["retentionInDays"]) == (
        f"/tradecollector/{STACK_NAME}", int(CONTEXT["logRetentionDays"]))
    assert "kmsKeyId" not in group, "moto now applies the group's key: assert it here (rehearsal_support.py)"
    sns = deployment.client("sns")
    attributes = sns.get_topic_attributes(TopicArn=deployment.outputs["AlarmTopicArn"])["Attributes"]
    assert attributes["KmsMasterKeyId"] == key_arn
    assert sns.list_subscriptions_by_topic(TopicArn=deployment.outputs["AlarmTopicArn"])["Subscriptions"] == []
    instance_ids = set(deployment.outputs["InstanceIds"].split(","))
    # The alarms: moto does not model them (rehearsal_support.py); test_observability.py asserts the template's.
    (dashboard,) = deployment.client("cloudwatch").list_dashboards(DashboardNamePrefix=STACK_NAME)["DashboardEntries"]
    body = deployment.client("cloudwatch").get_dashboard(DashboardName=dashboard["DashboardName"])["DashboardBody"]
    assert all(instance_id in body for instance_id in instance_ids)


def test_user_data_and_init_metadata_carry_the_current_collector(deployment: Deployment) -> None:
    archive = collector_archive()
    digest = hashlib.sha256(archive).hexdigest()
    by_instance = {i["InstanceId"]: i for i in deployment.instances()}
    resources = deployment.instance_resources()
    for instance_id in by_instance:
        script = _user_data(deployment, instance_id)
        assert len(script.encode()) <= userdata.USER_DATA_LIMIT
        assert script.startswith("#!/bin/bash\n")
        assert f"sha256sum --check --strict <<<'{digest}  {userdata.ARCHIVE_PATH}'" in script
        logical_id = deployment.logical_id(instance_id)
        assert f"--stack '{STACK_NAME}' --resource '{logical_id}' --region '{REGION}'" in script
        assert f"COLLECTOR_BUCKET={deployment.outputs['BucketName']}\n" in script
        assert f"COLLECTOR_SYMBOLS={CONTEXT['symbols']}\n" in script
        files = resources[logical_id]["Metadata"]["AWS::CloudFormation::Init"]["config"]["files"]
        assert base64.b64decode(files[userdata.ARCHIVE_PATH]["content"]) == archive


def test_deployed_boot_script_runs_in_a_throwaway_root(deployment: Deployment, tmp_path: Path) -> None:
    """The first instance's user-data exactly as EC2 holds it, run by bash with its absolute paths moved under
    tmp_path; dnf, curl (IMDS), systemctl and sleep are stubs, cfn-init writes the files of the deployed init
    metadata (as the real one does from DescribeStackResource) and `python3.11` is this interpreter, whose
    environment already holds the pinned runtime requirements (pip itself is a stub: no PyPI)."""
    instance = deployment.instances()[0]
    logical_id = deployment.logical_id(instance["InstanceId"])
    root, bin_dir, calls = tmp_path / "root", tmp_path / "bin", tmp_path / "calls.log"
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({k: r["Metadata"] for k, r in deployment.instance_resources().items()}))

    def rooted(text: str) -> str:
        for prefix in ("/opt/", "/etc/"):
            text = re.sub(rf"(?<![\w/.]){prefix}", f"{root}{prefix}", text)
        return text

    script = rooted(_user_data(deployment, instance["InstanceId"]))
    _stub(bin_dir / "dnf", calls)
    _stub(bin_dir / "sleep", calls)
    _stub(bin_dir / "curl", calls, 'case "$*" in *api/token*) echo token;; *) echo i-0rehearsal000001;; esac\n')
    _stub(bin_dir / "systemctl", calls, 'case "$1" in show) echo 0;; esac\n')
    _stub(bin_dir / "aws", calls)  # the boot log's shipping (test_userdata.py checks what it sends)
    # `python3.11 -m venv DIR` makes DIR/bin/python this interpreter and DIR/bin/pip a stub.
    venv_python = tmp_path / "venv-python"
    venv_python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    _stub(tmp_path / "pip", calls)
    _stub(bin_dir / userdata.PYTHON, calls, f'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; '
          f'cp {venv_python} "$3/bin/python"; cp {tmp_path / "pip"} "$3/bin/pip"; chmod +x "$3/bin/python"; fi\n')
    cfn_bin = root / "opt/aws/bin"
    _stub(cfn_bin / "cfn-signal", calls)
    cfn_bin.mkdir(parents=True, exist_ok=True)
    (cfn_bin / "cfn-init").write_text(_CFN_INIT.format(python=sys.executable, calls=calls, metadata=metadata,
                                                       root=root))
    (cfn_bin / "cfn-init").chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)

    result = subprocess.run(["bash", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    log = calls.read_text().splitlines()
    target = f"--stack {STACK_NAME} --resource {logical_id} --region {REGION}"
    assert f"cfn-init -v {target} --configsets default" in log
    assert log[-1] == f"cfn-signal --exit-code 0 {target}"

    # The unit, where systemd reads it, points at the env file, the interpreter and the code the script wrote.
    unit = (root / "etc/systemd/system" / userdata.UNIT_NAME).read_text()
    settings = dict(re.findall(r"^(WorkingDirectory|EnvironmentFile|ExecStart)=(.*)$", unit, re.MULTILINE))
    env_file = Path(settings["EnvironmentFile"])
    assert env_file.is_relative_to(root)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env == {"COLLECTOR_BUCKET": deployment.outputs["BucketName"], "COLLECTOR_SYMBOLS": CONTEXT["symbols"],
                   "COLLECTOR_WS_URL": CONTEXT["binanceWsUrl"], "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                   "COLLECTOR_LOG_GROUP": deployment.outputs["LogGroupName"],
                   "COLLECTOR_METRICS_NAMESPACE": STACK_NAME, "COLLECTOR_INSTANCE_ID": "i-0rehearsal000001"}
    python, *args = settings["ExecStart"].split()
    assert args == ["-m", "collector"]
    app_dir = Path(settings["WorkingDirectory"])
    for path in collector_files():
        assert (app_dir / "collector" / path.name).read_bytes() == path.read_bytes()
    # As systemd starts it: the unit's interpreter, in the unit's working directory, with the env file's values.
    probe = subprocess.run(
        [python, "-c", "import collector, collector.__main__, collector.service; print(collector.__file__)"],
        cwd=app_dir, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=False, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).parent == app_dir / "collector"
    help_text = subprocess.run([python, *args, "--help"], cwd=app_dir, env={**env, "PATH": "/usr/bin:/bin"},
                               capture_output=True, text=True, check=True, timeout=60).stdout
    assert "--bucket" in help_text


def test_every_resource_athenas_included_is_created(deployment: Deployment) -> None:
    analytics = [r for r in deployment.template["Resources"].values()
                 if r["Type"].startswith(("AWS::Glue::", "AWS::Athena::"))]
    assert len(analytics) == 10  # database, 5 tables, workgroup, 3 named queries
    # moto's CloudFormation does not model them (nor the bucket's lifecycle rule that expires Athena's results)
    # and lists them without a type or logical id (rehearsal_support.py): what shows is that every resource of
    # the template was created. test_stack.py asserts their properties on the template.
    assert len(deployment.resources) == len(deployment.template["Resources"])
    assert {r["ResourceStatus"] for r in deployment.resources} == {"CREATE_COMPLETE"}


def test_the_daily_job_is_deployed_with_its_layer_and_scheduled_for_each_symbol(deployment: Deployment) -> None:
    functions = deployment.client("lambda")
    config = functions.get_function(FunctionName=deployment.outputs["DailyJobFunction"])["Configuration"]
    assert (config["Runtime"], config["Handler"]) == ("python3.12", HANDLER)
    assert (config["MemorySize"], config["Timeout"]) == (MEMORY_MB, TIMEOUT.to_seconds())
    assert config["Environment"]["Variables"][daily.BUCKET_ENV] == deployment.outputs["BucketName"]
    assert config["Role"].rsplit("/", 1)[1] == _physical(deployment, "DailyJobRole", "AWS::IAM::Role")
    # moto's CloudFormation drops the function's architecture, layers and logging config (rehearsal_support.py):
    # they are read from the template as CloudFormation holds it.
    (function,) = [r["Properties"] for r in deployment.template["Resources"].values()
                   if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == HANDLER]
    assert function["Architectures"] == ["arm64"]
    # The layer that was uploaded is the one this clone built, byte for byte.
    (layer,) = functions.list_layers()["Layers"]  # moto reports no physical id for it (rehearsal_support.py)
    version = functions.get_layer_version(LayerName=layer["LayerName"],
                                          VersionNumber=layer["LatestMatchingVersion"]["Version"])
    assert version["Content"]["CodeSize"] == layer_zip().stat().st_size
    assert version["CompatibleRuntimes"] == ["python3.12"]
    schedules = deployment.client("scheduler")
    symbols = CONTEXT["symbols"].split(",")
    assert len(deployment.schedules) == len(symbols)
    for name in deployment.schedules:
        schedule = schedules.get_schedule(Name=name)
        assert schedule["Target"]["Arn"] == config["FunctionArn"]
        assert json.loads(schedule["Target"]["Input"])["symbol"] in symbols
        assert schedule["ScheduleExpression"] == "cron(10 * * * ? *)"


def test_destroy_removes_everything_but_the_retained_bucket(deployment: Deployment) -> None:
    bucket = deployment.outputs["BucketName"]
    s3 = deployment.client("s3")
    s3.put_object(Bucket=bucket, Key=f"{DATA_PREFIX}kept.jsonl.gz", Body=b"data", ServerSideEncryption="AES256")

    remove_network_leftovers(deployment.server, STACK_NAME)
    remove_daily_job_leftovers(deployment.server, deployment.schedules)
    deployment.cdk("destroy", "--force", timeout=120)
    assert deployment.client("scheduler").list_schedules()["Schedules"] == []

    stacks = deployment.client("cloudformation").describe_stacks()["Stacks"]
    assert [s["StackName"] for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"] == ["CDKToolkit"]
    assert s3.get_object(Bucket=bucket, Key=f"{DATA_PREFIX}kept.jsonl.gz")["Body"].read() == b"data"
    left = [f"{r['ResourceType']} {r['LogicalResourceId']} ({r['PhysicalResourceId']})"
            for r in deployment.resources
            if r.get("ResourceType", "unmodelled") not in _GONE_WITH_THEIR_PARENT | NOT_DELETED_BY_MOTO
            and _exists(deployment, r)]
    assert left == [f"AWS::S3::Bucket {_logical_id(deployment, 'AWS::S3::Bucket')} ({bucket})"], left


# --- helpers ----------------------------------------------------------------------------------------------------

# A tiny cfn-init: writes the `files` of the resource's AWS::CloudFormation::Init config (content, base64
# encoding, mode) as the real one does, under the throwaway root.
_CFN_INIT = """#!{python}
import base64, json, os, sys
args = sys.argv[1:]
with open("{calls}", "a") as log:
    log.write("cfn-init " + " ".join(args) + "\\n")
resource = args[args.index("--resource") + 1]
init = json.load(open("{metadata}"))[resource]["AWS::CloudFormation::Init"]
for config in init["configSets"][args[args.index("--configsets") + 1]]:
    for path, spec in init[config].get("files", {{}}).items():
        data = spec["content"].encode()
        if spec.get("encoding") == "base64":
            data = base64.b64decode(data)
        target = "{root}" + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            out.write(data)
        os.chmod(target, int(spec.get("mode", "000644"), 8))
"""


def _stub(path: Path, calls: Path, body: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {calls}\n{body}')
    path.chmod(0o755)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _user_data(deployment: Deployment, instance_id: str) -> str:
    value = deployment.client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(value["UserData"]["Value"]).decode()


def _physical(deployment: Deployment, logical_prefix: str, resource_type: str) -> str:
    (physical,) = (r["PhysicalResourceId"] for r in deployment.resources
                   if r.get("LogicalResourceId", "").startswith(logical_prefix)
                   and r.get("ResourceType") == resource_type)
    return physical


def _logical_id(deployment: Deployment, resource_type: str) -> str:
    (logical_id,) = (r["LogicalResourceId"] for r in deployment.resources if r.get("ResourceType") == resource_type)
    return logical_id


def _missing(call: Callable[[], Any], *codes: str) -> bool:
    try:
        call()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in codes:
            return True
        raise
    return False


# Deleted with the resource they belong to (or not modelled by moto); the checks below cover their parents.
_GONE_WITH_THEIR_PARENT = {
    "AWS::IAM::Policy", "AWS::EC2::Route", "AWS::EC2::SubnetRouteTableAssociation", "AWS::EC2::VPCGatewayAttachment",
    "Custom::VpcRestrictDefaultSG", "AWS::Lambda::EventInvokeConfig",
    # moto lists the resources it does not model (AWS::S3::BucketPolicy, AWS::CDK::Metadata) without a type.
    "unmodelled",
}


def _exists(deployment: Deployment, resource: dict[str, Any]) -> bool:
    kind = resource["ResourceType"]
    if kind == "AWS::Lambda::LayerVersion":  # without a physical id in moto (rehearsal_support.py)
        return bool(deployment.client("lambda").list_layers()["Layers"])
    physical = resource["PhysicalResourceId"]
    ec2, iam = deployment.client("ec2"), deployment.client("iam")
    if kind == "AWS::S3::Bucket":
        return not _missing(lambda: deployment.client("s3").head_bucket(Bucket=physical), "404", "NoSuchBucket")
    if kind == "AWS::EC2::Instance":
        reservations = ec2.describe_instances(InstanceIds=[physical])["Reservations"]
        return any(i["State"]["Name"] != "terminated" for r in reservations for i in r["Instances"])
    describe = {
        "AWS::EC2::VPC": lambda: ec2.describe_vpcs(VpcIds=[physical])["Vpcs"],
        "AWS::EC2::Subnet": lambda: ec2.describe_subnets(SubnetIds=[physical])["Subnets"],
        "AWS::EC2::RouteTable": lambda: ec2.describe_route_tables(RouteTableIds=[physical])["RouteTables"],
        "AWS::EC2::InternetGateway": lambda: ec2.describe_internet_gateways(
            InternetGatewayIds=[physical])["InternetGateways"],
        "AWS::EC2::VPCEndpoint": lambda: [e for e in ec2.describe_vpc_endpoints(VpcEndpointIds=[physical])[
            "VpcEndpoints"] if e["State"].lower() != "deleted"],
        "AWS::EC2::SecurityGroup": lambda: ec2.describe_security_groups(GroupIds=[physical])["SecurityGroups"],
        "AWS::IAM::Role": lambda: [iam.get_role(RoleName=physical)],
        "AWS::IAM::InstanceProfile": lambda: [iam.get_instance_profile(InstanceProfileName=physical)],
        "AWS::Lambda::Function": lambda: [deployment.client("lambda").get_function(FunctionName=physical)],
        "AWS::Logs::LogGroup": lambda: [g for g in deployment.client("logs").describe_log_groups(
            logGroupNamePrefix=physical)["logGroups"] if g["logGroupName"] == physical],
        "AWS::SNS::Topic": lambda: [deployment.client("sns").get_topic_attributes(TopicArn=physical)],
        "AWS::CloudWatch::Alarm": lambda: deployment.client("cloudwatch").describe_alarms(
            AlarmNames=[physical])["MetricAlarms"],
        "AWS::CloudWatch::Dashboard": lambda: deployment.client("cloudwatch").list_dashboards(
            DashboardNamePrefix=physical)["DashboardEntries"],
    }
    if kind not in describe:
        raise AssertionError(f"the rehearsal does not know how to look for a {kind}: teach _exists()")
    try:
        return bool(describe[kind]())
    except ClientError as exc:
        if re.search(r"NotFound|NoSuchEntity|ResourceNotFound", exc.response["Error"]["Code"]):
            return False
        raise
