"""`python -m audit query` against moto: only the objects asked for are fetched (then cached), the views hold
the ground truth, raw days are deduplicated across replicas; and the SQL Athena runs, parsed as Trino SQL and
run through DuckDB on the same files, gives the same answers."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import date, timedelta
from decimal import Decimal, localcontext

import pyarrow.parquet as pq
import pytest
import sqlglot

from audit import bucket, check, compact, query
from audit.bars import as_klines, bars
from audit.days import day_bounds_ms
from audit.parquet_day import trades_table
from sandbox.local_s3 import REGION
from sandbox.market import Market
from sandbox.replicas import Run, write
from stacks.analytics import NAMED_QUERIES, named_query_sql
from tests.conftest import ROOT

DAY = date(2026, 11, 28)
NEXT = DAY + timedelta(days=1)
START, END = day_bounds_ms(DAY)
SYMBOL = "BTCUSDT"
BUCKET = "query-test"


@pytest.fixture(scope="module")
def planted(s3_server):
    """Two days of one symbol from two replicas; the first day compacted, the second not."""
    s3_server.create_bucket(BUCKET)
    client = bucket.client(s3_server.endpoint, REGION)
    market = Market.generate(SYMBOL, start_ms=START - 600_000, end_ms=END + 3_600_000, spacing_ms=4_000, seed=9)
    a, z = market.trades[0].id, market.trades[-1].id
    write(client, BUCKET, market, [Run("i-a", a, z), Run("i-b", a, z - 10, lost=frozenset(range(a + 50, a + 60)))],
          rotate_seconds=3600)
    compact.run(client, check.run(client, BUCKET, SYMBOL, DAY, quiet=True), quiet=True)
    return client, market


def _day_trades(market: Market, day: date) -> list:
    start, end = day_bounds_ms(day)
    return [t for t in market.trades if start <= t.time < end]


def test_views_hold_the_ground_truth_and_only_what_was_asked_is_fetched_once(planted, tmp_path) -> None:
    client, market = planted
    cache = tmp_path / "cache"
    selection = query.fetch(client, BUCKET, [SYMBOL], [DAY], cache)
    # The curated day's four tables, nothing raw.
    assert selection.fetched == 4 and selection.raw == [] and selection.raw_days == []
    assert {p.relative_to(cache).as_posix().split("/")[4] for p in cache.rglob("*.parquet")} == {
        "trades", "bars-1s", "bars-1m", "bars-1h"}
    con = query.connect(selection)
    rows = con.sql("SELECT trade_id, CAST(price AS VARCHAR), CAST(quantity AS VARCHAR), epoch_ms(trade_time), "
                   "buyer_is_maker, symbol, day FROM trades ORDER BY trade_id").fetchall()
    assert rows == [(t.id, t.price, t.qty, t.time, t.is_buyer_maker, SYMBOL, DAY) for t in _day_trades(market, DAY)]
    expected = bars([trades_table(b"".join(t.stream_line(SYMBOL) + b"\n" for t in _day_trades(market, DAY)))], "1s")
    assert con.sql("SELECT count(*) FROM bars_1s").fetchall() == [(expected.num_rows,)]
    assert query.fetch(client, BUCKET, [SYMBOL], [DAY], cache).fetched == 0  # all from the cache


def test_raw_trades_of_a_day_not_compacted_are_each_trade_once(planted, tmp_path) -> None:
    client, market = planted
    selection = query.fetch(client, BUCKET, [SYMBOL], [NEXT], tmp_path / "cache")
    assert selection.raw_days == [(SYMBOL, NEXT)] and selection.tables["trades"] == []
    con = query.connect(selection)
    assert con.sql("SELECT count(*) FROM trades").fetchall() == [(0,)]
    ids = [row[0] for row in con.sql("SELECT trade_id FROM raw_trades ORDER BY trade_id").fetchall()]
    assert ids == [t.id for t in _day_trades(market, NEXT)]  # two replicas, every id once, the day only


def test_the_command_line_writes_csv_and_parquet_and_refuses_bad_sql(planted, s3_server, tmp_path) -> None:
    env = {**os.environ, **s3_server.env()}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "audit", "query", "--bucket", BUCKET, "--date", DAY.isoformat(),
                               "--cache", str(tmp_path / "cache"), *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    done = cli("--format", "csv", "SELECT open_time, open, number_of_trades FROM bars_1m ORDER BY open_time LIMIT 3")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["open_time", "open", "number_of_trades"] and len(rows) == 4
    out = tmp_path / "bars.parquet"
    done = cli("--format", "parquet", "--output", str(out), "SELECT * FROM bars_1h")
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).num_rows == 24
    bad = cli("SELECT nope FROM trades")
    assert bad.returncode == 2 and "query failed" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("name", list(NAMED_QUERIES))
def test_the_sql_athena_runs_parses_as_trino_and_answers_the_same_through_duckdb(planted, tmp_path, name) -> None:
    client, market = planted
    con = query.connect(query.fetch(client, BUCKET, [SYMBOL], [DAY], tmp_path / "cache"))
    athena_sql = named_query_sql(name, symbol=SYMBOL, day=f"DATE '{DAY}'")
    duck_sql = sqlglot.transpile(athena_sql, read="trino", write="duckdb")[0]
    result = con.sql(duck_sql)
    day = _day_trades(market, DAY)
    if name == "trades_of_a_day":
        assert [(r[0], f"{r[1]:f}", f"{r[2]:f}") for r in result.fetchall()] == [(t.id, t.price, t.qty) for t in day]
    elif name == "bars_1s_of_a_day":
        table = result.to_arrow_table()
        expected = bars([trades_table(b"".join(t.stream_line(SYMBOL) + b"\n" for t in day))], "1s")
        assert as_klines(table) == as_klines(expected)
    else:
        ((symbol, on, count, volume, quote, vwap),) = result.fetchall()
        with localcontext(prec=60):
            exact_quote = sum(Decimal(t.price) * Decimal(t.qty) for t in day)
            exact_volume = sum(Decimal(t.qty) for t in day)
        assert (symbol, on, count, volume, quote) == (SYMBOL, DAY, len(day), exact_volume, exact_quote)
        assert vwap == pytest.approx(float(exact_quote / exact_volume), rel=1e-12)


def test_a_recompacted_day_replaces_its_tables_and_a_damaged_table_is_refused(s3_server, tmp_path) -> None:
    name = "query-recompact"
    s3_server.create_bucket(name)
    client = bucket.client(s3_server.endpoint, REGION)
    market = Market.generate(SYMBOL, start_ms=START - 600_000, end_ms=END + 600_000, spacing_ms=20_000, seed=4)
    a, z = market.trades[0].id, market.trades[-1].id
    write(client, name, market, [Run("i-a", a, z, lost=frozenset(range(a + 100, a + 200)))])
    first = compact.run(client, check.run(client, name, SYMBOL, DAY, quiet=True), quiet=True)
    # Two more replicas fill the hole: each of its trades is then held by two, as a certified day needs.
    write(client, name, market, [Run("i-b", a, z), Run("i-c", a, z)])
    second = compact.run(client, check.run(client, name, SYMBOL, DAY, quiet=True), quiet=True)
    assert first.manifest["complete"] is False and second.manifest["complete"] is True
    old = {t["key"] for t in first.manifest["tables"].values()}
    new = {t["key"] for t in second.manifest["tables"].values()}
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=name, Prefix="curated/")["Contents"]}
    assert old.isdisjoint(new) and listed == {second.data_key, second.manifest_key, *new}
    con = query.connect(query.fetch(client, name, [SYMBOL], [DAY], tmp_path / "cache"))
    assert con.sql("SELECT count(*) FROM trades").fetchall() == [(len(_day_trades(market, DAY)),)]

    key = second.manifest["tables"]["bars_1m"]["key"]
    client.put_object(Bucket=name, Key=key, Body=b"not the bars")
    with pytest.raises(query.DamagedObject, match="bars-1m"):
        query.fetch(client, name, [SYMBOL], [DAY], tmp_path / "other-cache")
