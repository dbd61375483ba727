"""Boot of a collector instance: the user-data script and the systemd unit, both rendered at synth time.

`bootstrap.sh` and `collector.service` beside this file are the templates; `@NAME@` marks a value filled in
here. Values may be CDK token strings (bucket, region, stack name, the instance's logical id), which
CloudFormation resolves at deploy time, so the same code always synthesizes the same user-data.

The collector itself (`archive.collector_archive()`) does not fit into EC2's 16 KB user-data with the rest of
the script: the stack ships it in the instance's CloudFormation init metadata, which cfn-init writes to
`ARCHIVE_PATH`; the user-data carries only its sha256.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from pathlib import Path

from collector.config import MAX_SYMBOLS, S3_CONNECT_TIMEOUT_SECONDS, S3_READ_TIMEOUT_SECONDS, SHUTDOWN_TIMEOUT

# websockets 17 needs Python >= 3.11; 3.11 is also what the test suite runs on.
PYTHON = "python3.11"
SHEBANG = "#!/bin/bash"  # bootstrap.sh's first line; the stack hands the rest to ec2.UserData.for_linux()
ARCHIVE_PATH = "/opt/collector/collector.tar.gz"  # where cfn-init writes the collector from the init metadata
APP_DIR = "/opt/collector/app"
VENV_DIR = "/opt/collector/venv"
ENV_DIR = "/etc/collector"
ENV_FILE = f"{ENV_DIR}/collector.env"
UNIT_NAME = "collector.service"
# After the collector's own SHUTDOWN_TIMEOUT: an upload attempt still in flight may run out its timeouts,
# then the interpreter exits.
STOP_MARGIN_SECONDS = S3_CONNECT_TIMEOUT_SECONDS + S3_READ_TIMEOUT_SECONDS + 10
# Descriptors: a symbol holds its socket, its open spool file, and a second socket during its handover (a
# serverShutdown notice hands every symbol over); the interpreter, the S3 connection pools and the log hold
# about 20 (measured: 1.6 to 2.1 per symbol plus 20). The unit allows the worst case for the most symbols.
FDS_PER_SYMBOL = 3
FDS_BASE = 64
LIMIT_NOFILE = FDS_PER_SYMBOL * MAX_SYMBOLS + FDS_BASE
# EC2 rejects raw (pre-base64) user-data above this many bytes; neither synth nor cfn-lint notices.
USER_DATA_LIMIT = 16_384
# Longest values the deploy-time tokens can take: S3 allows 63-character bucket names, CloudFormation 128-character
# stack names and 255-character logical ids; regions are shorter.
_WORST_CASE_TOKENS = {"BUCKET": "b" * 63, "REGION": "r" * 25, "STACK": "s" * 128, "RESOURCE": "l" * 255,
                      "LOG_GROUP": "g" * 512}

_TEMPLATES = Path(__file__).resolve().parent
_MARKER = re.compile(r"@([A-Z_]+)@")


def _fill(template_name: str, values: Mapping[str, str]) -> str:
    """One pass, so a value can never be mistaken for a marker; every marker needs a value and vice versa."""
    template = (_TEMPLATES / template_name).read_text()
    markers = set(_MARKER.findall(template))
    if markers != values.keys():
        raise KeyError(f"{template_name}: markers {sorted(markers)} but values for {sorted(values)}")
    return _MARKER.sub(lambda match: values[match[1]], template)


def render_unit() -> str:
    """The systemd unit, hardened to score <= 2.0 in `systemd-analyze security`."""
    return _fill("collector.service", {
        "APP_DIR": APP_DIR,
        "VENV_DIR": VENV_DIR,
        "ENV_FILE": ENV_FILE,
        "TIMEOUT_STOP_SEC": str(math.ceil(SHUTDOWN_TIMEOUT) + STOP_MARGIN_SECONDS),
        "LIMIT_NOFILE": str(LIMIT_NOFILE),
    })


def archive_sha256(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


def render_user_data(
    *, archive: bytes, bucket: str, region: str, stack: str, resource: str, symbols: str, ws_url: str,
    log_group: str, namespace: str,
) -> str:
    """The bash user-data script; raises ValueError if it could exceed EC2's limit once tokens resolve.

    `archive` is the collector tar.gz the instance's init metadata holds (only its sha256 goes in here);
    `stack`, `resource` and `region` tell cfn-init and cfn-signal which resource's metadata to read and signal;
    `log_group` (a token) receives the boot log and the collector's lines and metrics (`namespace`).
    """
    values = {
        "PYTHON": PYTHON,
        "ARCHIVE_PATH": ARCHIVE_PATH,
        "ARCHIVE_HASH": archive_sha256(archive),
        "APP_DIR": APP_DIR,
        "VENV_DIR": VENV_DIR,
        "ENV_DIR": ENV_DIR,
        "ENV_FILE": ENV_FILE,
        "UNIT_NAME": UNIT_NAME,
        "UNIT": render_unit().rstrip("\n"),
        "SYMBOLS": symbols,
        "WS_URL": ws_url,
        "NAMESPACE": namespace,
    }
    worst_case = len(_fill("bootstrap.sh", values | _WORST_CASE_TOKENS).encode())
    if worst_case > USER_DATA_LIMIT:
        raise ValueError(f"user-data would be {worst_case} bytes, above EC2's {USER_DATA_LIMIT}-byte limit")
    return _fill("bootstrap.sh", values | {"BUCKET": bucket, "REGION": region, "STACK": stack, "RESOURCE": resource,
                                        "LOG_GROUP": log_group})
