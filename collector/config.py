"""Configuration: every setting is an environment variable and the same CLI flag (docs/operations.md).

The defaults and limits here are the only copies; the user-data, the sandbox and the tests import them.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from collector.connect_budget import MIN_LIMIT
from collector.frames import MAX_MESSAGE_BYTES
from collector.keys import BACKFILL_INSTANCE

BINANCE_WS_URL = "wss://stream.binance.com:9443"
ROTATE_BYTES = 2_097_152
ROTATE_SECONDS = 5.0
UPLOAD_ATTEMPTS = 3
RECONNECT_DELAY = 1.0
SPOOL_MAX_BYTES = 1 << 30
PING_INTERVAL = 20.0
# Binance closes a connection after 24 h; hand over to a fresh one comfortably before that.
CONNECTION_LIFETIME = 23.5 * 3600
# The unit's TimeoutStopSec is derived from this, so SIGTERM always finishes before systemd's SIGKILL.
SHUTDOWN_TIMEOUT = 60.0
# Short S3 timeouts: a dead endpoint fails an attempt quickly. An attempt in flight at the shutdown deadline
# may still run these out, so the unit's TimeoutStopSec adds them to SHUTDOWN_TIMEOUT.
S3_CONNECT_TIMEOUT_SECONDS = 3
S3_READ_TIMEOUT_SECONDS = 15
# ISA-L's igzip level (0-3), chosen by bench/: level 1 gives about zlib -6's ratio at a tenth of its CPU.
GZIP_LEVEL = 1
GZIP_LEVELS = range(0, 4)
# Binance allows this many connection attempts per IP per rolling 5 minutes; each instance has its own IP.
BINANCE_CONNECT_LIMIT = 300
# The instance's own budget, with headroom under Binance's limit, and its rolling window (shortened by tests).
CONNECT_BUDGET = 250
CONNECT_WINDOW = 300.0
# The most symbols (one connection each) one instance serves: the largest list measured end to end (every
# trade landed, ~36 KiB of memory per symbol). Under the default budget it starts in about 11 minutes. The
# systemd unit's LimitNOFILE is sized from it; the stack refuses a longer list at synth.
MAX_SYMBOLS = 500
# In systemd's RuntimeDirectory=, which the unit keeps across restarts.
CONNECT_STATE_FILE = "connect-budget.json"
# Set to 1 where the collector reads a local ws:// feed (the sandbox, the tests, the benchmark); never on AWS.
ALLOW_INSECURE_WS_ENV = "COLLECTOR_ALLOW_INSECURE_WS"
# CloudWatch: the stack's namespace and log group reach the instances through the environment file.
METRICS_NAMESPACE = "TradeCollector"
METRICS_INTERVAL = 60.0

_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_LOG_GROUP_RE = re.compile(r"^[A-Za-z0-9._/#-]{1,512}$")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9 ._/#-]{1,255}$")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class Config:
    bucket: str
    symbols: tuple[str, ...]
    ws_url: str
    allow_insecure_ws: bool
    instance_id: str
    spool_dir: Path
    rotate_bytes: int
    rotate_seconds: float
    upload_attempts: int
    reconnect_delay: float
    spool_max_bytes: int
    ping_interval: float
    connection_lifetime: float
    shutdown_timeout: float
    ws_compression: bool
    gzip_level: int
    connect_budget: int
    connect_window: float
    connect_state: Path | None
    log_level: str
    lag_report: Path | None
    log_group: str
    metrics_namespace: str
    metrics_interval: float


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _rotate_bytes(text: str) -> int:
    value = _positive_int(text)
    # A file must hold the largest message we accept, or that message would overflow its file.
    if value <= MAX_MESSAGE_BYTES:
        raise ValueError(f"must be at least {MAX_MESSAGE_BYTES + 1} (the largest accepted message)")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def bucket_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", text):
        raise ValueError("must be an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)")
    return text


def symbol_list(text: str) -> tuple[str, ...]:
    symbols = tuple(dict.fromkeys(s.strip().upper() for s in text.split(",") if s.strip()))
    if not symbols:
        raise ValueError("must name at least one symbol")
    if len(symbols) > MAX_SYMBOLS:
        raise ValueError(f"{len(symbols)} symbols, more than the {MAX_SYMBOLS} one instance serves")
    for symbol in symbols:
        if not _SYMBOL_RE.match(symbol):
            raise ValueError(f"{symbol!r} is not a Binance symbol (letters and digits)")
    return symbols


def _ws_url(text: str) -> str:
    if not re.fullmatch(r"wss?://[^/\s]+(/[^\s]*)?", text):
        raise ValueError("must be a ws:// or wss:// URL")
    return text.rstrip("/")


def _yes_no(text: str) -> bool:
    if text in ("1", "0"):
        return text == "1"
    raise ValueError("must be 1 or 0")


def _instance_id(text: str) -> str:
    if not _INSTANCE_RE.match(text):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-' (it becomes part of S3 keys)")
    if text == BACKFILL_INSTANCE:
        raise ValueError(f"{BACKFILL_INSTANCE!r} is reserved for the trades the audit tool backfills")
    return text


def _connect_budget(text: str) -> int:
    value = int(text)
    if not MIN_LIMIT <= value <= BINANCE_CONNECT_LIMIT:
        raise ValueError(f"must be between {MIN_LIMIT} and {BINANCE_CONNECT_LIMIT} (Binance's limit per IP)")
    return value


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _log_level(text: str) -> str:
    if text.upper() not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return text.upper()


def _log_group(text: str) -> str:
    if text and not _LOG_GROUP_RE.match(text):
        raise ValueError("must be a CloudWatch Logs group name (letters, digits, '._/#-')")
    return text


def _namespace(text: str) -> str:
    if not _NAMESPACE_RE.match(text) or text.startswith("AWS/"):
        raise ValueError("must be a CloudWatch namespace of letters, digits, spaces and '._/#-', not AWS/...")
    return text


def _on_off(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("deflate", "on", "true", "1"):
        return True
    if lowered in ("none", "off", "false", "0"):
        return False
    raise ValueError("must be 'deflate' or 'none'")


def _gzip_level(text: str) -> int:
    value = int(text)
    if value not in GZIP_LEVELS:
        raise ValueError(f"must be between {GZIP_LEVELS[0]} and {GZIP_LEVELS[-1]}")
    return value


@dataclass(frozen=True, slots=True)
class _Option:
    field: str
    parse: Callable[[str], Any]
    default: str | None
    help: str

    @property
    def env(self) -> str:
        return "COLLECTOR_" + self.field.upper()

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


def _default_spool_dir(environ: Mapping[str, str]) -> str:
    # systemd's StateDirectory= sets STATE_DIRECTORY; elsewhere spool next to where we run.
    return environ.get("STATE_DIRECTORY", "").split(":")[0] or "./spool"


def _default_connect_state(environ: Mapping[str, str]) -> str:
    # systemd's RuntimeDirectory= (kept across restarts) sets RUNTIME_DIRECTORY; elsewhere off.
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return f"{runtime}/{CONNECT_STATE_FILE}" if runtime else ""


def _options(environ: Mapping[str, str]) -> list[_Option]:
    return [
        _Option("bucket", bucket_name, None, "destination S3 bucket (required)"),
        _Option("symbols", symbol_list, "BTCUSDT", "comma-separated symbols, case-insensitive"),
        _Option("ws_url", _ws_url, BINANCE_WS_URL, "base URL; /ws/<symbol>@trade is appended"),
        _Option("allow_insecure_ws", _yes_no, "0",
                "1 accepts a ws:// URL (unencrypted: for a local feed, as in the sandbox and the tests)"),
        _Option("instance_id", _instance_id, socket.gethostname().split(".")[0] or "local",
                "goes into keys and manifests (the user-data sets the EC2 instance id)"),
        _Option("spool_dir", Path, _default_spool_dir(environ), "local spool directory"),
        _Option("rotate_bytes", _rotate_bytes, str(ROTATE_BYTES), "rotate at this many uncompressed bytes"),
        _Option("rotate_seconds", _positive_float, str(ROTATE_SECONDS), "rotate after this many seconds"),
        _Option("upload_attempts", _positive_int, str(UPLOAD_ATTEMPTS),
                "tries per upload before it is re-queued on disk"),
        _Option("reconnect_delay", _positive_float, str(RECONNECT_DELAY), "first reconnect delay, seconds"),
        _Option("spool_max_bytes", _positive_int, str(SPOOL_MAX_BYTES),
                "stop receiving while unshipped data on disk reaches this many bytes"),
        _Option("ping_interval", _positive_float, str(PING_INTERVAL),
                "keepalive ping interval; a link silent for twice this is replaced"),
        _Option("connection_lifetime", _positive_float, str(CONNECTION_LIFETIME),
                "hand over to a new connection after this many seconds (Binance cuts at 24 h)"),
        _Option("shutdown_timeout", _positive_float, str(SHUTDOWN_TIMEOUT),
                "on SIGTERM, seconds to ship what is left before leaving it in the spool"),
        _Option("ws_compression", _on_off, "none", "WebSocket permessage-deflate: 'deflate' or 'none'"),
        _Option("gzip_level", _gzip_level, str(GZIP_LEVEL), "gzip level of the data objects (ISA-L igzip, 0-3)"),
        _Option("connect_budget", _connect_budget, str(CONNECT_BUDGET),
                "connection attempts (connects, reconnects, handovers) the instance makes per window, "
                f"{MIN_LIMIT} to {BINANCE_CONNECT_LIMIT}"),
        _Option("connect_window", _positive_float, str(CONNECT_WINDOW),
                "the rolling window of the connection budget, seconds (Binance's is 300)"),
        _Option("connect_state", _optional_path, _default_connect_state(environ),
                "file that carries the connection budget (and a ban) over a restart; off when empty"),
        _Option("log_level", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
        _Option("lag_report", _optional_path, "",
                "write event-loop lag samples (JSON) to this file at exit; used by bench/ (off when empty)"),
        _Option("log_group", _log_group, "",
                "CloudWatch Logs group for the log lines and the metrics (EMF); off when empty"),
        _Option("metrics_namespace", _namespace, METRICS_NAMESPACE, "CloudWatch namespace of the metrics"),
        _Option("metrics_interval", _positive_float, str(METRICS_INTERVAL),
                "seconds between two metric reports"),
    ]


def _shown(raw: str) -> str:
    # A symbol list can be thousands of characters; the error stays one readable line.
    return repr(raw) if len(raw) <= 80 else f"{raw[:60]!r}... ({len(raw)} characters)"


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Flags win over environment variables, which win over defaults; raises ConfigError."""
    environ = os.environ if environ is None else environ
    options = _options(environ)
    parser = _OneLineParser(
        prog="python -m collector",
        description="Collect Binance trades into S3 (gzip JSONL objects plus a manifest each).",
        epilog="S3 endpoint, region and credentials come from boto3's standard chain "
        "(AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3, instance profile).",
    )
    for opt in options:
        shown = "required" if opt.default is None else opt.default or "empty"
        parser.add_argument(opt.flag, dest=opt.field, metavar=opt.field.split("_")[-1].upper(),
                            help=f"{opt.help} [env {opt.env}; default: {shown}]")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for opt in options:
        raw = getattr(args, opt.field)
        source = opt.flag
        if raw is None:
            raw, source = environ.get(opt.env), opt.env
        if raw is None or raw == "":
            if opt.default is None:
                raise ConfigError(f"{opt.env} (or {opt.flag}) is required: {opt.help}")
            raw, source = opt.default, f"default of {opt.env}"
        try:
            values[opt.field] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}={_shown(raw)}: {exc}") from None
    # Trades and their ids arrive unauthenticated over ws://; anyone on the path could forge them.
    if not values["ws_url"].startswith("wss://") and not values["allow_insecure_ws"]:
        raise ConfigError(f"COLLECTOR_WS_URL={values['ws_url']!r}: must be a wss:// URL "
                          f"({ALLOW_INSECURE_WS_ENV}=1 accepts ws://, for a local feed only)")
    return Config(**values)


def parse_or_exit(argv: Sequence[str] | None = None) -> Config:
    """For the entry point: a bad setting is one line on stderr and exit status 2, never a traceback."""
    try:
        return parse(argv)
    except ConfigError as exc:
        print(f"python -m collector: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
