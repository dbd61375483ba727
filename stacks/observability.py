"""What tells the operator that the fleet works, and where its logs are: the log group the instances write their
log lines and metrics (Embedded Metric Format) into, the alarms, their topic, and a dashboard."""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from collector import metrics as m

# CloudWatch Logs accepts only these retention periods (days).
RETENTION = {
    1: logs.RetentionDays.ONE_DAY, 3: logs.RetentionDays.THREE_DAYS, 5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK, 14: logs.RetentionDays.TWO_WEEKS, 30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS, 90: logs.RetentionDays.THREE_MONTHS, 120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS, 180: logs.RetentionDays.SIX_MONTHS, 365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS, 545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS, 1096: logs.RetentionDays.THREE_YEARS, 1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS, 2557: logs.RetentionDays.SEVEN_YEARS, 2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS, 3653: logs.RetentionDays.TEN_YEARS,
}

MINUTE = cdk.Duration.minutes(1)
SILENT_MINUTES = m.SILENT_SECONDS // 60
# The point of three replicas: any one may fail; fewer than this many delivering is one failure from a gap.
MIN_DELIVERING = 2
BACKLOG_AGE_SECONDS = 300
# Trade ids missing on one instance within the window: a few after a reconnect are expected, more are not.
MISSING_IDS_THRESHOLD = 100
MISSING_IDS_WINDOW = cdk.Duration.minutes(15)
# A t3.micro earns 12 credits an hour and keeps at most 288; below this it soon runs at its 10% baseline.
CPU_CREDITS_LOW = 30


class Observability(Construct):
    """The log group (one stream per instance, named after its instance id) and the SNS topic exist from the
    start, so that the instances' user-data can name the group; `watch` adds the alarms and the dashboard once
    the instances exist. Topic and log group are encrypted with one customer-managed key: CloudWatch alarms
    cannot publish to a topic under the AWS-managed SNS key."""

    def __init__(self, scope: Construct, construct_id: str, *, log_group_name: str, retention_days: int,
                 namespace: str, alarm_email: str | None) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.namespace = namespace
        self.key = kms.Key(
            self, "Key", enable_key_rotation=True, removal_policy=cdk.RemovalPolicy.DESTROY,
            description="Encrypts the collectors' log group and alarm topic",
        )
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchLogsEncryptsTheCollectorLogGroup",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],  # in a key policy, "*" is this key
            conditions={"ArnEquals": {"kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                service="logs", resource="log-group", resource_name=log_group_name,
                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)}},
        ))
        # The statement AWS documents for alarms that publish to an encrypted topic.
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarmsPublishToTheEncryptedTopic",
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=["*"],
        ))
        self.log_group = logs.LogGroup(
            self, "LogGroup", log_group_name=log_group_name, retention=RETENTION[retention_days],
            encryption_key=self.key, removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        self.topic = sns.Topic(self, "AlarmTopic", master_key=self.key, enforce_ssl=True,
                               display_name=f"{stack.stack_name} alarms")
        # The topic's policy (TLS only) replaces SNS's default one, so the alarms need a statement of their own:
        # this stack's alarms, by name, may publish.
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            sid="ThisStacksAlarmsPublish",
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["sns:Publish"],
            resources=[self.topic.topic_arn],
            conditions={"ArnLike": {"aws:SourceArn": stack.format_arn(
                service="cloudwatch", resource="alarm", resource_name=f"{stack.stack_name}-*",
                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)}},
        ))
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        self.alarms: dict[str, cw.Alarm] = {}  # by name
        self.dashboard: cw.Dashboard | None = None

    def grant_write(self, role: iam.IRole) -> iam.PolicyStatement:
        """Create streams in and write to this log group: what the collector and the boot script need."""
        statement = iam.PolicyStatement(
            sid="WriteCollectorLogs",
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[self.log_group.log_group_arn],
        )
        role.add_to_principal_policy(statement)
        return statement

    # --- alarms and dashboard ---------------------------------------------------------------------------------

    def _metric(self, name: str, instance_id: str, *, statistic: str = "Sum", symbol: str | None = None,
                period: cdk.Duration = MINUTE) -> cw.Metric:
        dimensions = {m.INSTANCE_DIMENSION: instance_id}
        if symbol is not None:
            dimensions[m.SYMBOL_DIMENSION] = symbol
        return cw.Metric(namespace=self.namespace, metric_name=name, dimensions_map=dimensions,
                         statistic=statistic, period=period)

    def _alarm(self, construct_id: str, *, name: str, description: str, metric: cw.IMetric, threshold: float,
               comparison: cw.ComparisonOperator, evaluation_periods: int, missing: cw.TreatMissingData,
               extra_actions: Sequence[cw.IAlarmAction] = ()) -> cw.Alarm:
        alarm = cw.Alarm(
            self, construct_id, alarm_name=name, alarm_description=description, metric=metric, threshold=threshold,
            comparison_operator=comparison, evaluation_periods=evaluation_periods,
            datapoints_to_alarm=evaluation_periods, treat_missing_data=missing,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic), *extra_actions)
        alarm.add_ok_action(cw_actions.SnsAction(self.topic))
        self.alarms[name] = alarm
        return alarm

    def watch(self, *, instances: Sequence[ec2.Instance], symbols: Sequence[str]) -> None:
        """The fleet runs burstable instances only (standard CPU credits): every one of those types (T2, T3, T3a,
        T4g) earns credits and can be recovered by EC2 onto other hardware."""
        stack = cdk.Stack.of(self)
        prefix = stack.stack_name
        for index, instance in enumerate(instances):
            iid = instance.instance_id
            where = f"collector {index} ({instance.node.id})"
            self._alarm(
                f"Silent{index}", name=f"{prefix}-{index}-no-object-shipped",
                description=f"{where} shipped no object to S3 for {SILENT_MINUTES} minutes (or sent no metrics). "
                "Look first at its log stream (named after the instance id) in the log group: 'upload failed' "
                "means S3 or the role, 'disconnected'/'HTTP 451' means Binance, no lines at all means the "
                "instance or the service is down (EC2 console: status checks, system log).",
                metric=self._metric(m.OBJECTS_SHIPPED, iid), threshold=1,
                comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD, evaluation_periods=SILENT_MINUTES,
                missing=cw.TreatMissingData.BREACHING,
            )
            self._alarm(
                f"Backlog{index}", name=f"{prefix}-{index}-backlog-old",
                description=f"{where} holds a file it has not shipped for over {BACKLOG_AGE_SECONDS // 60} minutes. "
                "Look first at its log for 'upload failed' (S3 errors, AccessDenied: the role) and at "
                "BacklogBytes on the dashboard: at the spool budget it stops receiving.",
                metric=self._metric(m.BACKLOG_AGE, iid, statistic="Maximum"), threshold=BACKLOG_AGE_SECONDS,
                comparison=cw.ComparisonOperator.GREATER_THAN_THRESHOLD, evaluation_periods=1,
                missing=cw.TreatMissingData.NOT_BREACHING,
            )
            per_symbol = {f"m{n}": self._metric(m.MISSING_TRADE_IDS, iid, symbol=symbol, period=MISSING_IDS_WINDOW)
                          for n, symbol in enumerate(symbols)}
            self._alarm(
                f"MissingIds{index}", name=f"{prefix}-{index}-missing-trade-ids",
                description=f"{where} missed more than {MISSING_IDS_THRESHOLD} trade ids within "
                f"{MISSING_IDS_WINDOW.to_minutes()} minutes. Look first at its log for 'trade ids ... missing' and "
                "'disconnected' lines (reconnects lose trades), then run `python -m audit check` for the day: "
                "another replica may hold them.",
                metric=cw.MathExpression(expression=" + ".join(f"FILL({k}, 0)" for k in per_symbol),
                                         using_metrics=per_symbol, period=MISSING_IDS_WINDOW,
                                         label="missing trade ids"),
                threshold=MISSING_IDS_THRESHOLD, comparison=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1, missing=cw.TreatMissingData.NOT_BREACHING,
            )
            self._alarm(
                f"CpuCredits{index}", name=f"{prefix}-{index}-cpu-credits-low",
                description=f"{where} has fewer than {CPU_CREDITS_LOW} CPU credits left; with standard "
                "credits it is then held at its baseline and may fall behind. Look first at CPUUtilization "
                "on the dashboard (a traffic surge, or permessage-deflate switched on) and at the backlog.",
                metric=cw.Metric(namespace="AWS/EC2", metric_name="CPUCreditBalance",
                                 dimensions_map={"InstanceId": iid}, statistic="Minimum",
                                 period=cdk.Duration.minutes(5)),
                threshold=CPU_CREDITS_LOW, comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
                evaluation_periods=1, missing=cw.TreatMissingData.NOT_BREACHING,
            )
            self._alarm(
                f"SystemCheck{index}", name=f"{prefix}-{index}-system-check-failed",
                description=f"{where} failed EC2's system status check (AWS hardware or network): EC2 "
                "recovers it onto other hardware. Look first at the EC2 console (status checks, scheduled "
                "events); if it does not recover, deploy again to replace it.",
                metric=cw.Metric(namespace="AWS/EC2", metric_name="StatusCheckFailed_System",
                                 dimensions_map={"InstanceId": iid}, statistic="Maximum", period=MINUTE),
                threshold=1, comparison=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=2, missing=cw.TreatMissingData.NOT_BREACHING,
                extra_actions=[cw_actions.Ec2Action(cw_actions.Ec2InstanceAction.RECOVER)],
            )

        shipped = {f"m{n}": self._metric(m.OBJECTS_SHIPPED, i.instance_id) for n, i in enumerate(instances)}
        delivering = min(MIN_DELIVERING, len(instances))
        self._alarm(
            "FleetDelivering", name=f"{prefix}-fleet-fewer-than-{delivering}-delivering",
            description=f"Fewer than {delivering} collectors shipped objects in each of the last {SILENT_MINUTES} "
            "minutes: one more failure and trades are lost for good. Look first at which per-instance "
            "'no-object-shipped' alarms are on; all of them at once points at a shared cause: Binance (HTTP 451 "
            "for the region, an outage), the bucket or the role (AccessDenied), or a broken deploy.",
            metric=cw.MathExpression(
                expression=" + ".join(f"IF(FILL({k}, 0) > 0, 1, 0)" for k in shipped), using_metrics=shipped,
                period=MINUTE, label="collectors delivering"),
            threshold=delivering, comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=SILENT_MINUTES, missing=cw.TreatMissingData.BREACHING,
        )
        self._dashboard(instances, symbols)

    def _dashboard(self, instances: Sequence[ec2.Instance], symbols: Sequence[str]) -> None:
        stack = cdk.Stack.of(self)
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=stack.stack_name)
        # The alarms by the ARN their names give, with an explicit dependency: the deploy order is that of a
        # GetAtt, and the offline rehearsal (whose CloudFormation does not model alarms) can deploy the dashboard.
        by_name = [cw.Alarm.from_alarm_arn(self, f"{alarm.node.id}Ref", stack.format_arn(
            service="cloudwatch", resource="alarm", resource_name=name, arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME))
            for name, alarm in self.alarms.items()]
        self.dashboard.add_widgets(cw.AlarmStatusWidget(title="Alarms", alarms=by_name, width=24))
        for alarm in self.alarms.values():
            self.dashboard.node.add_dependency(alarm)
        for index, instance in enumerate(instances):
            iid = instance.instance_id
            title = cdk.Fn.join("", [f"collector {index}: ", iid])
            rates = {}
            for n, symbol in enumerate(symbols):
                rates[f"t{n}"] = self._metric(m.TRADES_RECEIVED, iid, symbol=symbol)
            trades = [cw.MathExpression(expression=f"{k} / PERIOD({k})", using_metrics={k: metric},
                                        label=f"{symbol} trades/s", period=MINUTE)
                      for (k, metric), symbol in zip(rates.items(), symbols, strict=True)]
            self.dashboard.add_widgets(
                cw.TextWidget(markdown=f"### collector {index} ({instance.node.id})", width=24, height=1),
                cw.GraphWidget(title=cdk.Fn.join("", [title, " trades per second"]), left=trades, width=6),
                cw.GraphWidget(title=cdk.Fn.join("", [title, " backlog"]),
                               left=[self._metric(m.BACKLOG_BYTES, iid, statistic="Maximum")],
                               right=[self._metric(m.BACKLOG_AGE, iid, statistic="Maximum")], width=6),
                cw.GraphWidget(title=cdk.Fn.join("", [title, " gaps and reconnects"]),
                               left=[self._metric(name, iid, symbol=symbol) for symbol in symbols
                                     for name in (m.TRADE_ID_GAPS, m.MISSING_TRADE_IDS, m.RECONNECTS)], width=6),
                cw.GraphWidget(title=cdk.Fn.join("", [title, " CPU and credits"]),
                               left=[cw.Metric(namespace="AWS/EC2", metric_name="CPUUtilization",
                                               dimensions_map={"InstanceId": iid}, statistic="Average")],
                               right=[cw.Metric(namespace="AWS/EC2", metric_name="CPUCreditBalance",
                                                dimensions_map={"InstanceId": iid}, statistic="Minimum")], width=6),
            )
