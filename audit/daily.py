"""The daily job: one symbol's day audited, its holes backfilled, then compacted into the certified day with its
Parquet and bars, by the same functions as `python -m audit check`, `backfill` and `compact`.

It runs unattended (the stack's Lambda function, `handler` below, every hour shortly after the hour) and by hand
(`python -m audit daily`). A day whose curated manifest already certifies it is left alone: the run reads that
one manifest and writes nothing. The job writes a curated day only once it is certified: its role may delete
nothing, so it must never supersede objects of its own (a query engine reads every object in a table's folder).
A day with holes after the backfill, or with ids nothing corroborates, is reported and writes nothing under
curated/; the invocation fails, so that the next hourly attempt retries it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from botocore.exceptions import ClientError

from audit import backfill, bucket, check, compact, report
from audit.binance_rest import DEFAULT_MAX_WEIGHT, DEFAULT_URL, HistoricalTrades, rest_url
from audit.corroborate import DEFAULT_MODE, Mode
from audit.entries import MAX_OBJECT_BYTES
from audit.ranges import Hole
from collector.config import bucket_name, symbol_list
from collector.keys import curated_manifest_key

log = logging.getLogger("audit.daily")

# The Lambda function's environment (stacks/daily_job.py sets it).
BUCKET_ENV = "DAILY_BUCKET"
REST_URL_ENV = "DAILY_REST_URL"
NAMESPACE_ENV = "DAILY_METRICS_NAMESPACE"
API_KEY_ENV = "BINANCE_API_KEY"
# The metrics of one symbol-day, one Embedded Metric Format line per run: CloudWatch Logs turns the line into
# metrics, so the function needs no cloudwatch:PutMetricData.
CERTIFIED = "Certified"
HOLES_REMAINING = "HolesRemaining"
RUNTIME = "Runtime"
OVERDUE = "Overdue"  # what the stack's alarm watches
SYMBOL_DIMENSION = "Symbol"
# A day is overdue when it is not certified this long after it ended (03:00 UTC): three hourly attempts.
CERTIFIED_BY = timedelta(hours=3)


class DayNotCertified(Exception):
    """The invocation's failure: the day stays to be certified by a later attempt."""


@dataclass
class DayRun:
    symbol: str
    day: date
    certified: bool
    already_certified: bool = False  # nothing was done
    holes: list[Hole] = field(default_factory=list)  # left after the backfill
    backfilled: int = 0
    uncorroborated: int = 0  # ids no second source vouches for (the compaction's certificate)
    error: str | None = None  # what stopped the backfill
    seconds: float = 0.0

    def summary(self) -> str:
        if self.already_certified:
            return f"daily: {self.symbol} {self.day}: already certified, nothing to do"
        if self.certified:
            return (f"daily: {self.symbol} {self.day}: certified ({self.backfilled} trades backfilled) "
                    f"in {self.seconds:.1f} s")
        why = (f"{len(self.holes)} hole(s) left: " + "; ".join(report.describe_hole(h) for h in self.holes)
               if self.holes else f"{self.uncorroborated} id(s) not corroborated, nothing written")
        stopped = f"; backfill stopped: {self.error}" if self.error else ""
        return f"daily: {self.symbol} {self.day}: NOT CERTIFIED, {why}{stopped} (in {self.seconds:.1f} s)"


def is_certified(doc: dict[str, Any]) -> bool:
    """A curated manifest that certifies its day, with the Parquet tables beside the JSONL."""
    return doc.get("complete") is True and bool(doc.get("tables"))


def curated_manifest(s3: Any, name: str, symbol: str, day: date) -> dict[str, Any] | None:
    try:
        body = bucket.read(s3, name, curated_manifest_key(symbol, day), limit=MAX_OBJECT_BYTES)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return msgspec.json.decode(body)


def run_day(s3: Any, name: str, symbol: str, day: date, history: HistoricalTrades, *, now_ms: int,
            mode: Mode = DEFAULT_MODE, quiet: bool = True) -> DayRun:
    """Audit, backfill, audit again and compact one symbol's day, unless it is certified already."""
    started = time.monotonic()
    done = curated_manifest(s3, name, symbol, day)
    if done is not None and is_certified(done):
        return DayRun(symbol, day, certified=True, already_certified=True, seconds=time.monotonic() - started)
    audit = check.run(s3, name, symbol, day, quiet=quiet)
    run = DayRun(symbol, day, certified=False)
    if audit.coverage.holes:
        filled = backfill.run(s3, name, symbol, audit.coverage, history, now_ms=now_ms)
        run.backfilled = filled.fetched
        run.error = None if filled.error is None else str(filled.error)
        audit = check.run(s3, name, symbol, day, quiet=quiet)
    run.holes = list(audit.coverage.holes)
    if not run.holes:
        curated = compact.run(s3, audit, mode=mode, history=None if mode is Mode.NONE else history, quiet=quiet,
                              now_ms=now_ms, prune=False, certified_only=True)
        run.certified = curated.manifest["complete"]
        run.uncorroborated = sum(r["last"] - r["first"] + 1
                                 for r in curated.manifest["corroboration"]["uncorroborated"])
    run.seconds = time.monotonic() - started
    return run


def overdue(run: DayRun, now: datetime) -> bool:
    """Not certified, and `CERTIFIED_BY` has passed since the day ended."""
    ended = datetime(run.day.year, run.day.month, run.day.day, tzinfo=UTC) + timedelta(days=1)
    return not run.certified and now >= ended + CERTIFIED_BY


def metrics(run: DayRun, namespace: str, now: datetime) -> dict[str, Any]:
    """The run as one Embedded Metric Format document (one log line): its metrics, per symbol."""
    return {
        "_aws": {"Timestamp": int(now.timestamp() * 1000), "CloudWatchMetrics": [{
            "Namespace": namespace, "Dimensions": [[SYMBOL_DIMENSION]],
            "Metrics": [{"Name": CERTIFIED, "Unit": "None"}, {"Name": HOLES_REMAINING, "Unit": "Count"},
                        {"Name": RUNTIME, "Unit": "Seconds"}, {"Name": OVERDUE, "Unit": "None"}]}]},
        SYMBOL_DIMENSION: run.symbol,
        CERTIFIED: int(run.certified), HOLES_REMAINING: len(run.holes), RUNTIME: round(run.seconds, 3),
        OVERDUE: int(overdue(run, now)),
        "day": run.day.isoformat(), "already_certified": run.already_certified, "backfilled": run.backfilled,
        "uncorroborated": run.uncorroborated, "backfill_error": run.error,
    }


def target_day(event: dict[str, Any], now: datetime) -> date:
    """The event's `date`, else yesterday (UTC)."""
    given = event.get("date")
    return date.fromisoformat(given) if given else now.astimezone(UTC).date() - timedelta(days=1)


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """The Lambda function: `event` = {"symbol": "BTCUSDT"} (the schedule's input), optionally "date"."""
    logging.getLogger().setLevel(logging.INFO)
    now = datetime.now(UTC)
    (symbol,) = symbol_list(str(event["symbol"]))
    day = target_day(event, now)
    name = bucket_name(os.environ[BUCKET_ENV])
    history = HistoricalTrades(rest_url(os.environ.get(REST_URL_ENV, DEFAULT_URL)),
                               api_key=os.environ.get(API_KEY_ENV) or None, max_weight_per_minute=DEFAULT_MAX_WEIGHT)
    run = run_day(bucket.client(), name, symbol, day, history, now_ms=int(now.timestamp() * 1000))
    # print, not logging: the EMF document must be the whole log line.
    print(msgspec.json.encode(metrics(run, os.environ[NAMESPACE_ENV], datetime.now(UTC))).decode(), flush=True)
    log.info("%s", run.summary())
    if not run.certified:
        raise DayNotCertified(run.summary())
    return {"symbol": symbol, "date": day.isoformat(), "certified": True, "already_certified": run.already_certified}
