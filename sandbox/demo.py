"""The whole pipeline on this machine: local feed + local S3 + the real collector, then a verification.

`make demo` runs it. With `COLLECTOR_WS_URL` set (e.g. wss://data-stream.binance.vision) the collector
reads that feed instead of the local one; S3 stays local either way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from audit import bucket as audit_bucket
from audit import check, compact, query, report
from collector.config import ALLOW_INSECURE_WS_ENV, SHUTDOWN_TIMEOUT
from sandbox.feed import FeedThread
from sandbox.local_s3 import BACKENDS, LocalS3, running_s3
from sandbox.verify import check_bucket, coverage

BUCKET = "tradecollector-demo"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the collector runs")
    parser.add_argument("--rate", type=float, default=50.0, help="local feed: trades per second per symbol")
    parser.add_argument("--s3", choices=BACKENDS, default=os.environ.get("SANDBOX_S3", "moto"),
                        help="local S3 server: moto's emulation or SeaweedFS, a real S3 server "
                        "(default: $SANDBOX_S3, else moto)")
    args = parser.parse_args()
    symbols = os.environ.get("COLLECTOR_SYMBOLS", "BTCUSDT,ETHUSDT")
    external_url = os.environ.get("COLLECTOR_WS_URL")

    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(running_s3(args.s3))
        s3.create_bucket(BUCKET)
        feed = None
        if external_url is None:
            feed_thread = stack.enter_context(FeedThread(rate=args.rate))
            feed = feed_thread.feed
        url = external_url or (feed.url if feed else "")
        spool = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="demo-spool-")))
        # Nothing of the user's own AWS setup (a profile, a session token) may reach the local endpoint.
        own = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env = {**own, **s3.env(), "COLLECTOR_BUCKET": BUCKET, "COLLECTOR_SYMBOLS": symbols,
               "COLLECTOR_WS_URL": url, "COLLECTOR_SPOOL_DIR": str(spool), "COLLECTOR_INSTANCE_ID": "demo"}
        if feed is not None:
            env[ALLOW_INSECURE_WS_ENV] = "1"  # the local feed is ws://; an external URL must be wss://
        print(f"demo: local S3 at {s3.endpoint}, feed {url}, symbols {symbols}, running {args.seconds:g} s",
              flush=True)
        collector = subprocess.Popen([sys.executable, "-m", "collector"], env=env)
        try:
            collector.wait(timeout=args.seconds)
            print(f"demo: the collector exited early with status {collector.returncode}", file=sys.stderr)
            return 1
        except subprocess.TimeoutExpired:
            collector.send_signal(signal.SIGTERM)
        status = collector.wait(timeout=SHUTDOWN_TIMEOUT + 30)
        left = sorted(p.name for p in spool.iterdir()) or "empty"
        print(f"demo: collector stopped with status {status}; spool left: {left}")

        landing = check_bucket(s3.client(), BUCKET)
        print(f"\n{'key':<110} {'records':>8} {'raw B':>9} {'gzip B':>8}")
        for obj in landing.objects:
            print(f"{obj.key:<110} {obj.records:>8} {obj.uncompressed_bytes:>9} {obj.compressed_bytes:>8}")
        total = sum(o.records for o in landing.objects)
        print(f"\n{len(landing.objects)} objects, {total} records, {len(landing.manifests)} manifests")
        print("sha256, sizes, record counts and first/last ids re-checked against every manifest: "
              + ("OK" if not landing.problems else f"{len(landing.problems)} PROBLEM(S)"))
        for problem in landing.problems:
            print("  " + problem)
        ok = status == 0 and not landing.problems
        for symbol in symbols.upper().split(","):
            gaps = sum(m["quality"]["trade_id_gaps"] for m in landing.manifests if m["source"]["symbol"] == symbol)
            line = f"{symbol}: {len(landing.lines.get(symbol, []))} lines, {gaps} trade-id gap(s) in manifests"
            if feed is not None:
                landed, sent, dupes = coverage(landing.ids(symbol), feed_thread.call(feed.sent_ids, symbol))
                line += f"; coverage {landed}/{sent} ids the feed sent ({dupes} duplicates)"
                ok = ok and landed == sent and sent > 0
            print(line)
        ok = _audit(s3, symbols) and ok
        ok = _last_minute_bars(s3, symbols.upper().split(",")) and ok
        print("demo: " + ("OK" if ok else "FAILED"))
        return 0 if ok else 1
    return 1


def _audit(s3: LocalS3, symbols: str) -> bool:
    """The operator's audit of today for each symbol. The demo holds a few seconds of the day, so the day's
    start and end are open; any hole between them, or a manifest or object that fails, is a failure."""
    client = s3.client(audit_bucket.CLIENT_CONFIG)  # the operator's credentials on this server
    ok = True
    for symbol in symbols.upper().split(","):
        print(f"\n$ python -m audit check --bucket {BUCKET} --symbol {symbol} --date today")
        audit = check.run(client, BUCKET, symbol, datetime.now(UTC).date(), quiet=True)
        print(report.table(audit))
        inner = [h for h in audit.coverage.holes if h.first is not None and h.last is not None]
        ok = ok and not inner and not audit.rejected and not audit.mismatches
    return ok


LAST_MINUTE_SQL = ("SELECT symbol, open_time, open, high, low, close, volume, number_of_trades FROM bars_1s "
                   "WHERE open_time >= (SELECT max(open_time) FROM bars_1s) - INTERVAL 59 SECOND "
                   "ORDER BY symbol, open_time")


def _last_minute_bars(s3: LocalS3, symbols: list[str]) -> bool:
    """Compacts today (the Parquet tables come with it) and asks DuckDB for the last minute's 1 s bars."""
    client = s3.client(audit_bucket.CLIENT_CONFIG)  # the operator's credentials on this server
    today = datetime.now(UTC).date()
    for symbol in symbols:
        print(f"\n$ python -m audit compact --bucket {BUCKET} --symbol {symbol} --date today")
        curated = compact.run(client, check.run(client, BUCKET, symbol, today, quiet=True), quiet=True)
        tables = curated.manifest["tables"]
        print(f"compact: {curated.manifest['payload']['record_count']} trades; Parquet: "
              + ", ".join(f"{name} {t['rows']} rows" for name, t in tables.items()))
    print(f'\n$ python -m audit query --bucket {BUCKET} --symbol {",".join(symbols)} --date today "{LAST_MINUTE_SQL}"')
    with tempfile.TemporaryDirectory(prefix="demo-cache-") as cache:
        selection = query.fetch(client, BUCKET, symbols, [today], Path(cache))
        relation = query.connect(selection).sql(LAST_MINUTE_SQL)
        rows = relation.fetchall()
        query.output(relation, "table", None, max_rows=len(rows) + 1)
    return bool(rows)


if __name__ == "__main__":
    sys.exit(main())
