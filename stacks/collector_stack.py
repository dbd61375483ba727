"""The one stack: raw bucket + collector fleet + what watches them, and the permissions that connect them;
Athena over the bucket for the operator's SQL; the daily job that certifies each day, held by the bucket to its
own writes and alarming into the same topic."""

from __future__ import annotations

import base64
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from collector.keys import DATA_PREFIX, MANIFEST_PREFIX
from stacks.analytics import Analytics
from stacks.daily_job import WRITE_ONCE_PREFIXES, DailyJob
from stacks.fleet import CollectorFleet
from stacks.observability import RETENTION, Observability
from stacks.raw_bucket import RawBucket
from stacks.settings import Settings
from userdata import ARCHIVE_PATH, render_user_data
from userdata.archive import collector_archive

HTTPS_PORT = 443  # PyPI, the dnf mirrors, CloudFormation and S3
# How long CloudFormation waits for a new instance to report a running collector (dnf, PyPI, start-up).
BOOT_TIMEOUT = cdk.Duration.minutes(15)


class CollectorStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.raw_bucket = RawBucket(self, "RawBucket", destroy_data=settings.destroy_data)
        bucket = self.raw_bucket.bucket
        # The metrics' namespace and the log group are named after the stack, so two stacks never mix.
        self.observability = Observability(
            self, "Observability", log_group_name=f"/tradecollector/{self.stack_name}",
            retention_days=settings.log_retention_days, namespace=self.stack_name, alarm_email=settings.alarm_email,
        )

        # The collector travels in the template (each instance's AWS::CloudFormation::Init metadata), as it is
        # too big for the user-data; the user-data pins its sha256. Nothing is fetched from S3 or elsewhere.
        archive = collector_archive()
        init = ec2.CloudFormationInit.from_elements(
            ec2.InitFile.from_string(
                ARCHIVE_PATH, base64.b64encode(archive).decode("ascii"), base64_encoded=True, mode="000600"
            )
        )

        # Bucket, region, stack name and logical id stay tokens here, so the user-data is identical on every synth.
        def user_data(resource: str) -> str:
            return render_user_data(
                archive=archive,
                bucket=bucket.bucket_name,
                region=cdk.Aws.REGION,
                stack=cdk.Aws.STACK_NAME,
                resource=resource,
                symbols=",".join(settings.symbols),
                ws_url=settings.ws_url,
                log_group=self.observability.log_group.log_group_name,
                namespace=self.observability.namespace,
            )

        self.fleet = CollectorFleet(
            self,
            "Fleet",
            instance_count=settings.instance_count,
            instance_type=ec2.InstanceType(settings.instance_type),
            user_data=user_data,
            init=init,
            signal_timeout=BOOT_TIMEOUT,
            egress_ports=(HTTPS_PORT, settings.ws_port),
            ssm_access=settings.ssm_access,
        )

        # Written out because bucket.grant_put() would add PutObjectTagging, PutObjectRetention, Abort* etc.
        self.put_statement = iam.PolicyStatement(
            sid="PutCollectedObjects",
            actions=["s3:PutObject"],
            resources=[bucket.arn_for_objects(f"{prefix}*") for prefix in (DATA_PREFIX, MANIFEST_PREFIX)],
        )
        self.fleet.role.add_to_principal_policy(self.put_statement)
        # The bucket itself holds those writes to the collector's promises (write-once, SSE-S3, STANDARD, VPC).
        self.write_denials = self.raw_bucket.hold_writes(self.fleet.role, endpoint=self.fleet.s3_endpoint)
        for prefix in (DATA_PREFIX, MANIFEST_PREFIX):
            cdk.Validations.of(self.fleet.role).acknowledge(
                cdk.Acknowledgment(
                    id=f"AwsSolutions-IAM5[Resource::<{self.get_logical_id(bucket.node.default_child)}.Arn>/{prefix}*]",
                    reason=f"Every collected file gets a new key under {prefix}; the wildcard is limited to "
                    "that prefix of this stack's bucket and to s3:PutObject.",
                )
            )

        self.analytics = Analytics(self, "Analytics", bucket=bucket, symbols=settings.symbols)
        self.logs_statement = self.observability.grant_write(self.fleet.role)
        self.observability.watch(instances=self.fleet.instances, symbols=settings.symbols)
        self.daily_job = DailyJob(self, "DailyJob", bucket=bucket, symbols=settings.symbols,
                                  log_retention=RETENTION[settings.log_retention_days],
                                  alarm_topic=self.observability.topic)
        self.daily_job_denials = self.raw_bucket.hold_job_writes(self.daily_job.role,
                                                                 write_once_prefixes=WRITE_ONCE_PREFIXES)

        cdk.CfnOutput(self, "BucketName", value=bucket.bucket_name, description="where the trades land")
        cdk.CfnOutput(self, "InstanceRoleArn", value=self.fleet.role.role_arn, description="collectors' role")
        cdk.CfnOutput(
            self,
            "InstanceIds",
            value=cdk.Fn.join(",", [instance.instance_id for instance in self.fleet.instances]),
            description="comma-separated collector instance ids",
        )
        cdk.CfnOutput(self, "DailyJobFunction", value=self.daily_job.function.function_name,
                      description="the daily job (invoke with {\"symbol\": ..., \"date\": ...} to re-run a day)")
        cdk.CfnOutput(self, "AthenaWorkGroup", value=self.analytics.workgroup.ref,
                      description="Athena workgroup (and Glue database) for SQL over the trades")
        cdk.CfnOutput(self, "LogGroupName", value=self.observability.log_group.log_group_name,
                      description="the collectors' logs and boot logs, one stream per instance id")
        cdk.CfnOutput(self, "AlarmTopicArn", value=self.observability.topic.topic_arn,
                      description="subscribe here to be alerted (or deploy with -c alarmEmail=...)")
