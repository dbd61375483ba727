"""Log lines and metric documents to CloudWatch Logs: a bounded buffer, emptied by one background thread.

Nothing here may hold up collection. `put` (from any thread, the event loop included) appends under a lock and
never waits; while CloudWatch Logs is unreachable the buffer fills up to its capacity, and every event beyond
that is dropped and counted, so memory stays bounded and nothing is written to disk. The thread sends what the
buffer holds every few seconds, in batches within PutLogEvents' limits, and removes a batch only once it was
accepted.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("collector.telemetry")

# PutLogEvents' limits: events per call, bytes per call (each event counts 26 bytes more than its message),
# bytes per event, and the time span of one call.
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26
MAX_EVENT_BYTES = 262_144 - EVENT_OVERHEAD_BYTES
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000
# At the default log level (under a line a second per symbol, two metric documents a minute) this holds hours of
# an outage, in a few MiB.
BUFFER_EVENTS = 10_000
SEND_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 10

Event = tuple[int, str]  # (epoch ms, message)


def batch_size(events: deque[Event]) -> int:
    """How many events from the left of `events` fit into one PutLogEvents call; at least one, so that the
    queue never stalls (`fit` keeps every event within what one call takes)."""
    count = total = 0
    first_ms = events[0][0] if events else 0
    for timestamp, message in events:
        size = len(message.encode()) + EVENT_OVERHEAD_BYTES
        if count == MAX_BATCH_EVENTS or (count and (
                total + size > MAX_BATCH_BYTES or abs(timestamp - first_ms) > MAX_BATCH_SPAN_MS)):
            break
        count += 1
        total += size
    return count


def fit(message: str) -> str:
    """The message, cut to what one event may hold."""
    if len(message) * 4 <= MAX_EVENT_BYTES:  # the common case, without encoding
        return message
    return message.encode()[:MAX_EVENT_BYTES].decode(errors="ignore")


def make_client() -> Any:
    """A CloudWatch Logs client from boto3's standard chain; one attempt with short timeouts, as the next send
    comes a few seconds later anyway."""
    return boto3.session.Session().client("logs", config=BotoConfig(
        retries={"total_max_attempts": 1}, connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS))


class LogShipper:
    """Sends to the stream `stream` of the group `group`; `dropped` counts the events the full buffer refused."""

    def __init__(self, client: Any, *, group: str, stream: str, capacity: int = BUFFER_EVENTS,
                 send_seconds: float = SEND_SECONDS) -> None:
        self.client = client
        self.group = group
        self.stream = stream
        self.capacity = capacity
        self.send_seconds = send_seconds
        self.dropped = 0
        self.sent = 0
        self._buffer: deque[Event] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream_ready = False
        self._failing_since: float | None = None
        self._dropped_reported = 0
        self._thread = threading.Thread(target=self._run, name="cloudwatch-logs", daemon=True)

    def put(self, timestamp_ms: int, message: str) -> None:
        with self._lock:
            if len(self._buffer) >= self.capacity:
                self.dropped += 1
                return
            self._buffer.append((timestamp_ms, fit(message)))

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float) -> None:
        """One last send, for at most `timeout` seconds; then whatever is left is reported and given up."""
        self._stop.set()
        self._thread.join(timeout)
        left = self.pending()
        if left or self.dropped:
            # The handler may still hold this line, but nothing sends it any more: stderr (journald) keeps it.
            log.error("CloudWatch Logs: %d event(s) not sent at exit, %d dropped while it was unreachable",
                      left, self.dropped)

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.send_seconds)
            self._send_all()
            if stopping:
                return

    def _send_all(self) -> None:
        while True:
            with self._lock:
                count = batch_size(self._buffer)
                # The same timestamp order as the lines were written in, but threads may interleave.
                batch = sorted(itertools.islice(self._buffer, count))
            if not batch:
                return
            if not self._send(batch):
                return
            with self._lock:
                for _ in range(count):
                    self._buffer.popleft()
            self.sent += count

    def _send(self, batch: list[Event]) -> bool:
        events = [{"timestamp": timestamp, "message": message} for timestamp, message in batch]
        try:
            if not self._stream_ready:
                try:
                    self.client.create_log_stream(logGroupName=self.group, logStreamName=self.stream)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
                        raise
                self._stream_ready = True
            self.client.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=events)
        except (BotoCoreError, ClientError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
            if code == "ResourceNotFoundException":  # the stream (or group) is gone: create the stream again
                self._stream_ready = False
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("CloudWatch Logs %s (%s): log lines and metrics wait in memory (at most %d events, "
                            "the rest is dropped and counted)", "unreachable" if code is None else "refused", exc,
                            self.capacity)
            return False
        if self._failing_since is not None:
            log.warning("CloudWatch Logs accepts events again after %.0f s; %d event(s) dropped meanwhile",
                        time.monotonic() - self._failing_since, self.dropped - self._dropped_reported)
            self._failing_since = None
            self._dropped_reported = self.dropped
        return True


class LogHandler(logging.Handler):
    """Puts every formatted record into the shipper's buffer: never blocks, never raises into the caller."""

    def __init__(self, shipper: LogShipper) -> None:
        super().__init__()
        self.shipper = shipper

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.shipper.put(int(record.created * 1000), self.format(record))
        except Exception:  # noqa: BLE001 -- logging must never take the collector down
            self.handleError(record)
