"""`python -m collector`: read the configuration, log to stderr (journald keeps it), run until signalled."""

from __future__ import annotations

import asyncio
import logging
import sys

from collector import config
from collector.service import Service


def main() -> None:
    settings = config.parse_or_exit()
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # botocore logs every credential lookup at INFO; our own lines say what matters.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    # The sealing and upload threads run Python code (boto3); with the default 5 ms switch interval the
    # event loop can wait that long for the GIL, which shows as loop lag. 1 ms keeps it responsive.
    sys.setswitchinterval(0.001)
    try:
        service = Service(settings)
    except OSError as exc:
        print(f"python -m collector: error: spool directory {settings.spool_dir}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(asyncio.run(service.run()))


if __name__ == "__main__":
    main()
