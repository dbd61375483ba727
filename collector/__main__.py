"""`python -m collector`: read the configuration, log to stderr (journald keeps it), run until signalled."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

from collector import config
from collector.service import Service, wall_ms
from collector.telemetry import Telemetry

# Every trade allocates a few short-lived objects that the garbage collector tracks, though the hot path
# makes no reference cycles. At CPython's default threshold (700), 2 M flood messages (bench/) ran 4,043
# collections, 22 of them full scans of boto3's large heap: 7-15% of the CPU. With the start-up heap frozen
# and this threshold: 142 and 1. Young cyclic garbage waits for at most 50,000 allocations (a few MiB);
# what survives into the older generations waits for their (now rarer) collections.
GC_THRESHOLD = 50_000
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main() -> None:
    settings = config.parse_or_exit()
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level,
        format=LOG_FORMAT,
    )
    # botocore logs every credential lookup at INFO; our own lines say what matters.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    # The sealing and upload threads run Python code (boto3); with the default 5 ms switch interval the
    # event loop can wait that long for the GIL, which shows as loop lag. 1 ms keeps it responsive.
    sys.setswitchinterval(0.001)
    telemetry = Telemetry(settings, now_ms=wall_ms()) if settings.log_group else None
    if telemetry is not None:  # the same lines as journald's
        telemetry.handler.setFormatter(logging.Formatter(LOG_FORMAT))
    try:
        service = Service(settings, telemetry=telemetry)
    except OSError as exc:
        print(f"python -m collector: error: spool directory {settings.spool_dir}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    # What start-up built (boto3's service models above all) lives as long as the process: out of every scan,
    # once the garbage it left is gone.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD)
    if telemetry is None:
        raise SystemExit(asyncio.run(service.run()))
    telemetry.start()
    try:
        status = asyncio.run(service.run())
    finally:
        telemetry.close()
    raise SystemExit(status)


if __name__ == "__main__":
    main()
