"""`make bench` / `python -m bench.run`: the collector next to the physical limit, in one run (~2.5 min).

1. Ceiling: a bare websockets client against a flooding feed (its own process), compression none and deflate.
2. Collector: `python -m collector`, full pipeline to the local S3, against the same flood, both ways.
3. Steady load: 3,000 msgs/s in 50 ms bursts, 1 symbol and 3 symbols; bare client and collector together.
4. gzip codecs and levels (zlib 1, 6, 9; ISA-L 0-3) on a real 2 MiB JSONL file.
Prints the tables and the targets (PASS/MISS/n/a) and writes bench/results.json. Everything runs on
127.0.0.1; every process it starts is stopped by its PID before it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import compression, flood, steady
from bench.procs import Child
from bench.procstat import machine
from bench.report import render, targets
from collector.config import ROTATE_SECONDS
from sandbox.local_s3 import running_s3

RESULTS = Path(__file__).resolve().parent / "results.json"


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--flood-seconds", type=float, default=8.0, help="per flood run (4 runs)")
    # 45 s keeps the whole benchmark under 3 minutes, spans 9 rotations, and halves the run-to-run spread
    # that a 25 s window showed on a shared machine.
    parser.add_argument("--steady-seconds", type=float, default=45.0, help="measured window per steady run (2 runs)")
    parser.add_argument("--rate", type=float, default=3000.0, help="steady load, msgs/s per symbol")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "ceiling": [], "collector_flood": [], "steady": []}

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {text}", flush=True)

    # First, while nothing else runs: zlib timings are the most sensitive to a busy second core.
    say("gzip codecs and levels on a 2 MiB JSONL file")
    results["compression"] = compression.measure(args.rate)
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(running_s3())
        feed = Child("flood-feed", ["bench.feed_proc", "--flood"])
        stack.callback(feed.cleanup)
        url = f"ws://127.0.0.1:{feed.wait_for('PORT ')[0].split()[1]}"
        for mode in ("none", "deflate"):
            say(f"ceiling: bare websockets client, flood, compression {mode}")
            results["ceiling"].append(flood.ceiling(url, mode, args.flood_seconds))
        for mode in ("none", "deflate"):
            say(f"collector: full pipeline to local S3, flood, compression {mode}")
            results["collector_flood"].append(flood.collector(url, s3, mode, args.flood_seconds))
        feed.cleanup()
        for symbols in (["BTCUSDT"], ["BTCUSDT", "ETHUSDT", "BNBUSDT"]):
            say(f"steady: {len(symbols)} x {args.rate:g} msgs/s, {args.steady_seconds:g} s, bare and collector")
            results["steady"].append(steady.run(s3, symbols, args.rate, args.steady_seconds, ROTATE_SECONDS))
    results["run_seconds"] = time.monotonic() - started
    checked = targets(results)
    results["targets"] = [asdict(t) | {"result": t.verdict} for t in checked]
    print()
    print(render(results, checked))
    args.out.write_text(json.dumps(_clean(results), indent=2) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
