"""Forged writers against `compact`, through moto and the local REST stub.

A writer holding one instance's credentials can put anything under raw/ and manifests/, with any instance id and
manifests that match its objects (`--verify` cannot tell). Three honest replicas collect a simulated day; each
test adds a forger and checks what compact certifies, what it leaves out, and whom it names.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import jsonschema
import msgspec
import pytest
from isal import igzip

from audit import bucket, check, compact
from audit.binance_rest import HistoricalTrades
from audit.corroborate import Mode
from audit.days import day_bounds_ms
from audit.entries import MANIFEST_MAX_BYTES
from collector import manifest
from collector.config import GZIP_LEVEL
from collector.keys import Part
from collector.stats import FileStats
from sandbox.binance_rest import HistoryServer
from sandbox.local_s3 import REGION, LocalS3
from sandbox.market import Market
from sandbox.replicas import Run, write
from tests.conftest import ROOT

DAY = date(2026, 11, 28)
START, END = day_bounds_ms(DAY)
SYMBOL = "BTCUSDT"
NOW = END + 3_600_000
MARKET = Market.generate(SYMBOL, start_ms=START - 600_000, end_ms=END + 600_000, spacing_ms=30_000, seed=9)
A, Z = MARKET.trades[0].id, MARKET.trades[-1].id
IN_DAY = [t.id for t in MARKET.trades if START <= t.time < END]
HONEST = ("i-a", "i-b", "i-c")
SCHEMA = json.loads((ROOT / "audit" / "curated.schema.json").read_text())
_buckets = itertools.count()


def _price(trade_id: int, line: bytes) -> bytes:
    """The forger's copy: the same trade at another price."""
    return line.replace(b'"p":"', b'"p":"1', 1)


@dataclass
class Day:
    s3: LocalS3
    bucket: str
    client: Any  # the audit's own client

    def write(self, runs: list[Run]) -> list[dict[str, Any]]:
        return write(self.s3.client(), self.bucket, MARKET, runs, rotate_seconds=3600)

    def compact(self, *, mode: Mode = Mode.SINGLE, history: HistoricalTrades | None = None) -> dict[str, Any]:
        audit = check.run(self.client, self.bucket, SYMBOL, DAY, quiet=True)
        doc = compact.run(self.client, audit, mode=mode, history=history, quiet=True, now_ms=NOW).manifest
        jsonschema.validate(doc, SCHEMA)
        return doc

    def lines(self, doc: dict[str, Any]) -> list[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=doc["payload"]["key"])["Body"].read()
        return igzip.decompress(body).splitlines()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "audit", "compact", "--bucket", self.bucket, "--date",
                               DAY.isoformat(), "--quiet", *args], cwd=ROOT, env={**os.environ, **self.s3.env()},
                              capture_output=True, text=True, timeout=120, check=False)


def _day(s3_server: LocalS3, lost: frozenset[int] = frozenset()) -> Iterator[Day]:
    name = f"forgery-{next(_buckets)}"
    s3_server.create_bucket(name)
    day = Day(s3_server, name, bucket.client(s3_server.endpoint, REGION))
    day.write([Run(instance, A, Z, lost=lost) for instance in HONEST])
    yield day
    s3_server.delete_bucket(name)


@pytest.fixture
def honest_day(s3_server: LocalS3) -> Iterator[Day]:
    """Three replicas that hold every trade of the day."""
    yield from _day(s3_server)


HOLE = frozenset(range(IN_DAY[100], IN_DAY[120]))


@pytest.fixture
def holed_day(s3_server: LocalS3) -> Iterator[Day]:
    """Three replicas that all missed the same twenty trades."""
    yield from _day(s3_server, HOLE)


@pytest.fixture
def rest() -> Iterator[HistoryServer]:
    with HistoryServer({SYMBOL: MARKET}) as server:
        yield server


def _down() -> HistoricalTrades:
    """An exchange that cannot be reached: nothing listens there, and one attempt is all it gets."""
    with HistoryServer({}) as gone:
        url = gone.url
    return HistoricalTrades(url, attempts=1, sleep=lambda seconds: None)


def test_a_replica_with_altered_prices_loses_and_is_named(honest_day: Day, rest: HistoryServer) -> None:
    forged = IN_DAY[:1000]
    # Instance "0" sorts before every real instance id: it used to win every disagreement.
    honest_day.write([Run("0", forged[0], forged[-1], alter=_price)])
    doc = honest_day.compact(history=HistoricalTrades(rest.url))
    assert honest_day.lines(doc) == MARKET.day_lines(DAY) and doc["complete"] is True
    corroboration = doc["corroboration"]
    assert corroboration["overruled"] == {"0": 1000} and corroboration["disagreements_total"] == 1000
    assert {d["resolution"] for d in corroboration["disagreements"]} == {"exchange"}
    assert corroboration["disagreements"][0]["dropped"][0]["instances"] == ["0"]
    assert corroboration["exchange"]["calls"] == 1  # the thousand disputed ids are one page
    # Without the exchange, three replicas outvote one, and the certificate says the majority decided.
    without = honest_day.compact(mode=Mode.NONE)
    assert honest_day.lines(without) == MARKET.day_lines(DAY) and without["complete"] is True
    assert without["corroboration"]["counts"]["majority"] == 1000
    assert without["corroboration"]["exchange"] == {"ids_asked": 0, "calls": 0, "weight": 0, "unreachable": None}


def test_invented_trades_filling_real_holes_are_not_certified_unless_the_exchange_agrees(
        holed_day: Day, rest: HistoryServer) -> None:
    first, last = min(HOLE), max(HOLE)
    holed_day.write([Run("i-f", first, last, alter=_price)])

    # Not asked about ids one replica alone holds: the day is written, but not certified.
    unasked = holed_day.cli("--corroborate", "disputed")
    assert unasked.returncode == 1, unasked.stdout + unasked.stderr
    assert f"ids {first}..{last}: uncorroborated" in unasked.stdout
    doc = msgspec.json.decode(holed_day.client.get_object(
        Bucket=holed_day.bucket, Key=f"curated/exchange=binance/symbol={SYMBOL}/date={DAY}/manifest.json")["Body"]
        .read())
    assert doc["complete"] is False and doc["corroboration"]["uncorroborated"] == [{"first": first, "last": last}]

    # Asked, the exchange overrules the inventions with its own trades.
    checked = holed_day.compact(history=HistoricalTrades(rest.url))
    assert holed_day.lines(checked) == MARKET.day_lines(DAY) and checked["complete"] is True
    assert checked["corroboration"]["counts"]["exchange"] == len(HOLE)
    assert checked["corroboration"]["overruled"] == {"i-f": len(HOLE)}

    # And a writer that filled the hole truthfully is confirmed.
    holed_day.write([Run("i-g", first, last)])
    confirmed = holed_day.compact(history=HistoricalTrades(rest.url))
    assert confirmed["complete"] is True and confirmed["corroboration"]["counts"]["replica_and_exchange"] == len(HOLE)


def test_several_forged_instance_ids_voting_together_lose_to_the_exchange(
        honest_day: Day, rest: HistoryServer) -> None:
    forged = IN_DAY[500:700]
    forgers = ("0", "1", "2", "3")  # one writer, four made-up instance ids: they outnumber the three replicas
    honest_day.write([Run(name, forged[0], forged[-1], alter=_price) for name in forgers])
    doc = honest_day.compact(history=HistoricalTrades(rest.url))
    assert honest_day.lines(doc) == MARKET.day_lines(DAY) and doc["complete"] is True
    assert doc["corroboration"]["overruled"] == dict.fromkeys(forgers, len(forged))

    # With the exchange down the majority decides, wrongly here: the certificate says so and why.
    down = honest_day.compact(history=_down())
    corroboration = down["corroboration"]
    assert corroboration["counts"]["majority"] == len(forged)
    assert {d["resolution"] for d in corroboration["disagreements"]} == {"majority"}
    assert "no answer for BTCUSDT" in corroboration["exchange"]["unreachable"]
    assert corroboration["overruled"] == dict.fromkeys(HONEST, len(forged))


def _forged_object(day: Day, instance: str, body: bytes, stats: FileStats) -> str:
    """Store `body` and a manifest that vouches for it, as a forger with the role's credentials can."""
    part = Part(SYMBOL, instance, MARKET.by_id(stats.first_trade_id).time)
    client = day.s3.client()
    client.put_object(Bucket=day.bucket, Key=part.data_key, Body=body)
    doc = manifest.build(part=part, stats=stats, bucket=day.bucket, compressed_bytes=len(body),
                         sha256=hashlib.sha256(body).hexdigest(), created_at_ms=NOW)
    client.put_object(Bucket=day.bucket, Key=part.manifest_key, Body=manifest.encode(doc))
    return part.data_key


def _stats(first: int, last: int, uncompressed: int) -> FileStats:
    start, end = MARKET.by_id(first).time, MARKET.by_id(last).time
    return FileStats(record_count=last - first + 1, uncompressed_bytes=uncompressed, min_event_time=start,
                     max_event_time=end, min_trade_time=start, max_trade_time=end, first_trade_id=first,
                     last_trade_id=last)


class _Reads:
    """The audit's client, noting every key it reads."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.keys: list[str] = []

    def get_object(self, **kwargs: Any) -> Any:
        self.keys.append(kwargs["Key"])
        return self._client.get_object(**kwargs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self._client, name)


def test_a_gzip_bomb_and_an_oversized_manifest_are_bounded_and_reported(honest_day: Day, rest: HistoryServer) -> None:
    first, last = IN_DAY[10], IN_DAY[1009]
    claimed = sum(len(MARKET.by_id(i).stream_line(SYMBOL)) + 1 for i in range(first, last + 1))
    stream = io.BytesIO()
    with igzip.IGzipFile(fileobj=stream, mode="wb", compresslevel=GZIP_LEVEL) as bomb:
        for _ in range(256):
            bomb.write(bytes(1 << 20))  # 256 MiB of zeros, under a manifest that says ~150 KB
    bomb_key = _forged_object(honest_day, "i-bomb", stream.getvalue(), _stats(first, last, claimed))
    # A manifest of 1 MiB: believed or not, it is not read.
    part = Part(SYMBOL, "i-huge", MARKET.by_id(first).time)
    honest_day.s3.client().put_object(Bucket=honest_day.bucket, Key=part.manifest_key, Body=b" " * (1 << 20))

    reads = _Reads(honest_day.client)
    audit = check.run(reads, honest_day.bucket, SYMBOL, DAY, quiet=True)
    assert part.manifest_key not in reads.keys
    assert audit.rejected[part.manifest_key] == [
        f"{1 << 20} bytes, over the {MANIFEST_MAX_BYTES}-byte cap for a manifest (not read)"]
    doc = compact.run(reads, audit, history=HistoricalTrades(rest.url), quiet=True, now_ms=NOW).manifest
    assert honest_day.lines(doc) == MARKET.day_lines(DAY) and doc["complete"] is True
    assert doc["quality"]["damaged_objects"] == [
        {"key": bomb_key, "reason": f"more than {claimed} bytes uncompressed, manifest says {claimed}"}]
    assert part.manifest_key in doc["quality"]["rejected_manifests"]


def test_a_non_trade_line_inside_a_valid_object_is_quarantined_and_the_day_completes(
        honest_day: Day, rest: HistoryServer) -> None:
    client = honest_day.s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=honest_day.bucket, Prefix="raw/")["Contents"]
            if "part-i-b-" in o["Key"]]
    key = keys[len(keys) // 2]
    lines = igzip.decompress(client.get_object(Bucket=honest_day.bucket, Key=key)["Body"].read()).splitlines()
    lines[1] = b'{"e":"kline","E":1,"s":"BTCUSDT"}'
    body = igzip.compress(b"".join(line + b"\n" for line in lines), GZIP_LEVEL, mtime=0)
    # Object and manifest agree: sha256 and sizes describe the damaged bytes.
    manifest_key = key.replace("raw/", "manifests/").replace(".jsonl.gz", ".manifest.json")
    doc = msgspec.json.decode(client.get_object(Bucket=honest_day.bucket, Key=manifest_key)["Body"].read())
    doc["payload"].update(compressed_bytes=len(body), sha256=hashlib.sha256(body).hexdigest(),
                          uncompressed_bytes=sum(len(line) + 1 for line in lines))
    client.put_object(Bucket=honest_day.bucket, Key=key, Body=body)
    client.put_object(Bucket=honest_day.bucket, Key=manifest_key, Body=msgspec.json.encode(doc))

    curated = honest_day.compact(history=HistoricalTrades(rest.url))
    assert honest_day.lines(curated) == MARKET.day_lines(DAY) and curated["complete"] is True
    assert curated["quality"]["damaged_objects"] == [{"key": key, "reason": "line 2 is not a trade event"}]
