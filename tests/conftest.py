"""Shared test support: the data contract's schema, the local feed, the local S3 endpoint, the collector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from collector.config import ALLOW_INSECURE_WS_ENV
from collector.manifest import SCHEMA_PATH
from sandbox.feed import FeedThread
from sandbox.local_s3 import BACKENDS, LocalS3, running_s3
from sandbox.verify import Landing, check_bucket

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "collector-test"


@pytest.fixture(scope="session")
def manifest_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


@pytest.fixture
def feed() -> Iterator[FeedThread]:
    with FeedThread(rate=200, burst_seconds=0.05, keep_messages=True) as thread:
        yield thread


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    with running_s3("moto") as s3:
        yield s3


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[LocalS3]:
    with running_s3("seaweedfs") as s3:
        yield s3


# The core end-to-end scenarios run against moto's emulation and against a real S3 server.
on_both_s3_servers = pytest.mark.parametrize("s3", BACKENDS, indirect=True)


@pytest.fixture
def s3(request: pytest.FixtureRequest) -> Iterator[LocalS3]:
    """The session's endpoint (moto, or the backend the test is parametrized with) with an empty bucket for
    this test."""
    backend = getattr(request, "param", "moto")
    s3_server: LocalS3 = request.getfixturevalue("s3_server" if backend == "moto" else f"{backend}_server")
    s3_server.create_bucket(BUCKET)
    yield s3_server
    s3_server.delete_bucket(BUCKET)


class Collector:
    """`python -m collector` as a subprocess, with its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, preexec_fn: Callable[[], None] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "collector"], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 20, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log.count(text) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited ({self.proc.returncode}) before logging {text!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} (x{count}) in the log after {timeout} s:\n{self.log}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 90) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def start_collector(tmp_path: Path, spool_dir: Path, s3: LocalS3) -> Iterator[Callable[..., Collector]]:
    """Start collectors against the test's S3 (and whatever ws_url is passed); all are stopped at the end."""
    started: list[Collector] = []

    def start(*, ws_url: str, endpoint: str | None = None, preexec_fn: Callable[[], None] | None = None,
              aws_env: dict[str, str] | None = None, **settings: Any) -> Collector:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "AWS_"))}
        env.update(s3.env())
        if endpoint is not None:
            env["AWS_ENDPOINT_URL_S3"] = endpoint
        env.update(aws_env or {})
        env.update({"COLLECTOR_BUCKET": BUCKET, "COLLECTOR_WS_URL": ws_url, "COLLECTOR_SPOOL_DIR": str(spool_dir),
                    "COLLECTOR_INSTANCE_ID": "test-1", "COLLECTOR_ROTATE_SECONDS": "1", ALLOW_INSECURE_WS_ENV: "1"})
        env.update({"COLLECTOR_" + k.upper(): str(v) for k, v in settings.items()})
        collector = Collector(env, tmp_path / f"collector-{len(started)}.log", preexec_fn)
        started.append(collector)
        return collector

    yield start
    for collector in started:
        if collector.proc.poll() is None:
            collector.kill()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def landed(s3: LocalS3, feed: FeedThread, symbols: tuple[str, ...], schema: dict[str, Any]) -> Landing:
    """Everything in the bucket, checked: manifests valid and true, lines byte-identical to what the feed
    sent, every id the feed sent present. Returns the landing for further checks."""
    landing = check_bucket(s3.client(), BUCKET)
    assert landing.problems == []
    for doc in landing.manifests:
        jsonschema.validate(doc, schema)
    for symbol in symbols:
        sent = feed.call(feed.feed.sent_ids, symbol)
        ids = landing.ids(symbol)
        assert sent, f"the feed sent nothing for {symbol}"
        assert sent <= set(ids), f"{symbol}: {len(sent - set(ids))} sent ids missing in S3"
        if feed.feed.messages is not None:
            for trade_id, line in zip(ids, landing.lines[symbol], strict=True):
                assert feed.feed.messages[symbol, trade_id] == line
    return landing
