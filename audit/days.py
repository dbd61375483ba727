"""A UTC day as the audit sees it: its bounds in Binance milliseconds and its partitions in S3."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

HOUR_MS = 3_600_000


def day_bounds_ms(day: date) -> tuple[int, int]:
    """[start, end) of `day` in epoch milliseconds."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return int(start.timestamp() * 1000), int((start + timedelta(days=1)).timestamp() * 1000)


def reaches_into(first_time: int, last_time: int, start_ms: int, end_ms: int) -> bool:
    """Whether trades timed `first_time..last_time` include some of the day [start_ms, end_ms)."""
    return last_time >= start_ms and first_time < end_ms


def hours_to_read(day: date) -> list[tuple[date, int]]:
    """The (date, hour) partitions whose files may hold trades of `day`: a file is partitioned by the time
    it was opened, so the last hour of the day before can hold the day's first trades and the first hour
    of the day after holds the trades that close it."""
    before, after = day - timedelta(days=1), day + timedelta(days=1)
    return [(before, 23), *((day, h) for h in range(24)), (after, 0)]


def clock(epoch_ms: int) -> str:
    """`2026-11-29 16:20:01.123` (UTC), for people."""
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{epoch_ms % 1000:03d}"
