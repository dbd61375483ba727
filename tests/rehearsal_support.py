"""Support for the offline deploy rehearsal and the least-privilege run: moto's server as a subprocess, the CDK
CLI pointed at it, and -- in this one module -- every workaround for a gap in moto.

Each workaround below names its gap in a comment starting with `GAP:`. They were written against moto
`MOTO_VERSION` and the CDK CLI pinned in package.json; importing this module with another moto fails on
purpose, so that an upgrade re-checks every gap (drop a workaround once moto closes its gap). None of them
touches the product code: the rehearsal deploys exactly what `cdk deploy` deploys to AWS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import boto3
import moto
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from sandbox.local_s3 import FAKE_CREDENTIALS, REGION

REPO_ROOT = Path(__file__).resolve().parent.parent
MOTO_VERSION = "5.2.5"
if moto.__version__ != MOTO_VERSION:
    raise RuntimeError(
        f"tests/rehearsal_support.py was written against moto {MOTO_VERSION}, this is moto {moto.__version__}: "
        "re-check each GAP workaround in it (and drop those moto has closed), then update MOTO_VERSION"
    )

ACCOUNT = "123456789012"  # moto's default account
CDK_CLI = REPO_ROOT / "node_modules" / ".bin" / "cdk"
_RUNNING_ON = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


class MotoServer:
    """`python -m moto.server` on 127.0.0.1 (a free port) in its own process: its own state, and switching IAM
    enforcement on there leaves this process and the other tests alone. Stopped by its own PID only."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))} | FAKE_CREDENTIALS
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (match := _RUNNING_ON.search(self.log)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not start:\n{self.log}")
            time.sleep(0.05)
        self.port = int(match[1])
        self._configure()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, credentials: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess (boto3, the collector, the CDK CLI) that must talk to this server only."""
        return {**(credentials or FAKE_CREDENTIALS), "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, service: str, credentials: Mapping[str, str] | None = None) -> Any:
        creds = credentials or FAKE_CREDENTIALS
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                            aws_session_token=creds.get("AWS_SESSION_TOKEN"))

    def _post(self, path: str, body: bytes, content_type: str) -> None:
        # An explicit type: with urllib's default (a form) Flask consumes the body before moto reads it.
        request = urllib.request.Request(f"{self.endpoint}{path}", data=body, method="POST",
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def set_iam_enforcement(self, enabled: bool) -> None:
        """moto checks every request against IAM once this is on (`0` requests without checks), off with `inf`."""
        self._post("/moto-api/reset-auth", b"0" if enabled else b"inf", "text/plain")

    def _configure(self) -> None:
        # GAP: moto runs Lambda functions in Docker (pulling an image, i.e. the network) or, without a daemon,
        # fails in a background thread. The stack's only function is CDK's VpcRestrictDefaultSG custom resource
        # provider, which moto would invoke at deploy; use moto's no-Docker Lambda instead (the custom resource
        # is answered by answer_custom_resources below).
        self._post("/moto-api/config", json.dumps({"lambda": {"use_docker": False}}).encode(), "application/json")


# --- the CDK CLI ------------------------------------------------------------------------------------------------

def cli_env(server: MotoServer) -> dict[str, str]:
    """The pinned CLI's environment: moto for every AWS endpoint, fake credentials, no network extras."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env.update(server.env())
    env.update({
        # GAP: the CLI hands CloudFormation the template as an S3 URL built from this endpoint; moto's
        # CloudFormation resolves it as a path-style URL only for `localhost` (127.0.0.1 is taken for a
        # virtual-hosted bucket name and the template is not found).
        "AWS_ENDPOINT_URL_S3_FOR_CLOUDFORMATION": f"http://localhost:{server.port}",
        "CDK_DISABLE_VERSION_CHECK": "1",
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "NODE_NO_WARNINGS": "1",  # the AWS SDK's "Node 20 support ends" banner, on every call
        "CI": "true",  # no interactive progress bars in the captured log
    })
    return env


# GAP: moto does not compute a stack's outputs when it creates a change set, and the CLI reads them from the
# change set it executed; `--method=direct` makes the CLI call CreateStack/UpdateStack instead. The same
# resources are created either way.
DEPLOY_METHOD = "--method=direct"


def run_cli(args: Iterable[str], *, env: Mapping[str, str], log_path: Path, timeout: float,
            while_running: Callable[[], None] | None = None) -> str:
    """Runs `cdk <args>` from the repository root (cdk.json), returns its output; raises if it fails."""
    command = [str(CDK_CLI), *args]
    with log_path.open("ab") as log:
        log.write(f"$ cdk {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"cdk {' '.join(args)} still running after {timeout} s:\n"
                                         f"{log_path.read_text()}")
                if while_running is not None:
                    while_running()
                time.sleep(0.25)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    output = log_path.read_text()
    if proc.returncode != 0:
        raise AssertionError(f"cdk {' '.join(args)} exited {proc.returncode}:\n{output}")
    return output


# --- CloudFormation gaps ----------------------------------------------------------------------------------------

CUSTOM_RESOURCE = re.compile(r"^(Custom::.+|AWS::CloudFormation::CustomResource)$")


class CustomResourceResponder:
    """GAP: moto creates a custom resource by invoking its Lambda and then waits (stack CREATE_IN_PROGRESS) for
    the function to PUT its answer to moto's response URL; the no-Docker Lambda never does, so `cdk deploy`
    would wait forever. Call this while the deploy runs: it answers SUCCESS for each custom resource of the
    stack, as the provider function does on AWS (CDK's VpcRestrictDefaultSG only removes the default security
    group's rules, which the rehearsal does not check).

    Only once CreateStack has returned, i.e. once the CLI (whose log is `cli_log`) reports the stack's first
    event: moto lists the stack while CreateStack is still creating its resources, and its resource map creates
    resources lazily, so a DescribeStacks (outputs) or an answer (readiness check) before that creates some of
    them a second time (a fourth instance, say).
    """

    def __init__(self, server: MotoServer, stack_name: str, cli_log: Path) -> None:
        self.server = server
        self.stack_name = stack_name
        self.cli_log = cli_log
        self.answered: set[str] = set()
        self._created = re.compile(
            rf"^{re.escape(stack_name)} \|.*\bCREATE_IN_PROGRESS\b.*\bAWS::CloudFormation::Stack\b", re.MULTILINE)

    def __call__(self) -> None:
        if not self._created.search(self.cli_log.read_text(errors="replace")):
            return
        summaries = self.server.client("cloudformation").list_stacks(StackStatusFilter=["CREATE_IN_PROGRESS"])
        stack = next((s for s in summaries["StackSummaries"] if s["StackName"] == self.stack_name), None)
        if stack is None:
            return
        template = deployed_template(self.server, self.stack_name)
        for logical_id, resource in template["Resources"].items():
            if CUSTOM_RESOURCE.match(resource["Type"]) and logical_id not in self.answered:
                self._answer(stack["StackId"], logical_id)
                self.answered.add(logical_id)

    def _answer(self, stack_id: str, logical_id: str) -> None:
        body = json.dumps({"Status": "SUCCESS", "StackId": stack_id, "LogicalResourceId": logical_id,
                           "RequestId": "rehearsal", "PhysicalResourceId": logical_id, "Data": {}}).encode()
        query = urllib.parse.urlencode({"stack": stack_id})
        url = f"{self.server.endpoint}/cloudformation_{REGION}/cfnresponse?{query}"
        # Signed, so that moto's router picks CloudFormation in REGION (unsigned it guesses us-east-1); and
        # JSON, as a form-encoded body (urllib's default) sends moto's router elsewhere (404).
        request = AWSRequest(method="PUT", url=url, data=body, headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]),
                  "cloudformation", REGION).add_auth(request)
        prepared = urllib.request.Request(url, data=body, method="PUT", headers=dict(request.headers))
        with urllib.request.urlopen(prepared, timeout=10) as response:
            response.read()


def deployed_template(server: MotoServer, stack_name: str) -> dict[str, Any]:
    """The template as CloudFormation holds it (GetTemplate), metadata included.

    GAP: cfn-init reads an instance's `AWS::CloudFormation::Init` through DescribeStackResource, but moto's
    DescribeStackResource fails with HTTP 500 on a stack holding a resource type moto does not model
    (AWS::S3::BucketPolicy, AWS::CDK::Metadata) and does not return Metadata at all; the metadata that
    CloudFormation would serve is read from the stored template instead.
    """
    body = server.client("cloudformation").get_template(StackName=stack_name)["TemplateBody"]
    return json.loads(body) if isinstance(body, str) else json.loads(json.dumps(body))


def remove_network_leftovers(server: MotoServer, stack_name: str) -> list[str]:
    """GAP: moto's CloudFormation cannot delete route tables, routes, subnet associations, internet gateway
    attachments, internet gateways or VPC endpoints (their delete is a no-op), so deleting the stack fails on
    the VPC ("has dependencies") and leaves them behind. Right before `cdk destroy`, delete exactly these of the
    stack's resources through the EC2 API, in the order AWS would; `cdk destroy` then deletes everything else,
    the VPC included. Returns what was removed."""
    cloudformation = server.client("cloudformation")
    ec2 = server.client("ec2")
    resources = cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(resource.get("ResourceType", ""), []).append(resource)  # unmodelled ones have none
    vpc_ids = {r["PhysicalResourceId"] for r in by_type.get("AWS::EC2::VPC", [])}
    removed: list[str] = []
    for endpoint in ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": sorted(vpc_ids)}])[
            "VpcEndpoints"]:
        ec2.delete_vpc_endpoints(VpcEndpointIds=[endpoint["VpcEndpointId"]])
        removed.append(endpoint["VpcEndpointId"])
    for gateway in ec2.describe_internet_gateways(
            Filters=[{"Name": "attachment.vpc-id", "Values": sorted(vpc_ids)}])["InternetGateways"]:
        for attachment in gateway["Attachments"]:
            ec2.detach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"], VpcId=attachment["VpcId"])
        ec2.delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"])
        removed.append(gateway["InternetGatewayId"])
    for table in ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": sorted(vpc_ids)}])["RouteTables"]:
        if any(a.get("Main") for a in table["Associations"]):
            continue  # the VPC's main route table goes with the VPC
        for association in table["Associations"]:
            ec2.disassociate_route_table(AssociationId=association["RouteTableAssociationId"])
        ec2.delete_route_table(RouteTableId=table["RouteTableId"])
        removed.append(table["RouteTableId"])
    return removed


def schedule_as_cloudformation_would(server: MotoServer, stack_name: str) -> list[str]:
    """GAP: moto's CloudFormation does not model AWS::Scheduler::Schedule: it lists the daily job's schedules
    without creating them. Create each through moto's Scheduler API from the properties CloudFormation holds,
    with the function's and the role's ARNs resolved to what the deploy created, as CloudFormation would;
    `remove_daily_job_leftovers` deletes them before `cdk destroy`, as CloudFormation's delete would. Returns
    their names."""
    template = deployed_template(server, stack_name)
    resources = server.client("cloudformation").describe_stack_resources(StackName=stack_name)["StackResources"]
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources if "PhysicalResourceId" in r}

    def arn(ref: dict[str, Any]) -> str:
        (logical, attribute) = ref["Fn::GetAtt"]
        assert attribute == "Arn", ref
        if template["Resources"][logical]["Type"] == "AWS::IAM::Role":
            return server.client("iam").get_role(RoleName=physical[logical])["Role"]["Arn"]
        return server.client("lambda").get_function(FunctionName=physical[logical])["Configuration"]["FunctionArn"]

    names = []
    for logical, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Scheduler::Schedule":
            continue
        props, target = resource["Properties"], resource["Properties"]["Target"]
        server.client("scheduler").create_schedule(
            Name=logical, ScheduleExpression=props["ScheduleExpression"],
            ScheduleExpressionTimezone=props["ScheduleExpressionTimezone"], State=props["State"],
            Description=props["Description"], FlexibleTimeWindow=props["FlexibleTimeWindow"],
            Target={"Arn": arn(target["Arn"]), "RoleArn": arn(target["RoleArn"]), "Input": target["Input"],
                    "RetryPolicy": target["RetryPolicy"]})
        names.append(logical)
    return names


def remove_daily_job_leftovers(server: MotoServer, schedules: Iterable[str]) -> list[str]:
    """Right before `cdk destroy`, what moto's CloudFormation would leave behind of the daily job: the schedules
    `schedule_as_cloudformation_would` created, and (GAP: moto's CloudFormation creates an
    AWS::Lambda::LayerVersion but has no delete for it) the layer's versions. Returns what was removed."""
    removed = []
    for name in schedules:
        server.client("scheduler").delete_schedule(Name=name)
        removed.append(name)
    functions = server.client("lambda")
    for layer in functions.list_layers()["Layers"]:
        for version in functions.list_layer_versions(LayerName=layer["LayerName"])["LayerVersions"]:
            functions.delete_layer_version(LayerName=layer["LayerName"], VersionNumber=version["Version"])
            removed.append(version["LayerVersionArn"])
    return removed


# GAP (no workaround): moto's CloudFormation creates an AWS::Lambda::Function from a few of its properties only
# and drops Architectures (the function reports x86_64), Layers and LoggingConfig; the daily job's are checked in
# the template as CloudFormation holds it, and its layer as moto's Lambda stored it (test_rehearsal.py).
# GAP (no workaround): moto's DescribeStackResources lists an AWS::Lambda::LayerVersion without a physical id;
# the rehearsal finds the stack's one layer through ListLayers instead.
# GAP (no workaround): moto ignores CreationPolicy/ResourceSignal, so a stack reaches CREATE_COMPLETE without
# the instances' cfn-signal; what the boot script does is rehearsed by running it (test_rehearsal.py).
# GAP (no workaround): moto's CloudFormation ignores a security group's SecurityGroupEgress (it keeps the default
# allow-all rule) and does not report an instance's security groups; only "no inbound rule" is checked on the
# deployed group, its egress rules are asserted on the template (test_stack.py).
# GAP (no workaround): moto's CloudFormation ignores an instance's MetadataOptions (IMDSv2, hop limit); they are
# checked in the template as CloudFormation holds it.
# GAP (no workaround): moto's CloudFormation does not apply a bucket's PublicAccessBlockConfiguration or
# OwnershipControls (GetPublicAccessBlock says there is none); asserted on the template (test_stack.py).
# GAP (no workaround): moto's CloudFormation does not model AWS::S3::BucketPolicy (the TLS-only policy), and
# moto's IAM does not evaluate conditions; both stay asserted on the synthesized template (test_stack.py).
# GAP (no workaround): moto's CloudFormation does not model AWS::Glue::Database/Table or AWS::Athena::WorkGroup/
# NamedQuery, and does not apply a bucket's LifecycleConfiguration (the rule that expires Athena's results): it
# lists the resources without creating them; their properties (projection, the workgroup's enforced settings,
# the lifecycle rule) are asserted on the template (test_stack.py) and their SQL is run offline through DuckDB
# (test_query.py).
# GAP (no workaround): moto's CloudFormation does not model AWS::CloudWatch::Alarm (it lists them without a type and
# creates nothing); the alarms' thresholds, missing-data treatment and actions are asserted on the template
# (test_observability.py), and `audit status` reads alarms made through moto's CloudWatch API.
# GAP (not exercised): a second `cdk deploy` of the same stack trips over the SSM-typed parameters in moto
# (the AMI and the bootstrap version); the rehearsal deploys once.


def get_att_log_group_arn(described_arn: str) -> str:
    """GAP: moto's CloudFormation resolves a log group's `Fn::GetAtt [.., Arn]` without the trailing `:*` that AWS
    returns (and that DescribeLogGroups shows, on AWS and in moto); the deployed policy's resource is compared
    with the ARN as moto's GetAtt gives it."""
    return described_arn.removesuffix(":*")


def kms_key_arns(server: MotoServer) -> set[str]:
    """GAP: moto's CloudFormation stores an AWS::KMS::Key's KeyPolicy as an object where its KMS expects JSON text,
    so every call that checks the key policy (DescribeKey, GetKeyRotationStatus, ScheduleKeyDeletion) fails with
    HTTP 500. ListKeys does not check it: the deployed key is found there; its rotation and policy are asserted on
    the template (test_observability.py)."""
    return {key["KeyArn"] for key in server.client("kms").list_keys()["Keys"]}


# GAP (no workaround): moto's CloudFormation passes an AWS::Logs::LogGroup's `KmsKeyId` on under that name, where
# moto's Logs reads `kmsKeyId`: the deployed group reports no key. Its key is asserted on the template
# (test_observability.py); the rehearsal checks the topic's.
# GAP (no workaround): moto's CloudFormation cannot delete an AWS::KMS::Key (no delete handler) and, with the gap
# above, the key cannot be scheduled for deletion through KMS either; `cdk destroy` leaves it in moto, where AWS
# would schedule its deletion (RemovalPolicy.DESTROY). The destroy check does not look for it.
NOT_DELETED_BY_MOTO = frozenset({"AWS::KMS::Key"})


# --- IAM gaps ---------------------------------------------------------------------------------------------------

def trust_also(trust: Mapping[str, Any], principal_arn: str) -> dict[str, Any]:
    """The role's trust policy, with `principal_arn` added as an AWS principal to each statement.

    An instance gets the role's credentials from its instance profile, which has no local equivalent; the
    least-privilege test assumes the role (STS AssumeRole) as an IAM user instead, which the template's
    trust (the EC2 service only) rightly does not allow. GAP: moto's trust check also fails with HTTP 500
    (TypeError) on a statement whose principal has no `AWS` key, so the principal is added to the template's
    statement instead of a statement of its own. The permissions policy stays exactly the template's.
    """
    statements = []
    for statement in trust["Statement"]:
        principal = dict(statement["Principal"])
        principal["AWS"] = [*_listed(principal.get("AWS", [])), principal_arn]
        statements.append({**statement, "Principal": principal})
    return {**trust, "Statement": statements}


def as_moto_authorizes(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GAP: moto authorizes every action outside S3 against the resource `*` (only S3 requests carry their ARN), so
    a statement scoped to an ARN -- the log group's -- never allows anything there. For the least-privilege run,
    statements without an S3 action get `Resource: *`: moto then checks their actions, which is all it can
    check; their resources are asserted on the template (test_observability.py, test_stack.py)."""
    return [s if any(str(a).startswith("s3:") for a in _listed(s["Action"])) else {**s, "Resource": "*"}
            for s in statements]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- template references ----------------------------------------------------------------------------------------

def resolve(value: Any, refs: Mapping[str, Any], attributes: Mapping[tuple[str, str], Any]) -> Any:
    """Resolves Ref, Fn::GetAtt and Fn::Join in a template fragment; anything else fails loudly, so that a new
    kind of reference in the policy is noticed instead of silently passed on."""
    if isinstance(value, list):
        return [resolve(item, refs, attributes) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, argument),) = value.items()
        if key == "Ref":
            if argument not in refs:
                raise KeyError(f"no value for Ref {argument!r}")
            return refs[argument]
        if key == "Fn::GetAtt":
            name = (argument[0], argument[1]) if isinstance(argument, list) else tuple(argument.split(".", 1))
            if name not in attributes:
                raise KeyError(f"no value for Fn::GetAtt {name!r}")
            return attributes[name]
        if key == "Fn::Join":
            separator, parts = argument
            return separator.join(str(part) for part in resolve(parts, refs, attributes))
        if key.startswith("Fn::"):
            raise KeyError(f"{key} is not resolved by this helper")
    return {key: resolve(item, refs, attributes) for key, item in value.items()}
