"""The daily job's handler, invoked in-process as Lambda would invoke it, against moto and the REST stub: a day
with planted holes ends certified with its Parquet and bars; a second run writes nothing; a day Binance cannot
fill reports its holes, writes no curated day and fails the invocation (the next hourly attempt retries it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import msgspec
import pytest
from isal import igzip

from audit import backfill, check, daily
from audit.binance_rest import HistoricalTrades
from audit.bucket import client as bucket_client
from audit.curated_tables import table_name
from collector.keys import CURATED_PREFIX, curated_manifest_key
from sandbox.binance_rest import HistoryServer
from sandbox.local_s3 import REGION, LocalS3
from stacks.daily_job_package import PACKAGES, code_dir, deterministic_zip, layer_zip
from tests.conftest import ROOT
from tests.test_audit import DAY, SYMBOL, _plant

NAMESPACE = "TestCollector/DailyJob"


def _objects(s3: LocalS3, bucket: str) -> dict[str, tuple[str, datetime]]:
    """Every key with its ETag and last-modified time: what a run that writes nothing leaves unchanged."""
    client = s3.client()
    return {o["Key"]: (o["ETag"], o["LastModified"])
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}


@pytest.fixture
def planted(s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
            ) -> Iterator[tuple[str, object]]:
    bucket = f"daily-{request.node.name.replace('_', '-')[:40]}"
    s3_server.create_bucket(bucket)
    day = _plant(s3_server, bucket)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(daily.BUCKET_ENV, bucket)
    monkeypatch.setenv(daily.NAMESPACE_ENV, NAMESPACE)
    yield bucket, day
    s3_server.delete_bucket(bucket)


def _metrics(out: str) -> dict[str, object]:
    """The run's Embedded Metric Format line, checked for what CloudWatch needs to extract the metrics."""
    (line,) = [line for line in out.splitlines() if line.startswith('{"_aws"')]
    doc = json.loads(line)
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE and directive["Dimensions"] == [[daily.SYMBOL_DIMENSION]]
    for metric in directive["Metrics"]:
        assert isinstance(doc[metric["Name"]], int | float)
    return doc


def test_a_day_with_holes_ends_certified_and_a_second_run_writes_nothing(planted, s3_server, monkeypatch,
                                                                         capsys) -> None:
    bucket, day = planted
    client = s3_server.client()
    with HistoryServer({SYMBOL: day.market}) as rest:
        monkeypatch.setenv(daily.REST_URL_ENV, rest.url)
        done = daily.handler({"symbol": SYMBOL, "date": DAY.isoformat()}, None)
        assert done == {"symbol": SYMBOL, "date": DAY.isoformat(), "certified": True, "already_certified": False}
        first = _metrics(capsys.readouterr().out)
        assert (first["Certified"], first["HolesRemaining"], first["backfilled"]) == (1, 0, 49 + 3)

        manifest = client.get_object(Bucket=bucket, Key=curated_manifest_key(SYMBOL, DAY))
        doc = msgspec.json.decode(manifest["Body"].read())
        assert doc["complete"] is True
        body = client.get_object(Bucket=bucket, Key=doc["payload"]["key"])["Body"].read()
        assert igzip.decompress(body).splitlines() == day.market.day_lines(DAY)
        assert set(doc["tables"]) == {"trades", *(table_name(i) for i in ("1s", "1m", "1h"))}
        for table in doc["tables"].values():
            assert client.head_object(Bucket=bucket, Key=table["key"])["ContentLength"] == table["bytes"]

        before, calls = _objects(s3_server, bucket), rest.calls
        again = daily.handler({"symbol": SYMBOL, "date": DAY.isoformat()}, None)
        assert again["already_certified"] is True
        second = _metrics(capsys.readouterr().out)
        assert (second["Certified"], second["already_certified"]) == (1, True)
        # By hand, the same job: also nothing to do.
        env = {**os.environ, **s3_server.env()}
        cli = subprocess.run([sys.executable, "-m", "audit", "daily", "--bucket", bucket, "--symbol", SYMBOL,
                              "--date", DAY.isoformat(), "--rest-url", rest.url],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert cli.returncode == 0 and "already certified" in cli.stdout, cli.stdout + cli.stderr
        assert rest.calls == calls
    assert _objects(s3_server, bucket) == before


def test_a_day_binance_cannot_fill_reports_its_holes_and_fails(planted, s3_server, monkeypatch, capsys) -> None:
    bucket, day = planted
    with HistoryServer({SYMBOL: day.market}) as rest:
        monkeypatch.setenv(daily.REST_URL_ENV, rest.url)
        rest.fail_next(418, count=100, retry_after=120)  # this IP is banned for now
        with pytest.raises(daily.DayNotCertified, match=r"NOT CERTIFIED, 2 hole\(s\) left: .*banned"):
            daily.handler({"symbol": SYMBOL, "date": DAY.isoformat()}, None)
    doc = _metrics(capsys.readouterr().out)
    assert (doc["Certified"], doc["HolesRemaining"], doc["backfilled"], doc["Overdue"]) == (0, 2, 0, 1)
    assert not any(key.startswith(CURATED_PREFIX) for key in _objects(s3_server, bucket))


def test_the_job_runs_on_yesterday_unless_told_a_day() -> None:
    now = datetime(2026, 12, 1, 0, 10, tzinfo=UTC)
    assert daily.target_day({"symbol": SYMBOL}, now) == date(2026, 11, 30)
    assert daily.target_day({"symbol": SYMBOL, "date": "2026-11-02"}, now) == date(2026, 11, 2)


def test_a_day_is_overdue_from_03_00_utc_the_day_after_unless_certified() -> None:
    """What the stack's alarm watches: three hourly attempts (00:10, 01:10, 02:10) have had their chance."""
    failed = daily.DayRun(SYMBOL, date(2026, 11, 30), certified=False)
    assert not daily.overdue(failed, datetime(2026, 12, 1, 2, 59, 59, tzinfo=UTC))
    assert daily.overdue(failed, datetime(2026, 12, 1, 3, 0, tzinfo=UTC))
    assert not daily.overdue(daily.DayRun(SYMBOL, date(2026, 11, 30), certified=True),
                             datetime(2026, 12, 1, 3, 10, tzinfo=UTC))
    emf = daily.metrics(failed, NAMESPACE, datetime(2026, 12, 1, 3, 10, tzinfo=UTC))
    assert (emf["Overdue"], emf["Certified"], emf["_aws"]["Timestamp"]) == (1, 0, 1796094600000)


def test_a_day_nothing_corroborates_writes_no_curated_day(planted, s3_server, monkeypatch, capsys) -> None:
    """The job may not delete, so it writes a curated day only once it is certified: an uncertified one would be
    superseded later, and its objects would stay in the tables' folders."""
    bucket, day = planted
    with HistoryServer({SYMBOL: day.market}) as rest:
        monkeypatch.setenv(daily.REST_URL_ENV, rest.url)
        client = bucket_client(s3_server.endpoint, REGION)
        audit = check.run(client, bucket, SYMBOL, DAY, quiet=True)
        backfill.run(client, bucket, SYMBOL, audit.coverage, HistoricalTrades(rest.url),
                     now_ms=int(datetime.now(UTC).timestamp() * 1000))
        rest.fail_next(418, count=100, retry_after=120)  # banned before the ids one replica alone holds are asked
        with pytest.raises(daily.DayNotCertified, match=r"id\(s\) not corroborated, nothing written"):
            daily.handler({"symbol": SYMBOL, "date": DAY.isoformat()}, None)
    doc = _metrics(capsys.readouterr().out)
    assert (doc["Certified"], doc["HolesRemaining"]) == (0, 0) and doc["uncorroborated"] > 0
    assert not any(key.startswith(CURATED_PREFIX) for key in _objects(s3_server, bucket))


def test_the_function_imports_nothing_but_its_code_its_layer_and_the_standard_library() -> None:
    """`audit.daily` imports with nothing else importable than on Lambda: the function's asset (audit/,
    collector/), its layer and the standard library. Optional imports (numpy for pyarrow, certifi for botocore)
    then fail as they would there; the CLI's DuckDB and matplotlib are not needed."""
    with zipfile.ZipFile(layer_zip()) as layer:
        in_layer = {name.split("/")[1].removesuffix(".py") for name in layer.namelist()
                    if name.count("/") >= 1 and not name.split("/")[1].endswith((".dist-info", ".libs"))}
    allowed = sorted(in_layer | set(PACKAGES) | set(sys.stdlib_module_names))
    script = f"""
import importlib.abc, sys
ALLOWED = set({allowed!r})
class OnlyTheFunctionsModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top not in ALLOWED and not top.startswith("_sysconfigdata"):
            raise ModuleNotFoundError(f"No module named {{name!r}} on Lambda", name=name)
sys.meta_path.insert(0, OnlyTheFunctionsModules())
import audit.daily
print(" ".join(sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=code_dir(), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {name.split(".")[0] for name in done.stdout.split()}
    assert {"pyarrow", "boto3", "msgspec", "isal", "jsonschema"} <= imported
    assert not imported & {"duckdb", "matplotlib", "numpy"}


def test_the_layer_zip_depends_on_its_files_only_and_fits_lambda(tmp_path: Path) -> None:
    """Same files, same bytes, whatever their timestamps (a fresh clone builds the asset CDK already uploaded);
    and the layer unpacks under Lambda's 250 MB for a function and its layers (the code is a few hundred KB)."""
    folder = tmp_path / "python"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "a.py").write_text("A = 1\n")
    (folder / "b.so").write_bytes(b"\x7fELF")
    zips = []
    for mtime in (1_000_000_000, 1_700_000_000):
        for file in folder.rglob("*"):
            os.utime(file, (mtime, mtime))
        zips.append(tmp_path / f"{mtime}.zip")
        deterministic_zip(tmp_path, [folder], zips[-1])
    assert zips[0].read_bytes() == zips[1].read_bytes()
    with zipfile.ZipFile(zips[0]) as archive:
        assert archive.namelist() == ["python/b.so", "python/pkg/a.py"]
    with zipfile.ZipFile(layer_zip()) as layer:
        assert sum(info.file_size for info in layer.infolist()) < 230 * 2**20
        assert not [n for n in layer.namelist() if "/bin/" in n or n.endswith(".pyc")]
