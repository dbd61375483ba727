"""A local S3 endpoint: moto's server on 127.0.0.1, with fake credentials that never reach AWS."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "ap-northeast-1"
# moto accepts any credentials; these make sure nothing falls back to a real profile.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


class LocalS3:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        # werkzeug logs every request; the collector's own log says what was uploaded.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        """Stop listening; buckets and objects live on in this process and are there after `start`."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for a collector (or any boto3 program) that must use this endpoint."""
        # botocore 1.44 reads AWS_DEFAULT_REGION; AWS_REGION is what other SDKs read.
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})


@contextlib.contextmanager
def running_s3(port: int = 0) -> Iterator[LocalS3]:
    # Credentials in this process too: moto's in-process backends read them.
    for key, value in FAKE_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    s3 = LocalS3(port)
    s3.start()
    try:
        yield s3
    finally:
        s3.stop()
