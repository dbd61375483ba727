"""Local S3 endpoints on 127.0.0.1 with credentials that never reach AWS: moto's emulation (the default) and
SeaweedFS, a real S3 server (`sandbox/seaweedfs.py`). Both answer to the same interface, so the demo and the
tests run one scenario against either."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any, Literal

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

REGION = "ap-northeast-1"
# moto accepts any credentials; these make sure nothing falls back to a real profile.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}
Backend = Literal["moto", "seaweedfs"]
BACKENDS: tuple[Backend, ...] = ("moto", "seaweedfs")


class LocalS3:
    """An S3 endpoint on 127.0.0.1 that can be stopped and started again at the same address, data kept.

    `client()` is the operator's (it may read, list and delete); `env()` is what a collector gets."""

    name: Backend
    # (access key, secret key): the operator's, and the collector's
    admin_credentials: tuple[str, str] = ("testing", "testing")
    collector_credentials: tuple[str, str] = ("testing", "testing")

    def __init__(self, port: int = 0) -> None:
        self.port = port

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for a collector (or any boto3 program) that must use this endpoint."""
        key, secret = self.collector_credentials
        # botocore 1.44 reads AWS_DEFAULT_REGION; AWS_REGION is what other SDKs read. No session token: a real
        # S3 server takes one for a temporary credential it never issued (403 InvalidAccessKeyId).
        return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def close(self) -> None:
        """Stop for good and release what the server holds."""
        self.stop()

    def client(self, config: Config | None = None) -> Any:
        key, secret = self.admin_credentials
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret, config=config)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})

    def delete_bucket(self, name: str) -> None:
        """Every object, then the bucket."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)


class MotoS3(LocalS3):
    """moto's server in this process: starts in ~0.3 s; buckets and objects live on across stop/start."""

    name: Backend = "moto"

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
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


@contextlib.contextmanager
def running_s3(backend: Backend = "moto") -> Iterator[LocalS3]:
    # Credentials in this process too: moto's in-process backends read them.
    for key, value in FAKE_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    s3: LocalS3
    if backend == "seaweedfs":
        from sandbox.seaweedfs import SeaweedS3  # only its users pay for finding the binary

        s3 = SeaweedS3()
    else:
        s3 = MotoS3()
    s3.start()
    try:
        yield s3
    finally:
        s3.close()
