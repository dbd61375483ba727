"""Re-check what landed in S3 against the manifests: hashes, counts, ids, byte-exact lines, coverage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from audit.bucket import read
from audit.entries import MANIFEST_MAX_BYTES, Entry
from audit.objects import check_object
from collector.keys import DATA_PREFIX, MANIFEST_PREFIX


@dataclass
class ObjectReport:
    key: str
    symbol: str
    records: int
    uncompressed_bytes: int
    compressed_bytes: int
    first_trade_id: int
    last_trade_id: int
    problems: list[str]


@dataclass
class Landing:
    """Everything under `raw/` and `manifests/`, checked."""

    objects: list[ObjectReport] = field(default_factory=list)
    lines: dict[str, list[bytes]] = field(default_factory=dict)  # per symbol, in key order
    manifests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def ids(self, symbol: str) -> list[int]:
        return [msgspec.json.decode(line)["t"] for line in self.lines.get(symbol, [])]


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return sorted(keys)


def check_bucket(client: Any, bucket: str) -> Landing:
    landing = Landing()
    data_keys = set(_keys(client, bucket, DATA_PREFIX))
    for manifest_key in _keys(client, bucket, MANIFEST_PREFIX):
        doc = msgspec.json.decode(read(client, bucket, manifest_key, limit=MANIFEST_MAX_BYTES))
        landing.manifests.append(doc)
        payload = doc["payload"]
        key = payload["key"]
        problems: list[str] = []
        if key not in data_keys:
            landing.problems.append(f"{manifest_key}: data object {key} missing")
            continue
        data_keys.discard(key)
        head = client.head_object(Bucket=bucket, Key=key)
        if head.get("ServerSideEncryption") != "AES256":
            problems.append("not encrypted with AES256")
        body = read(client, bucket, key, limit=payload["compressed_bytes"])
        symbol = doc["source"]["symbol"]
        checked = check_object(Entry.from_doc(manifest_key, doc), body, symbol)
        problems += checked.problems
        lines = checked.lines
        landing.lines.setdefault(symbol, []).extend(lines)
        landing.objects.append(ObjectReport(key, symbol, len(lines), sum(len(line) + 1 for line in lines),
                                            len(body), payload["first_trade_id"],
                                            payload["last_trade_id"], problems))
        landing.problems += [f"{key}: {p}" for p in problems]
    landing.problems += [f"{key}: data object without a manifest" for key in sorted(data_keys)]
    return landing


def coverage(landed_ids: list[int], sent_ids: set[int]) -> tuple[int, int, int]:
    """(sent ids that landed, sent ids, duplicate lines) — duplicates are allowed (at least once)."""
    unique = set(landed_ids)
    return len(sent_ids & unique), len(sent_ids), len(landed_ids) - len(unique)
