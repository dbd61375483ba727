"""The bucket, read and written concurrently: listings by partition, objects by key, with progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

# Enough requests in flight to hide S3's latency (tens of ms) on one machine; boto3 clients are thread-safe.
WORKERS = 64


# A connection per worker; botocore's standard retry mode for throttling and transient errors.
CLIENT_CONFIG = Config(max_pool_connections=WORKERS, retries={"mode": "standard", "max_attempts": 5})


def client(endpoint_url: str | None = None, region_name: str | None = None) -> Any:
    """An S3 client from boto3's standard chain."""
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region_name, config=CLIENT_CONFIG)


def progress(iterable: Iterable[T], *, total: int | None, desc: str, quiet: bool) -> Iterator[T]:
    """A bar on stderr while a person watches; nothing when `quiet` or when stderr is not a terminal."""
    yield from tqdm(iterable, total=total, desc=desc, unit="obj", file=sys.stderr,
                    disable=quiet or not sys.stderr.isatty(), leave=False)


def concurrently(fn: Callable[[T], R], items: list[T], *, desc: str, quiet: bool) -> list[R]:
    """`fn` over `items` on the worker pool, results in the order of `items`."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(items))) as pool:
        return list(progress(pool.map(fn, items), total=len(items), desc=desc, quiet=quiet))


def list_objects(s3: Any, bucket: str, prefixes: list[str], *, quiet: bool) -> dict[str, int]:
    """Key → size of every object under `prefixes` (one listing per prefix, run side by side)."""

    def one(prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update((obj["Key"], obj["Size"]) for obj in page.get("Contents", []))
        return found

    sizes: dict[str, int] = {}
    for part in concurrently(one, prefixes, desc="listing", quiet=quiet):
        sizes.update(part)
    return sizes


def read(s3: Any, bucket: str, key: str, *, limit: int) -> bytes:
    """The object's bytes, but never more than `limit + 1` of them: whoever expects `limit` bytes sees that
    there are more without holding them."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return body.read(limit + 1)
    finally:
        body.close()

