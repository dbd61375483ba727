"""The deployment's choices, read from CDK context (`cdk.json` holds the defaults, `-c key=value` overrides)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from constructs import Node

from collector import config
from stacks.observability import RETENTION

# Context key per setting; cdk.json must define every one, so the defaults live in exactly one place.
SYMBOLS = "symbols"
INSTANCE_COUNT = "instanceCount"
INSTANCE_TYPE = "instanceType"
WS_URL = "binanceWsUrl"
DESTROY_DATA = "destroyData"
SSM_ACCESS = "ssmAccess"
LOG_RETENTION_DAYS = "logRetentionDays"
ALARM_EMAIL = "alarmEmail"
CONTEXT_KEYS = (SYMBOLS, INSTANCE_COUNT, INSTANCE_TYPE, WS_URL, DESTROY_DATA, SSM_ACCESS, LOG_RETENTION_DAYS,
                ALARM_EMAIL)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    symbols: tuple[str, ...]
    instance_count: int
    instance_type: str
    ws_url: str
    destroy_data: bool
    ssm_access: bool
    log_retention_days: int
    alarm_email: str | None

    @property
    def ws_port(self) -> int:
        url = urlsplit(self.ws_url)
        return url.port or (443 if url.scheme == "wss" else 80)

    @classmethod
    def from_context(cls, node: Node) -> Settings:
        """Raises ValueError naming the context key, so a typo fails at synth, not on the instances."""
        values = {}
        for key in CONTEXT_KEYS:
            value = node.try_get_context(key)
            if value is None:
                raise ValueError(f"context key {key!r} is missing; run cdk from the repository root (cdk.json)")
            values[key] = value
        # The collector's own parser validates symbols and URL exactly as it will on the instance.
        try:
            collector = config.parse(
                ["--bucket", "synth-time-check", "--symbols", str(values[SYMBOLS]), "--ws-url",
                 str(values[WS_URL])],
                environ={},
            )
        except config.ConfigError as exc:
            raise ValueError(f"context {SYMBOLS!r}/{WS_URL!r}: {exc}") from None
        # systemd's EnvironmentFile= would interpret quotes and backslashes in the URL.
        if re.search(r"[\"'\\]", collector.ws_url):
            raise ValueError(f"context {WS_URL!r}: quotes and backslashes are not supported")
        return cls(
            symbols=collector.symbols,
            instance_count=_count(values[INSTANCE_COUNT]),
            instance_type=str(values[INSTANCE_TYPE]),
            ws_url=collector.ws_url,
            destroy_data=_flag(DESTROY_DATA, values[DESTROY_DATA]),
            ssm_access=_flag(SSM_ACCESS, values[SSM_ACCESS]),
            log_retention_days=_retention(values[LOG_RETENTION_DAYS]),
            alarm_email=_email(values[ALARM_EMAIL]),
        )


def _count(value: object) -> int:
    # `-c instanceCount=5` arrives as a string, cdk.json's default as a number.
    text = str(value)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"context {INSTANCE_COUNT!r} must be a positive integer, not {value!r}")
    return int(text)


def _retention(value: object) -> int:
    text = str(value)
    if not text.isdigit() or int(text) not in RETENTION:
        raise ValueError(f"context {LOG_RETENTION_DAYS!r} must be one of CloudWatch Logs' retention periods "
                         f"({', '.join(map(str, RETENTION))} days), not {value!r}")
    return int(text)


def _email(value: object) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text):
        raise ValueError(f"context {ALARM_EMAIL!r} must be an e-mail address or empty, not {value!r}")
    return text


def _flag(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"context {key!r} must be true or false, not {value!r}")
