"""The daily job: a Lambda function that certifies yesterday for each symbol (`audit.daily`), an EventBridge
Scheduler schedule per symbol that runs it every hour from 00:10 UTC, its own role (read everything the audit
reads, write only backfill/ and curated/, delete nothing), its log group, and an alarm per symbol when
yesterday is not certified by 03:00 UTC.

Every hour, not once: the first attempt at 00:10 certifies a normal day by ~00:15; a day Binance cannot fill yet
(a ban, an outage, a hole longer than one invocation can fetch) is retried by the next attempt, which resumes from
what the previous one stored; the attempts after the day is certified read one manifest and stop. Lambda's own
retries of a failed asynchronous invocation are off: they would come within minutes, before a ban lifts.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sns as sns
from constructs import Construct

from audit import daily
from audit.binance_rest import DEFAULT_URL
from collector.keys import BACKFILL_PREFIX, CURATED_PREFIX, DATA_PREFIX, MANIFEST_PREFIX
from stacks.daily_job_package import code_dir, layer_zip

# CPython 3.12: pyarrow's aarch64 wheels need glibc 2.28, which the 3.12 runtime's Amazon Linux 2023 has and
# the 3.11 runtime's Amazon Linux 2 does not. The layer's lock is built for the same (userdata.lock.DAILY_JOB).
RUNTIME = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE = lambda_.Architecture.ARM_64
HANDLER = "audit.daily.handler"
# 1769 MB is one full vCPU, and the work is CPU-bound: `make bench-audit` audits a busy day (56,160 manifests)
# in 17 s of CPU and compacts its 4.3 M trades in 75 s of CPU (89 s wall), at a peak RSS of ~240 MiB. Less
# memory would buy a fraction of a vCPU and the same GB-seconds over a longer run.
MEMORY_MB = 1769
# The most Lambda allows. A busy day needs ~2 min; the rest is for backfilling and corroborating from Binance's
# REST history at the weight budget (~190 pages of 1000 trades a minute). A run cut short keeps what it stored
# and the next hourly attempt resumes.
TIMEOUT = cdk.Duration.minutes(15)
# Every hour at minute 10 (UTC): the first attempt is 00:10, once the replicas have shipped the day's last files.
SCHEDULE_MINUTE = "10"
READ_PREFIXES = (DATA_PREFIX, MANIFEST_PREFIX, BACKFILL_PREFIX, CURATED_PREFIX)
WRITE_PREFIXES = (BACKFILL_PREFIX, CURATED_PREFIX)
WRITE_ONCE_PREFIXES = (BACKFILL_PREFIX,)  # curated/ holds the manifest that compact rewrites by design


class DailyJob(Construct):
    """`function`, `role`, `log_group`, `schedules` and `alarms` (by symbol). `alarm_topic`, when given, is told
    when an alarm fires and when it clears; the alarms are named `<stack name>-<symbol>-daily-not-certified`."""

    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.Bucket, symbols: Sequence[str],
                 log_retention: logs.RetentionDays, alarm_topic: sns.ITopic | None = None) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.metrics_namespace = f"{stack.stack_name}/DailyJob"
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention,
                                       removal_policy=cdk.RemovalPolicy.DESTROY)
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description="The daily job: reads the bucket, writes backfill/ and curated/")
        layer = lambda_.LayerVersion(
            self, "Dependencies", code=lambda_.Code.from_asset(str(layer_zip())), compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            description="The daily job's dependencies (audit/lambda-requirements.lock)")
        self.function = lambda_.Function(
            self, "Function", runtime=RUNTIME, architecture=ARCHITECTURE, handler=HANDLER,
            code=lambda_.Code.from_asset(str(code_dir())), layers=[layer], memory_size=MEMORY_MB, timeout=TIMEOUT,
            role=self.role, log_group=self.log_group, retry_attempts=0,
            description="Certifies yesterday's trades of one symbol: audit, backfill, compact (audit.daily)",
            environment={daily.BUCKET_ENV: bucket.bucket_name, daily.REST_URL_ENV: DEFAULT_URL,
                         daily.NAMESPACE_ENV: self.metrics_namespace})
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="WriteOwnLogs", actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[self.log_group.log_group_arn]))
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="ReadTheDays", actions=["s3:GetObject"],
            resources=[bucket.arn_for_objects(f"{prefix}*") for prefix in READ_PREFIXES]))
        # Not limited by s3:prefix: S3 answers a GET of a missing key (the curated manifest of a day compacted
        # for the first time) with 404 only to a caller allowed to list the bucket, and with 403 otherwise.
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="ListTheDays", actions=["s3:ListBucket"], resources=[bucket.bucket_arn]))
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="WriteBackfillAndCurated", actions=["s3:PutObject"],
            resources=[bucket.arn_for_objects(f"{prefix}*") for prefix in WRITE_PREFIXES]))
        # compact uploads the curated JSONL in parts; an upload that fails is aborted rather than left to bill,
        # and one cut short by the timeout (nothing left to abort it) is removed by the bucket a day later.
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="AbortOwnUploads", actions=["s3:AbortMultipartUpload"],
            resources=[bucket.arn_for_objects(f"{CURATED_PREFIX}*")]))
        bucket.add_lifecycle_rule(id="AbortIncompleteCuratedUploads", prefix=CURATED_PREFIX,
                                  abort_incomplete_multipart_upload_after=cdk.Duration.days(1))

        expression = scheduler.ScheduleExpression.cron(minute=SCHEDULE_MINUTE, hour="*",
                                                       time_zone=cdk.TimeZone.ETC_UTC)
        # One role for every schedule, trusted by EventBridge Scheduler on behalf of this account only.
        self.scheduler_role = iam.Role(self, "SchedulerRole", description="Invokes the daily job",
                                       assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com", conditions={
                                           "StringEquals": {"aws:SourceAccount": stack.account}}))
        self.schedules: dict[str, scheduler.Schedule] = {}
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        for symbol in symbols:
            self.schedules[symbol] = scheduler.Schedule(
                self, f"Schedule-{symbol}", schedule=expression,
                description=f"Certify yesterday's {symbol} trades (hourly until done)",
                target=scheduler_targets.LambdaInvoke(
                    self.function, input=scheduler.ScheduleTargetInput.from_object({"symbol": symbol}),
                    role=self.scheduler_role,
                    # Delivery only (the invocation is asynchronous): the next hour is the retry of a failed day.
                    retry_attempts=2, max_event_age=cdk.Duration.minutes(30)))
            overdue = cloudwatch.Metric(namespace=self.metrics_namespace, metric_name=daily.OVERDUE,
                                        dimensions_map={daily.SYMBOL_DIMENSION: symbol}, statistic="Maximum",
                                        period=cdk.Duration.hours(1))
            alarm = overdue.create_alarm(
                self, f"NotCertified-{symbol}", alarm_name=f"{stack.stack_name}-{symbol}-daily-not-certified",
                threshold=1, evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                # No data means the job did not run (or did not get as far as saying so): as bad as a failed day.
                treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
                alarm_description=f"Yesterday's {symbol} trades are not certified by 03:00 UTC, or the daily job "
                "does not run. Look first at the job's log group: each run's last line names the holes left (and "
                "whether Binance stopped the backfill: a ban, HTTP 451 for the region) or the ids nothing "
                "corroborates; no line at all means the schedule or the function. Then `python -m audit daily` "
                "finishes the day by hand.")
            if alarm_topic is not None:
                alarm.add_alarm_action(cloudwatch_actions.SnsAction(alarm_topic))
                alarm.add_ok_action(cloudwatch_actions.SnsAction(alarm_topic))
            self.alarms[symbol] = alarm

        cdk.Validations.of(self.function).acknowledge(cdk.Acknowledgment(
            id="AwsSolutions-L1",
            reason="Python 3.12 on purpose: the layer is locked and built for it (pyarrow's aarch64 wheels need "
            "Amazon Linux 2023), and moving to a newer runtime means re-locking and re-testing the layer."))
        bucket_id = stack.get_logical_id(bucket.node.default_child)  # type: ignore[arg-type]
        function_id = stack.get_logical_id(self.function.node.default_child)  # type: ignore[arg-type]
        cdk.Validations.of(self.scheduler_role).acknowledge(cdk.Acknowledgment(
            id=f"AwsSolutions-IAM5[Resource::<{function_id}.Arn>:*]",
            reason="lambda:InvokeFunction on this one function, any of its versions (what grant_invoke writes)."))
        for prefix in READ_PREFIXES:
            cdk.Validations.of(self.role).acknowledge(cdk.Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{prefix}*]",
                reason=f"Every day's objects under {prefix} of this stack's bucket; the actions are named one by "
                "one and none deletes."))
