import subprocess
import sys
from pathlib import Path

import pytest

from collector import config
from collector.config import ConfigError, parse

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_designs():
    c = parse(["--bucket", "my-bucket"], {})
    assert c.symbols == ("BTCUSDT",)
    assert c.ws_url == "wss://stream.binance.com:9443"
    assert (c.rotate_bytes, c.rotate_seconds, c.upload_attempts, c.reconnect_delay) == (2_097_152, 5.0, 3, 1.0)
    assert c.spool_max_bytes == 1 << 30 and c.log_level == "INFO" and str(c.spool_dir) == "spool"
    assert (c.connect_budget, c.connect_window, c.connect_state) == (250, 300.0, None)


def test_the_connection_budget_is_kept_in_systemds_runtime_directory():
    """The unit's RuntimeDirectory= survives restarts (RuntimeDirectoryPreserve=restart); systemd names it."""
    c = parse(["--bucket", "my-bucket"], {"RUNTIME_DIRECTORY": "/run/collector"})
    assert c.connect_state == Path("/run/collector") / config.CONNECT_STATE_FILE


def test_environment_then_flags_win():
    env = {"COLLECTOR_BUCKET": "env-bucket", "COLLECTOR_SYMBOLS": " btcusdt, ETHUSDT ,btcusdt", "STATE_DIRECTORY": "/s"}
    c = parse([], env)
    assert c.bucket == "env-bucket" and c.symbols == ("BTCUSDT", "ETHUSDT") and str(c.spool_dir) == "/s"
    assert parse(["--symbols", "solusdt"], env).symbols == ("SOLUSDT",)


@pytest.mark.parametrize(("argv", "message"), [
    ([], "COLLECTOR_BUCKET (or --bucket) is required"),
    (["--bucket", "B"], "must be an S3 bucket name"),
    (["--bucket", "ok-bucket", "--symbols", " , "], "must name at least one symbol"),
    (["--bucket", "ok-bucket", "--symbols", "BTC/USDT"], "is not a Binance symbol"),
    (["--bucket", "ok-bucket", "--rotate-bytes", "0"], "--rotate-bytes='0': must be"),
    (["--bucket", "ok-bucket", "--rotate-bytes", "100"], "at least"),
    (["--bucket", "ok-bucket", "--rotate-seconds", "-1"], "positive number"),
    (["--bucket", "ok-bucket", "--rotate-seconds", "nan"], "positive number"),
    (["--bucket", "ok-bucket", "--ws-url", "http://x"], "ws:// or wss://"),
    (["--bucket", "ok-bucket", "--ws-url", "ws://stream.binance.com:9443"], "must be a wss:// URL"),
    (["--bucket", "ok-bucket", "--allow-insecure-ws", "yes"], "must be 1 or 0"),
    (["--bucket", "ok-bucket", "--instance-id", "a/b"], "becomes part of S3 keys"),
    (["--bucket", "ok-bucket", "--instance-id", "backfill"], "reserved for the trades the audit tool backfills"),
    (["--bucket", "ok-bucket", "--gzip-level", "4"], "between 0 and 3"),
    (["--bucket", "ok-bucket", "--log-level", "LOUD"], "must be one of"),
])
def test_bad_settings_name_the_setting(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(argv, {})


def test_a_ws_url_is_accepted_only_by_explicit_setting():
    assert parse(["--bucket", "b-ok", "--ws-url", "ws://127.0.0.1:9"], {config.ALLOW_INSECURE_WS_ENV: "1"}).ws_url == (
        "ws://127.0.0.1:9")
    with pytest.raises(ConfigError, match=f"{config.ALLOW_INSECURE_WS_ENV}=1 accepts ws://"):
        parse(["--bucket", "b-ok", "--ws-url", "ws://127.0.0.1:9"], {config.ALLOW_INSECURE_WS_ENV: "0"})


def test_bad_configuration_exits_2_with_one_line_and_no_connection(feed):
    result = subprocess.run(
        [sys.executable, "-m", "collector", "--ws-url", feed.feed.url],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "COLLECTOR_ROTATE_BYTES": "-5", "COLLECTOR_BUCKET": "b-ok"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "python -m collector: error: COLLECTOR_ROTATE_BYTES='-5': must be a positive integer"]
    assert feed.feed.handshakes == 0


def test_more_symbols_than_one_instance_serves_exit_2_with_the_limit_in_one_line(feed):
    symbols = ",".join(f"S{n:04d}USDT" for n in range(config.MAX_SYMBOLS + 1))
    result = subprocess.run(
        [sys.executable, "-m", "collector", "--ws-url", feed.feed.url],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "COLLECTOR_SYMBOLS": symbols, "COLLECTOR_BUCKET": "b-ok"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("python -m collector: error: COLLECTOR_SYMBOLS='S0000USDT,")
    assert line.endswith(f"({len(symbols)} characters): {config.MAX_SYMBOLS + 1} symbols, more than the "
                         f"{config.MAX_SYMBOLS} one instance serves")
    assert feed.feed.handshakes == 0


@pytest.mark.parametrize(("budget", "ok"), [("1", False), ("2", True), ("300", True), ("301", False)])
def test_the_connection_budget_stays_under_binances_limit(budget, ok):
    argv = ["--bucket", "ok-bucket", "--connect-budget", budget]
    if ok:
        assert parse(argv, {}).connect_budget == int(budget)
    else:
        with pytest.raises(ConfigError, match="between 2 and 300"):
            parse(argv, {})


def test_help_documents_every_setting_with_its_default():
    result = subprocess.run([sys.executable, "-m", "collector", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for env, default in [("COLLECTOR_BUCKET", "required"), ("COLLECTOR_ROTATE_BYTES", "2097152"),
                         ("COLLECTOR_SPOOL_MAX_BYTES", "1073741824"), ("COLLECTOR_RECONNECT_DELAY", "1.0")]:
        assert f"env {env}; default: {default}" in text
    assert config.BINANCE_WS_URL in text
