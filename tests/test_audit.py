"""The operator's audit against moto: synthetic replicas of a simulated day with planted holes, duplicates,
corruption and a disagreement; backfill from the local REST stub; compaction checked against ground truth."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import jsonschema
import msgspec
import pyarrow.parquet as pq
import pytest
from isal import igzip

from audit import backfill, bucket, check, compact, report
from audit.binance_rest import PAGE_LIMIT, Banned, HistoricalTrades
from audit.days import day_bounds_ms
from audit.ranges import Hole, holes_between
from collector.keys import curated_manifest_key
from sandbox.binance_rest import HistoryServer
from sandbox.local_s3 import REGION, LocalS3
from sandbox.market import Market
from sandbox.replicas import Run, corrupt, write
from tests.conftest import ROOT

DAY = date(2026, 11, 28)
START, END = day_bounds_ms(DAY)
SYMBOL = "BTCUSDT"
NOW = END + 3_600_000  # the day is over


def _client(s3: LocalS3) -> object:
    """The audit's own client (a connection per worker), pointed at the local endpoint."""
    return bucket.client(s3.endpoint, REGION)


def _other_e(trade_id: int, line: bytes) -> bytes:
    """A replica whose copy of one trade carries another event time."""
    return line.replace(b'"E":', b'"E":1', 1)


@dataclass
class Day:
    market: Market
    a: int  # the market's first id (20 minutes before midnight)
    z: int
    corrupted: str
    bad_manifest: str
    gappy: set[str]


def _plant(s3: LocalS3, bucket: str) -> Day:
    market = Market.generate(SYMBOL, start_ms=START - 1_200_000, end_ms=END + 1_200_000, spacing_ms=10_000)
    a, z = market.trades[0].id, market.trades[-1].id
    lost_a = frozenset(range(a + 7000, a + 7005))
    runs = [
        Run("i-a", a, a + 2000),
        Run("i-a", a + 1990, a + 5000),  # a restart that re-collects ten ids: duplicates
        Run("i-a", a + 6000, z, lost=lost_a),
        Run("i-b", a + 100, a + 5500, lost=frozenset(range(a + 3000, a + 3010)), alter=lambda i, line: (
            _other_e(i, line) if i == a + 4000 else line)),
        Run("i-b", a + 5600, z - 50, lost=lost_a),
        Run("i-c", a, a + 3003),
        Run("i-c", a + 3008, a + 5550),
        Run("i-c", a + 6100, z, lost=frozenset(range(a + 7002, a + 7007))),
    ]
    client = s3.client()
    docs = write(client, bucket, market, runs)
    # Planted: one object flipped in place (same size: only a re-read finds it), one manifest off the schema.
    i_c = [d["payload"]["key"] for d in docs if d["source"]["instance_id"] == "i-c"]
    corrupted = i_c[20]
    corrupt(client, bucket, corrupted)
    bad = dict(docs[-1])
    bad_key = docs[-1]["payload"]["key"].replace("raw/", "manifests/").replace(".jsonl.gz", "x.manifest.json")
    del bad["quality"]
    client.put_object(Bucket=bucket, Key=bad_key, Body=msgspec.json.encode(bad))
    gappy = {d["payload"]["key"] for d in docs
             if d["payload"]["last_trade_id"] - d["payload"]["first_trade_id"] + 1 != d["payload"]["record_count"]}
    return Day(market, a, z, corrupted, bad_key, gappy)


@pytest.fixture(scope="module")
def day(s3_server: LocalS3) -> Iterator[tuple[Day, str]]:
    bucket = "audit-test"
    s3_server.create_bucket(bucket)
    planted = _plant(s3_server, bucket)
    yield planted, bucket
    s3_server.delete_bucket(bucket)


def test_the_audit_finds_exactly_the_planted_holes_from_manifests(day, s3_server) -> None:
    planted, bucket = day
    a = planted.a
    audit = check.run(_client(s3_server), bucket, SYMBOL, DAY, quiet=True)
    assert [(h.first, h.last) for h in audit.coverage.holes] == [(a + 5551, a + 5599), (a + 7002, a + 7004)]
    assert not audit.complete
    assert audit.rejected.keys() == {planted.bad_manifest}
    assert "schema" in audit.rejected[planted.bad_manifest][0]
    # Only the objects whose manifests show ids missing inside them were read.
    assert set(audit.read_for_gaps) == planted.gappy and planted.gappy
    assert audit.verified is None and not audit.mismatches
    cov = audit.coverage
    assert set(cov.instances) == {"i-a", "i-b", "i-c"}
    # i-a was down for ids a+5001..a+5999: its own ranges say so, though the union covers most of it.
    assert holes_between(cov.instances["i-a"].spans)[0][:2] == (a + 5001, a + 5999)
    # i-a restarted inside its own range: eleven ids twice; three replicas hold most ids.
    assert 2.0 < cov.duplicates_ratio < 3.0
    hole = cov.holes[0]
    assert hole.after_time == planted.market.by_id(a + 5550).time
    assert hole.before_time == planted.market.by_id(a + 5600).time
    text = report.table(audit)
    assert f"ids {a + 5551}..{a + 5599} (49 missing)" in text and "INCOMPLETE" in text


def test_verify_finds_exactly_the_planted_corruption(day, s3_server) -> None:
    planted, bucket = day
    audit = check.run(_client(s3_server), bucket, SYMBOL, DAY, verify=True, quiet=True)
    assert audit.mismatches.keys() == {planted.corrupted}
    assert "sha256" in audit.mismatches[planted.corrupted][0]
    # The other replicas hold what the damaged object held: the holes are the same two.
    assert len(audit.coverage.holes) == 2


def test_cli_check_json_plot_and_exit_status(day, s3_server, tmp_path: Path) -> None:
    planted, bucket = day
    png = tmp_path / "coverage.png"
    env = {**os.environ, **s3_server.env()}
    done = subprocess.run([sys.executable, "-m", "audit", "--bucket", bucket, "--symbol", "btcusdt", "--date",
                           DAY.isoformat(), "--json", "--plot", str(png)],
                          cwd=ROOT, env=env, capture_output=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["complete"] is False and len(doc["holes"]) == 2
    assert doc["holes"][0]["first"] == planted.a + 5551
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    for args, says in ((["--bucket", bucket, "--date", "2026-13-01"], "--date"),
                       (["--bucket", "no-such-bucket", "--date", DAY.isoformat()], "NoSuchBucket"),
                       (["backfill", "--bucket", bucket, "--rest-url", "ftp://x"], "--rest-url"),
                       (["backfill", "--bucket", bucket, "--max-weight", "7000"], "--max-weight"),
                       (["--bucket", bucket, "--date", DAY.isoformat(), "--plot", str(tmp_path / "no" / "x.png")],
                        "cannot write the plot")):
        bad = subprocess.run([sys.executable, "-m", "audit", *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60, check=False)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)


def test_backfill_then_compact_make_the_ground_truth_day(day, s3_server) -> None:
    planted, bucket = day
    client = _client(s3_server)
    audit = check.run(client, bucket, SYMBOL, DAY, quiet=True)
    with HistoryServer({SYMBOL: planted.market}) as rest:
        filled = backfill.run(client, bucket, SYMBOL, audit.coverage, HistoricalTrades(rest.url), now_ms=NOW)
        assert filled.fetched == 49 + 3
        assert [(r[1], r[2]) for r in rest.requests] == [(planted.a + 5551, 49), (planted.a + 7002, 3)]
        # Re-running finds nothing left to do.
        again = check.run(client, bucket, SYMBOL, DAY, quiet=True)
        assert again.complete and "backfill" in again.coverage.instances
        assert backfill.run(client, bucket, SYMBOL, again.coverage, HistoricalTrades(rest.url), now_ms=NOW).fills == []
        rest.requests.clear()
        curated = compact.run(client, again, history=HistoricalTrades(rest.url), quiet=True, now_ms=NOW)
        # The default asks the exchange only where replicas dispute or one alone holds an id, a page at a time:
        # from a+3004 (i-a's alone; the page also answers the dispute at a+4000), a+5501 (i-c's, then i-b's alone)
        # and a+7000 (i-c's alone).
        assert [(r[1] - planted.a, r[2]) for r in rest.requests] == [(3004, PAGE_LIMIT), (5501, PAGE_LIMIT),
                                                                    (7000, PAGE_LIMIT)]
        rerun = compact.run(client, again, history=HistoricalTrades(rest.url), quiet=True, now_ms=NOW)

    doc = curated.manifest
    jsonschema.validate(doc, json.loads((ROOT / "audit" / "curated.schema.json").read_text()))
    body = client.get_object(Bucket=bucket, Key=curated.data_key)["Body"].read()
    lines = igzip.decompress(body).splitlines()
    assert lines == planted.market.day_lines(DAY)  # byte for byte, every id once, in order
    assert doc["complete"] is True and doc["holes"] == []
    assert doc["payload"]["record_count"] == len(lines)
    assert doc["payload"]["sha256"] == hashlib.sha256(body).hexdigest()
    corroboration = doc["corroboration"]
    assert corroboration["mode"] == "single" and corroboration["uncorroborated"] == []
    # i-b's copy of one trade differs: the exchange sides with the two others, and i-b is named.
    assert corroboration["disagreements_total"] == 1 and corroboration["overruled"] == {"i-b": 1}
    (disagreement,) = corroboration["disagreements"]
    assert disagreement["trade_id"] == planted.a + 4000 and disagreement["resolution"] == "exchange"
    assert disagreement["kept"] == {"instances": ["i-a", "i-c"], "exchange": True}
    assert disagreement["dropped"][0]["instances"] == ["i-b"]
    counts = corroboration["counts"]
    assert counts["exchange"] == 49 + 3 and counts["uncorroborated"] == counts["majority"] == 0
    assert sum(counts.values()) == len(lines) and counts["replica_and_exchange"] > 0
    assert [d["key"] for d in doc["quality"]["damaged_objects"]] == [planted.corrupted]
    assert "sha256" in doc["quality"]["damaged_objects"][0]["reason"]
    assert curated.manifest_key == curated_manifest_key(SYMBOL, DAY) and doc["payload"]["key"] == curated.data_key

    assert rerun.manifest == doc  # same sources, same answers, same day, same bytes
    listed = client.list_objects_v2(Bucket=bucket, Prefix="curated/")["Contents"]
    tables = [table["key"] for table in doc["tables"].values()]
    assert sorted(o["Key"] for o in listed) == sorted([curated.data_key, curated.manifest_key, *tables])
    # The Parquet day says, trade by trade, what the certificate counts.
    trades = client.get_object(Bucket=bucket, Key=doc["tables"]["trades"]["key"])["Body"].read()
    vouched = pq.read_table(io.BytesIO(trades), columns=["corroboration"]).column(0).to_pylist()
    assert Counter(vouched) == {how: n for how, n in counts.items() if n}


def test_an_open_start_is_walked_back_and_then_bracketed_from_the_command_line(s3_server) -> None:
    bucket = "audit-open-start"
    s3_server.create_bucket(bucket)
    market = Market.generate(SYMBOL, start_ms=START - 7_200_000, end_ms=END + 600_000, spacing_ms=20_000, seed=3)
    first_of_day = next(t.id for t in market.trades if t.time >= START)
    client = _client(s3_server)
    # The only replica started 30 trades into the day and nothing before midnight is held.
    write(client, bucket, market, [Run("i-a", first_of_day + 30, market.trades[-1].id)])
    audit = check.run(client, bucket, SYMBOL, DAY, quiet=True)
    assert audit.coverage.holes == [Hole(None, first_of_day + 29, None, market.by_id(first_of_day + 30).time)]
    env = {**os.environ, **s3_server.env()}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "audit", *args, "--bucket", bucket, "--date", DAY.isoformat()],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)

    with HistoryServer({SYMBOL: market}) as rest:
        dry = cli("backfill", "--rest-url", rest.url, "--dry-run")
        assert dry.returncode == 1 and "open start" in dry.stdout and rest.calls == 0
        done = cli("backfill", "--rest-url", rest.url)
        # The day's first 30 trades and the one before midnight that brackets them; then the audit says complete.
        assert done.returncode == 0, done.stdout + done.stderr
        assert "31 trades fetched" in done.stdout and "COMPLETE" in done.stdout
        compacted = cli("compact", "--rest-url", rest.url)
    assert compacted.returncode == 0, compacted.stdout + compacted.stderr
    # One replica holds the rest of the day: the exchange confirms it; the 31 backfilled trades are its own.
    assert "complete;" in compacted.stdout and "30 by the exchange alone" in compacted.stdout, compacted.stdout
    assert "by 1 replica + the exchange" in compacted.stdout
    doc = msgspec.json.decode(client.get_object(Bucket=bucket, Key=curated_manifest_key(SYMBOL, DAY))["Body"].read())
    body = client.get_object(Bucket=bucket, Key=doc["payload"]["key"])["Body"].read()
    assert igzip.decompress(body).splitlines() == market.day_lines(DAY)
    assert doc["complete"] is True


def test_a_backfill_stopped_by_a_ban_keeps_what_it_fetched_and_a_rerun_completes_it(s3_server) -> None:
    bucket = "audit-ban"
    s3_server.create_bucket(bucket)
    client = _client(s3_server)
    market = Market.generate(SYMBOL, start_ms=START - 600_000, end_ms=END + 600_000, spacing_ms=30_000, seed=5)
    a, z = market.trades[0].id, market.trades[-1].id
    write(client, bucket, market, [Run("i-a", a, a + 500), Run("i-a", a + 2001, z)])  # ids a+501..a+2000 lost
    audit = check.run(client, bucket, SYMBOL, DAY, quiet=True)
    assert [(h.first, h.last) for h in audit.coverage.holes] == [(a + 501, a + 2000)]
    with HistoryServer({SYMBOL: market}) as rest:

        class BannedAfterOnePage(HistoricalTrades):
            def page(self, symbol: str, from_id: int, limit: int = PAGE_LIMIT) -> list[dict[str, object]]:
                records = super().page(symbol, from_id, limit)
                rest.fail_next(418, retry_after=120)  # Binance bans this IP right after answering
                return records

        stopped = backfill.run(client, bucket, SYMBOL, audit.coverage, BannedAfterOnePage(rest.url), now_ms=NOW)
        assert isinstance(stopped.error, Banned)
        assert stopped.fetched == 1000 and len(stopped.fills[0].keys) == 1  # the first page, stored
        partly = check.run(client, bucket, SYMBOL, DAY, quiet=True)
        assert [(h.first, h.last) for h in partly.coverage.holes] == [(a + 1501, a + 2000)]
        done = backfill.run(client, bucket, SYMBOL, partly.coverage, HistoricalTrades(rest.url), now_ms=NOW)
    assert done.error is None and done.fetched == 500
    assert check.run(client, bucket, SYMBOL, DAY, quiet=True).complete
