"""The collector instances and the network they run in."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from userdata import SHEBANG

ROOT_DEVICE = "/dev/xvda"  # Amazon Linux 2023's root device name
ROOT_VOLUME_GIB = 8  # the AMI's own size; the spool is capped at 1 GiB (collector.config.SPOOL_MAX_BYTES)


class CollectorFleet(Construct):
    """`instance_count` instances spread over the public subnets of a VPC without NAT gateways.

    No inbound rules and no key pair. Outbound only to `egress_ports` over TCP: instances need a public IP to
    reach Binance without NAT, and nothing else should leave them. The role starts with only what cfn-init and
    cfn-signal need on this stack: the stack grants what the instances may do in S3.

    Boot: `user_data(logical_id)` renders each instance's script, which runs cfn-init itself to fetch `init`
    from the instance's own metadata and signals the instance's CreationPolicy (`signal_timeout`) when done.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        instance_count: int,
        instance_type: ec2.InstanceType,
        user_data: Callable[[str], str],
        init: ec2.CloudFormationInit,
        signal_timeout: cdk.Duration,
        egress_ports: Iterable[int],
        ssm_access: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=3,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)
            ],
        )
        # Uploads go to S3 through the gateway endpoint, not over the internet; the bucket refuses the role's
        # writes from anywhere else.
        self.s3_endpoint = self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        cdk.Validations.of(self.vpc).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-VPC7",
                reason="The VPC has no inbound path (no security group ingress) and carries only the "
                "collectors' own outbound HTTPS/WebSocket traffic; flow logs would add a log group and "
                "per-GB cost without a consumer.",
            )
        )

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=self.vpc,
            allow_all_outbound=False,
            description="Collector instances: no inbound; outbound HTTPS and the Binance WebSocket port",
        )
        # DNS, IMDS and time sync use link-local addresses that security groups do not filter.
        for port in sorted(set(egress_ports)):
            self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(port), f"outbound TCP {port}")

        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Binance collector instances: PutObject into the raw bucket's data and manifest prefixes",
        )
        if ssm_access:
            self.role.add_managed_policy(
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")
            )
            cdk.Validations.of(self.role).acknowledge(
                cdk.Acknowledgment(
                    id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]",
                    reason="Opt-in (context ssmAccess=true) for operator shell access via Session Manager; "
                    "AWS maintains this policy for exactly that purpose and it grants no S3 access.",
                )
            )
        instance_profile = iam.InstanceProfile(self, "InstanceProfile", role=self.role)

        # Match the image to the instance type's architecture, so `-c instanceType=t4g.micro` just works.
        machine_image = ec2.MachineImage.latest_amazon_linux2023(
            cpu_type=ec2.AmazonLinuxCpuType.ARM_64
            if instance_type.architecture == ec2.InstanceArchitecture.ARM_64
            else ec2.AmazonLinuxCpuType.X86_64
        )
        subnets = self.vpc.public_subnets
        self.instances: list[ec2.Instance] = []
        for index in range(instance_count):
            # The script names the instance's own logical id (for cfn-init and cfn-signal), which exists only
            # once the instance does: start with an empty script and add the rendered body right after.
            instance_user_data = ec2.UserData.for_linux(shebang=SHEBANG)
            instance = ec2.Instance(
                self,
                f"Collector{index}",
                vpc=self.vpc,
                vpc_subnets=ec2.SubnetSelection(subnets=[subnets[index % len(subnets)]]),
                associate_public_ip_address=True,
                instance_type=instance_type,
                machine_image=machine_image,
                instance_profile=instance_profile,
                security_group=self.security_group,
                user_data=instance_user_data,
                # The logical id (hence the instance) changes with the user-data, which pins the code's sha256.
                user_data_causes_replacement=True,
                http_tokens=ec2.HttpTokens.REQUIRED,
                # The role's credentials stay on the instance: a token cannot cross a further hop (a container).
                http_put_response_hop_limit=1,
                credit_specification=ec2.CpuCredits.STANDARD,
                block_devices=[
                    ec2.BlockDevice(
                        device_name=ROOT_DEVICE,
                        volume=ec2.BlockDeviceVolume.ebs(
                            ROOT_VOLUME_GIB, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3
                        ),
                    )
                ],
            )
            resource = instance.instance
            script = user_data(resource.logical_id)
            if not script.startswith(f"{SHEBANG}\n"):
                raise ValueError(f"user-data must start with {SHEBANG!r}")
            # Rendered as the shebang, a newline and the commands: exactly `script`.
            instance_user_data.add_commands(script.removeprefix(f"{SHEBANG}\n"))
            # Not Instance(init=...): CDK would append its own cfn-init and cfn-signal lines after the script, too
            # late to unpack the archive and signalling before the collector runs. attach() renders the metadata
            # and grants the role cloudformation:DescribeStackResource and SignalResource on this stack; the
            # commands it writes go to a scratch UserData, as the script runs cfn-init and cfn-signal itself.
            init.attach(
                resource,
                instance_role=self.role,
                platform=ec2.OperatingSystemType.LINUX,
                user_data=ec2.UserData.for_linux(),
                embed_fingerprint=False,
            )
            resource.cfn_options.creation_policy = cdk.CfnCreationPolicy(
                resource_signal=cdk.CfnResourceSignal(count=1, timeout=signal_timeout.to_iso_string())
            )
            self.instances.append(instance)
        for instance in self.instances:
            cdk.Validations.of(instance).acknowledge(
                cdk.Acknowledgment(
                    id="AwsSolutions-EC28",
                    reason="Basic 5-minute CloudWatch metrics suffice for a collector whose output is visible "
                    "in S3 every few seconds; detailed monitoring costs extra per instance.",
                ),
                cdk.Acknowledgment(
                    id="AwsSolutions-EC29",
                    reason="The instances hold no state worth protecting (the spool is shipped on SIGTERM, the "
                    "data lives in the retained bucket) and a code change must be able to replace them; "
                    "termination protection would block `cdk deploy` and `cdk destroy`.",
                ),
            )
