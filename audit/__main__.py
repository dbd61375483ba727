"""`python -m audit`: completeness audit, backfill and compaction of one symbol's day; SQL over the trades;
the fleet's status.

Exit status: 0 when the day is complete (query: when the query ran; status: when all is well), 1 when holes
remain, objects do not match their manifests or compact cannot certify every line (status: something is
alarming), 2 for bad input, failing SQL, or when the bucket, CloudWatch or the REST history cannot be read.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import duckdb
import msgspec
from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError

from audit import backfill, binance_rest, bucket, check, compact, daily, parquet_day, plot, query, report, status
from audit.corroborate import DEFAULT_MODE, Mode
from collector.config import bucket_name, symbol_list

COMMANDS = ("check", "backfill", "compact", "daily", "query", "status")
# The stack's name in stacks/application.py (a test holds them together): the metrics' namespace and the prefix
# of the alarms' names.
STACK_NAME = "BinanceTradeCollector"


def _symbol(text: str) -> str:
    symbols = symbol_list(text)
    if len(symbols) != 1:
        raise ValueError("name one symbol")
    return symbols[0]


def _day(text: str) -> date:
    return date.fromisoformat(text)


def _max_weight(text: str) -> int:
    weight = int(text)
    if not binance_rest.CALL_WEIGHT <= weight <= binance_rest.IP_WEIGHT_PER_MINUTE:
        raise ValueError(f"must be {binance_rest.CALL_WEIGHT}..{binance_rest.IP_WEIGHT_PER_MINUTE} "
                         "(one call's weight up to the IP's limit per minute)")
    return weight


def _as_argparse(fn: object) -> object:
    """argparse shows ValueError's own words only for a named type; this keeps the contract's messages."""

    def convert(text: str) -> object:
        try:
            return fn(text)  # type: ignore[operator]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m audit", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", metavar="{check,backfill,compact,daily,query,status}")
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bucket", required=True, type=_as_argparse(bucket_name), help="the collector's bucket")
    common.add_argument("--symbol", default="BTCUSDT", type=_as_argparse(_symbol), help="default: %(default)s")
    common.add_argument("--date", default=yesterday, type=_as_argparse(_day),
                        help="UTC day, YYYY-MM-DD (default: yesterday, %(default)s)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("check", parents=[common], help="which trade ids each replica holds, and the holes (default)",
                       description="From manifests alone: per instance the trade-id ranges and uptime, their "
                       "union, every range no replica holds, the duplicates ratio, manifests that fail the "
                       "schema. Data objects are read only where a manifest shows ids missing inside its file.")
    c.add_argument("--verify", action="store_true",
                   help="also download every data object and re-check sha256, record count and first/last ids")
    c.add_argument("--json", action="store_true", help="print JSON instead of the table")
    c.add_argument("--plot", type=Path, metavar="FILE.png", help="write a timeline of the coverage")

    rest = argparse.ArgumentParser(add_help=False)
    rest.add_argument("--rest-url", default=binance_rest.DEFAULT_URL, type=_as_argparse(binance_rest.rest_url),
                      help="Binance REST base URL (default: %(default)s)")
    rest.add_argument("--max-weight", type=_as_argparse(_max_weight), default=binance_rest.DEFAULT_MAX_WEIGHT,
                      help=f"request weight to use per minute, of Binance's {binance_rest.IP_WEIGHT_PER_MINUTE} per "
                      "IP (default: %(default)s)")

    b = sub.add_parser("backfill", parents=[common, rest],
                       help="fetch the ids no replica holds from Binance's REST history",
                       description="Audits the day, fetches every hole from GET /api/v3/historicalTrades (weight 25 "
                       "a call, kept under the IP's budget) and stores it under backfill/ as ordinary data "
                       "objects and manifests (source.instance_id = backfill), then audits again.")
    b.add_argument("--dry-run", action="store_true", help="say what would be fetched, fetch nothing")

    k = sub.add_parser("compact", parents=[common, rest], help="write one deduplicated, id-ordered day to curated/",
                       description="Merges every replica and the backfill into curated/exchange=binance/symbol=S/"
                       "date=D/trades-<sha16>.jsonl.gz (lines byte-identical to the raw ones) and a manifest.json "
                       "that certifies complete: true (every id present, each held identically by two replicas or "
                       "confirmed by the exchange) or lists the holes and the uncorroborated ids. Damaged objects "
                       "are left out and named. Safe to re-run.")
    k.add_argument("--corroborate", choices=[str(mode) for mode in Mode], default=str(DEFAULT_MODE),
                   help="which ids to confirm with historicalTrades: none; disputed (copies differ); single (those "
                   "and ids only one replica holds); all (default: %(default)s)")

    d = sub.add_parser("daily", parents=[common, rest], help="the scheduled job by hand: check, backfill, compact",
                       description="What the stack's daily job does for one symbol and day: leaves a day already "
                       "certified alone (writes nothing); otherwise audits it, backfills its holes, audits again "
                       "and, if no hole is left, compacts it (JSONL, Parquet and bars), writing the curated day only "
                       "if it is certified and deleting nothing. Exit status 0 when the day ends certified.")
    d.add_argument("--corroborate", choices=[str(mode) for mode in Mode], default=str(DEFAULT_MODE),
                   help="as for compact (default: %(default)s)")

    q = sub.add_parser("query", help="SQL over the trades and bars with DuckDB, on this machine",
                       description="Fetches the curated days' Parquet tables (or, for days not yet compacted, the "
                       "raw objects) of the symbols and days given into a local cache, then runs SQL over the views "
                       "trades, raw_trades, bars_1s, bars_1m and bars_1h (columns: docs/data.md).")
    q.add_argument("sql", help="the query, in DuckDB's SQL")
    q.add_argument("--bucket", required=True, type=_as_argparse(bucket_name), help="the collector's bucket")
    q.add_argument("--symbol", default=["BTCUSDT"], type=_as_argparse(symbol_list),
                   help="one or more, comma-separated (default: BTCUSDT)")
    q.add_argument("--date", type=_as_argparse(_day), help=f"one UTC day (default: yesterday, {yesterday})")
    q.add_argument("--from", dest="first", type=_as_argparse(_day), help="first day of a range")
    q.add_argument("--to", dest="last", type=_as_argparse(_day), help="last day of a range (default: --from)")
    q.add_argument("--format", choices=query.FORMATS, default="table", help="default: %(default)s")
    q.add_argument("--output", type=Path, metavar="FILE", help="write the result here (needed for parquet)")
    q.add_argument("--max-rows", type=int, default=100, help="rows a table shows (default: %(default)s)")
    q.add_argument("--cache", type=Path, default=query.default_cache(), help="local cache (default: %(default)s)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")

    st = sub.add_parser("status", help="the fleet's health now: alarms, last object and backlog per instance",
                        description="From CloudWatch (the stack's alarms, the collectors' backlog metrics) and the "
                        "bucket (each instance's newest object in the last hours, the newest manifest per symbol). "
                        "Exit status 1 when an alarm is on or an instance shipped nothing for 3 minutes.")
    st.add_argument("--bucket", required=True, type=_as_argparse(bucket_name), help="the collector's bucket")
    st.add_argument("--stack", default=STACK_NAME, help="the stack's name (default: %(default)s)")
    st.add_argument("--symbols", type=_as_argparse(symbol_list),
                    help="comma-separated symbols (default: every symbol in the bucket)")
    return parser


def _status(args: argparse.Namespace) -> int:
    found = status.gather(cloudwatch=boto3.client("cloudwatch"), s3=bucket.client(), bucket=args.bucket,
                          stack=args.stack, now=status.utc_now(), symbols=args.symbols)
    print(status.table(found))
    return 1 if found.alarming else 0


def _query(args: argparse.Namespace, s3: Any) -> int:
    if args.date is not None and args.first is not None:
        print("audit: give --date or --from/--to, not both", file=sys.stderr)
        return 2
    first = args.first or args.date or datetime.now(UTC).date() - timedelta(days=1)
    try:
        days = query.days_between(first, args.last or first)
    except ValueError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    try:
        selection = query.fetch(s3, args.bucket, args.symbol, days, args.cache / args.bucket, quiet=args.quiet)
    except query.DamagedObject as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    print(f"query: {selection.fetched} object(s) fetched, {selection.cached} from the cache; "
          f"{len(selection.raw_days)} symbol-day(s) not compacted read from raw objects", file=sys.stderr)
    try:
        query.output(query.connect(selection).sql(args.sql), args.format, args.output, max_rows=args.max_rows)
    except (duckdb.Error, ValueError) as exc:
        print(f"audit: query failed: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_backfill(result: backfill.Backfill) -> None:
    for fill in result.fills:
        what = report.describe_hole(fill.hole)
        if fill.skipped:
            print(f"backfill: {what}: skipped, {fill.skipped}")
        else:
            print(f"backfill: {what}: {fill.fetched} trades fetched into {len(fill.keys)} object(s)")
    print(f"backfill: {result.fetched} trades, {result.calls} REST calls ({result.weight} weight) "
          f"in {result.seconds:.1f} s")


def _run(args: argparse.Namespace, s3: Any) -> int:
    if args.command == "query":
        return _query(args, s3)
    if args.command == "daily":
        run = daily.run_day(s3, args.bucket, args.symbol, args.date, _history(args), now_ms=int(time.time() * 1000),
                            mode=Mode(args.corroborate), quiet=args.quiet)
        print(run.summary())
        return 0 if run.certified else 1
    audit = check.run(s3, args.bucket, args.symbol, args.date, verify=getattr(args, "verify", False),
                      quiet=args.quiet)
    if args.command == "check":
        if args.json:
            sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(report.as_json(audit)), indent=2) + b"\n")
        else:
            print(report.table(audit))
        if args.plot:
            try:
                plot.save(audit, args.plot)
            except OSError as exc:
                print(f"audit: cannot write the plot: {exc}", file=sys.stderr)
                return 2
        return 0 if audit.complete and not audit.mismatches else 1
    if args.command == "backfill":
        if args.dry_run or not audit.coverage.holes:
            print(report.table(audit))
            if args.dry_run and audit.coverage.holes:
                calls = sum(-(-(h.ids or 0) // binance_rest.PAGE_LIMIT) for h in audit.coverage.holes)
                print(f"dry run: the holes above would take at least {calls} REST call(s) "
                      f"({calls * binance_rest.CALL_WEIGHT} weight), open edges more; nothing fetched")
            return 0 if audit.complete else 1
        result = backfill.run(s3, args.bucket, args.symbol, audit.coverage, _history(args),
                              now_ms=int(time.time() * 1000))
        _print_backfill(result)
        if result.error is not None:
            print(f"audit: backfill stopped: {result.error}", file=sys.stderr)
            return 2
        audit = check.run(s3, args.bucket, args.symbol, args.date, quiet=args.quiet)
        print(report.table(audit))
        return 0 if audit.complete else 1
    mode = Mode(args.corroborate)
    curated = compact.run(s3, audit, mode=mode, history=None if mode is Mode.NONE else _history(args),
                          quiet=args.quiet)
    print(report.curated(curated.manifest, curated.seconds))
    return 0 if curated.manifest["complete"] else 1


def _history(args: argparse.Namespace) -> binance_rest.HistoricalTrades:
    return binance_rest.HistoricalTrades(args.rest_url, api_key=os.environ.get("BINANCE_API_KEY") or None,
                                         max_weight_per_minute=args.max_weight)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] not in (*COMMANDS, "-h", "--help"):
        args_list.insert(0, "check")  # `python -m audit --bucket B ...` is the audit itself
    args = _parser().parse_args(args_list)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        if args.command == "status":
            return _status(args)
        return _run(args, bucket.client())
    except (BotoCoreError, ClientError, Boto3Error) as exc:
        print(f"audit: cannot use s3://{args.bucket}{' or CloudWatch' if args.command == 'status' else ''}: {exc}",
              file=sys.stderr)
        return 2
    except parquet_day.NotExact as exc:
        print(f"audit: cannot compact: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
