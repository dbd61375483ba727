"""One manifest as the audit uses it, and the checks a manifest must pass before it is believed. No I/O."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema

from audit.ranges import Span
from collector.keys import (
    BACKFILL_INSTANCE,
    BACKFILL_PREFIX,
    DATA_PREFIX,
    DATA_SUFFIX,
    MANIFEST_PREFIX,
    MANIFEST_SUFFIX,
)
from collector.manifest import SCHEMA_PATH

# A collector's manifest is about 1 KiB; anything listed larger is rejected without being read.
MANIFEST_MAX_BYTES = 16 * 1024
# The largest data object a manifest may describe, compressed or not. The collector cuts files at 2 MiB
# (collector.config.ROTATE_BYTES); this leaves room for a larger COLLECTOR_ROTATE_BYTES.
MAX_OBJECT_BYTES = 64 << 20

_NAME_RE = re.compile(r"^part-(?P<instance>.+)-\d{8}T\d{9}Z" + re.escape(MANIFEST_SUFFIX) + "$")


@dataclass(frozen=True, slots=True)
class Entry:
    """A data object as its manifest describes it."""

    manifest_key: str
    data_key: str
    instance_id: str
    record_count: int
    first_trade_id: int
    last_trade_id: int
    min_trade_time: int
    max_trade_time: int
    uncompressed_bytes: int
    compressed_bytes: int
    sha256: str
    created_at: str

    @classmethod
    def from_doc(cls, manifest_key: str, doc: dict[str, Any]) -> Entry:
        p = doc["payload"]
        return cls(manifest_key, p["key"], doc["source"]["instance_id"], p["record_count"], p["first_trade_id"],
                   p["last_trade_id"], p["min_trade_time"], p["max_trade_time"], p["uncompressed_bytes"],
                   p["compressed_bytes"], p["sha256"], doc["created_at"])

    @property
    def inner_missing(self) -> int:
        """Ids inside `first..last` that the file does not hold (a file's ids increase): where it is not 0,
        the manifest alone cannot say which ids the file holds."""
        return self.last_trade_id - self.first_trade_id + 1 - self.record_count

    @property
    def span(self) -> Span:
        """What the file holds when `inner_missing` is 0 (ids increase with trade time)."""
        return Span(self.first_trade_id, self.last_trade_id, self.min_trade_time, self.max_trade_time)


def instance_order(instance_id: str) -> tuple[bool, str]:
    """Replicas by id, the backfill after them: the order of the report and of which copy of a trade wins."""
    return (instance_id == BACKFILL_INSTANCE, instance_id)


@cache
def _validator(data_prefix: str) -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    if data_prefix != DATA_PREFIX:
        # The contract's key pattern names raw/ only; backfill objects follow the same layout under their own
        # prefix, so their manifests are held to the same schema with that one pattern moved.
        schema = copy.deepcopy(schema)
        key = schema["properties"]["payload"]["properties"]["key"]
        key["pattern"] = key["pattern"].replace("^" + DATA_PREFIX, "^" + data_prefix)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def expected_data_key(manifest_key: str) -> str:
    """Where the data object of the manifest at `manifest_key` must be."""
    if manifest_key.startswith(MANIFEST_PREFIX):
        return DATA_PREFIX + manifest_key.removeprefix(MANIFEST_PREFIX).removesuffix(MANIFEST_SUFFIX) + DATA_SUFFIX
    return manifest_key.removesuffix(MANIFEST_SUFFIX) + DATA_SUFFIX


def problems(manifest_key: str, doc: object, *, symbol: str) -> list[str]:
    """Why this manifest cannot be believed; empty when it can."""
    prefix = BACKFILL_PREFIX if manifest_key.startswith(BACKFILL_PREFIX) else DATA_PREFIX
    found = [f"schema: {e.message} at /{'/'.join(map(str, e.absolute_path))}"
             for e in _validator(prefix).iter_errors(doc)]
    if found or not isinstance(doc, dict):
        return found or ["schema: not a JSON object"]
    p = doc["payload"]
    if p["key"] != expected_data_key(manifest_key):
        found.append(f"payload.key {p['key']} does not match the manifest's own key")
    if doc["source"]["symbol"] != symbol or f"/symbol={symbol}/" not in manifest_key:
        found.append(f"symbol {doc['source']['symbol']} where {symbol} was listed")
    named = _NAME_RE.match(manifest_key.rpartition("/")[2])
    if named is None or named["instance"] != doc["source"]["instance_id"]:
        found.append(f"instance {doc['source']['instance_id']} is not the one in the key")
    if p["first_trade_id"] > p["last_trade_id"] or p["min_trade_time"] > p["max_trade_time"]:
        found.append("first/last trade id or min/max trade time out of order")
    elif p["last_trade_id"] - p["first_trade_id"] + 1 < p["record_count"]:
        found.append(f"{p['record_count']} records cannot fit ids {p['first_trade_id']}..{p['last_trade_id']}")
    if max(p["compressed_bytes"], p["uncompressed_bytes"]) > MAX_OBJECT_BYTES:
        found.append(f"describes an object over the audit's {MAX_OBJECT_BYTES}-byte cap")
    return found
