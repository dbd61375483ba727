"""What docs/operations.md says about alarms, logs, metrics and their cost, held to the code."""

from __future__ import annotations

import re

from collector import cloudwatch_logs, config, metrics
from stacks import observability
from stacks.application import STACK_NAME
from tests.cdk_support import REPO_ROOT
from tests.test_docs import _table

OPERATIONS = REPO_ROOT / "docs" / "operations.md"


def test_the_metrics_table_is_every_metric_the_collector_reports() -> None:
    rows = _table(OPERATIONS, "metric")
    documented = {name.strip("` ") for row in rows for name in row.split(",")}
    assert documented == set(metrics.SYMBOL_METRICS) | set(metrics.INSTANCE_METRICS)
    for row, (dimensions, *_) in rows.items():
        names = [name.strip("` ") for name in row.split(",")]
        per_symbol = {name in metrics.SYMBOL_METRICS for name in names}
        assert per_symbol == {dimensions == "InstanceId, Symbol"}, row


def test_the_alarm_table_states_the_stacks_thresholds() -> None:
    text = OPERATIONS.read_text()
    rows = _table(OPERATIONS, "alarm (name `BinanceTradeCollector-…`)")
    assert len(rows) == 7  # six watch the fleet, one the daily job
    assert f"for {metrics.SILENT_SECONDS // 60} minutes in a row" in text
    assert f"fewer than {observability.MIN_DELIVERING} instances shipped" in text
    assert f"older than {observability.BACKLOG_AGE_SECONDS // 60} minutes" in text
    assert (f"more than {observability.MISSING_IDS_THRESHOLD} trade ids missing (summed over its symbols) within "
            f"{observability.MISSING_IDS_WINDOW.to_minutes():.0f} minutes") in text
    assert f"below {observability.CPU_CREDITS_LOW}" in text


def test_the_log_group_buffer_and_interval_are_the_codes() -> None:
    text = OPERATIONS.read_text()
    assert f"`/tradecollector/{STACK_NAME}`" in text
    assert f"bounded in-memory buffer ({cloudwatch_logs.BUFFER_EVENTS:,} events)" in text
    assert f"sends it\nevery {cloudwatch_logs.SEND_SECONDS:.0f} s" in text
    assert f"(`COLLECTOR_METRICS_INTERVAL`, {config.METRICS_INTERVAL:.0f} s)" in text


def test_the_cost_table_counts_the_metrics_and_alarms_the_stack_makes() -> None:
    text = OPERATIONS.read_text()
    instances, symbols = 3, 1
    per_instance, per_symbol = len(metrics.INSTANCE_METRICS), len(metrics.SYMBOL_METRICS)
    assert f"{per_instance} per instance + {per_symbol} per instance and symbol | " \
           f"{instances * (per_instance + per_symbol * symbols)} |" in text
    alarm_metrics = instances * (4 + symbols) + instances
    assert re.search(rf"\| {alarm_metrics} \| \$", text)
    assert f"Each further symbol adds {instances * per_symbol} metrics" in text
