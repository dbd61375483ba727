"""Write-once S3 uploads: `PutObject` with SSE-S3 and `If-None-Match: *`, a few attempts with backoff.

Runs in worker threads (boto3 is blocking); the stop event cuts the wait between attempts short.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from collector.config import S3_CONNECT_TIMEOUT_SECONDS, S3_READ_TIMEOUT_SECONDS

log = logging.getLogger("collector.s3")

FIRST_RETRY_SECONDS = 0.5


class UploadFailed(Exception):
    """Every attempt failed; the file stays on disk and is queued again."""


class KeyTaken(Exception):
    """S3 already holds the key (412), and no earlier attempt of ours can have put it there."""


def make_client() -> Any:
    """An S3 client from boto3's standard chain; retries are ours, so botocore makes one attempt."""
    return boto3.session.Session().client(
        "s3",
        config=BotoConfig(
            retries={"total_max_attempts": 1},
            connect_timeout=S3_CONNECT_TIMEOUT_SECONDS,
            read_timeout=S3_READ_TIMEOUT_SECONDS,
            max_pool_connections=4,
        ),
    )


class S3Uploader:
    def __init__(self, client: Any, *, bucket: str, attempts: int, stop: threading.Event) -> None:
        self.client = client
        self.bucket = bucket
        self.attempts = attempts
        self.stop = stop

    def put(self, key: str, path: Path, content_type: str, *, tried_before: bool) -> bool:
        """Upload `path` to `key`; True if it was written now, False if an earlier attempt of ours had written
        it (412 after `tried_before` or after a failed attempt of this call, whose answer may have been lost).
        Raises KeyTaken for a 412 that no attempt of ours can explain."""
        body = path.read_bytes()
        attempt = 0
        while True:
            attempt += 1
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=content_type,
                    ServerSideEncryption="AES256", IfNoneMatch="*",
                )
                return True
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 412:
                    if tried_before or attempt > 1:
                        log.warning("%s is already in S3 (412): our own earlier attempt had written it", key)
                        return False
                    raise KeyTaken(f"{key} is already in S3 (412), and no attempt of ours wrote it") from exc
                error = f"HTTP {status} {exc.response.get('Error', {}).get('Code', '')}"
            except BotoCoreError as exc:
                error = str(exc)
            if attempt >= self.attempts or self.stop.is_set():
                raise UploadFailed(f"{key}: {error} (attempt {attempt}/{self.attempts})")
            delay = FIRST_RETRY_SECONDS * 2 ** (attempt - 1)
            log.warning("upload of %s failed (%s); attempt %d/%d, retrying in %.1f s",
                        key, error, attempt, self.attempts, delay)
            if self.stop.wait(delay):
                raise UploadFailed(f"{key}: {error} (stopped while retrying)")
