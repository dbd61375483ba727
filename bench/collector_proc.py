"""The real collector (`python -m collector`) as a subprocess against the local feed and local S3."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import boto3

from bench.procs import Child, python_env
from bench.procstat import Sample
from collector.config import ALLOW_INSECURE_WS_ENV
from sandbox.local_s3 import REGION, LocalS3

INSTANCE_ID = "bench"
# As deployed, the collector ships its log lines and metrics to CloudWatch Logs: here moto's, on the S3 endpoint.
LOG_GROUP = "/tradecollector/bench"
# The collector's --lag-report hook (docs/performance.md): it writes its event-loop lag there at exit.
LAG_REPORT_ENV = "COLLECTOR_LAG_REPORT"
_CONNECTED_RE = re.compile(r"connected (\S+) \(extensions: (.*)\)$")
_ROTATED_RE = re.compile(r"rotated \S+: (\d+) records")


def _create_log_group(s3: LocalS3) -> None:
    key, secret = s3.admin_credentials
    logs = boto3.client("logs", endpoint_url=s3.endpoint, region_name=REGION, aws_access_key_id=key,
                        aws_secret_access_key=secret)
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=LOG_GROUP)


class CollectorProc(Child):
    """Samples its own CPU the moment each connection is logged, so start-up (imports, boto3) is left out."""

    def __init__(self, *, s3: LocalS3, bucket: str, url: str, symbols: list[str], spool: Path, compression: str,
                 lag_report: Path | None = None) -> None:
        self.connected: list[Sample] = []
        self.extensions: list[str] = []
        env = python_env(
            **s3.env(), COLLECTOR_BUCKET=bucket, COLLECTOR_SYMBOLS=",".join(symbols), COLLECTOR_WS_URL=url,
            COLLECTOR_SPOOL_DIR=str(spool), COLLECTOR_INSTANCE_ID=INSTANCE_ID, COLLECTOR_WS_COMPRESSION=compression,
            **{ALLOW_INSECURE_WS_ENV: "1"},  # the local feed is ws://
            COLLECTOR_LOG_GROUP=LOG_GROUP, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=s3.endpoint,
        )
        _create_log_group(s3)
        if lag_report is not None:
            env[LAG_REPORT_ENV] = str(lag_report)
        super().__init__("collector", ["collector"], env, on_line=CollectorProc._watch)

    def _watch(self, line: str) -> None:
        match = _CONNECTED_RE.search(line.rstrip())
        if match:
            self.connected.append(self.sample())
            self.extensions.append(match[2])

    def rotated_records(self) -> int:
        """Trades written to spool files, from the collector's own `rotated` log lines."""
        return sum(int(m[1]) for _, line in self.lines if (m := _ROTATED_RE.search(line)))
