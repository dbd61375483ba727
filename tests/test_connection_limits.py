"""Binance's per-IP connection limit, end to end: the collector as a subprocess against the local feed, which
records every handshake with its time and can answer 429 or 418 with Retry-After over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import userdata
from collector.connect_budget import startup_seconds
from sandbox.feed import FeedThread
from tests.conftest import landed, wait_until

pytestmark = pytest.mark.e2e


def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    ends = 0
    most = 0
    for start, t in enumerate(times):  # two pointers: times[start..ends) lie in [t, t + window]
        while ends < len(times) and times[ends] <= t + window:
            ends += 1
        most = max(most, ends - start)
    return most


def symbols(count: int) -> list[str]:
    return [f"S{n:03d}USDT" for n in range(count)]


def test_a_start_up_of_320_symbols_keeps_every_window_within_the_budget(s3, start_collector):
    budget, window, names = 100, 2.0, symbols(320)
    with FeedThread(rate=0) as feed:
        collector = start_collector(ws_url=feed.feed.url, symbols=",".join(names), connect_budget=budget,
                                    connect_window=window, rotate_seconds=60)
        wait_until(lambda: feed.feed.connection_count() == len(names), 90, "every symbol to connect")
        log = collector.log
        descriptors = len(list(Path(f"/proc/{collector.proc.pid}/fd").iterdir()))
        assert collector.terminate() == 0
        handshakes = list(feed.feed.handshake_log)
    assert sorted(path for _, path, _ in handshakes) == sorted(f"/ws/{s.lower()}@trade" for s in names)
    times = [t for t, _, _ in handshakes]
    # The feed stamps a handshake a little after the collector granted it, and not always equally late:
    # windows are checked 10% shorter so that jitter on a loaded machine cannot fail a correct budget.
    assert most_in_window(times, 0.9 * window) <= budget
    expected = startup_seconds(len(names), budget, window)
    assert max(times) - min(times) >= 0.9 * expected, "paced, not all at once"
    assert f"connection budget: {budget} attempts per 2 s" in log
    assert "first connect); the next in" in log, "the operator sees what waits"
    # One socket per symbol here (no trades, so no spool files): inside what the unit allows for this many.
    assert len(names) <= descriptors <= userdata.FDS_PER_SYMBOL * len(names) + userdata.FDS_BASE


def test_a_418_ban_is_waited_out_logged_once_and_loses_nothing(feed, s3, start_collector, manifest_schema):
    names = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    collector = start_collector(ws_url=feed.feed.url, symbols=",".join(names), reconnect_delay=0.1)
    collector.wait_for_log("connected /ws", count=len(names))
    time.sleep(1)
    ban_seconds = 3
    ban_ends = time.monotonic() + ban_seconds
    feed.call(feed.feed.ban, ban_seconds)
    feed.call(feed.feed.drop_connections)
    collector.wait_for_log("HTTP 418 from Binance")
    collector.wait_for_log("the ban from Binance has passed: connecting again", timeout=ban_seconds + 10)
    collector.wait_for_log("connected /ws", count=2 * len(names), timeout=10)
    time.sleep(1)
    assert collector.terminate() == 0
    assert collector.log.count("HTTP 418 from Binance") == 1
    assert "CRITICAL collector.budget: HTTP 418 from Binance: this IP is banned" in collector.log
    refused = [t for t, _, status in feed.feed.handshake_log if status == 418]
    retried = [t for t, _, status in feed.feed.handshake_log if status == 101 and t > refused[0]]
    # Only attempts already on their way when the first 418 came; then nothing until the ban was over.
    assert len(refused) <= len(names) and max(refused) - refused[0] < 0.5
    assert min(retried) >= ban_ends - 0.05
    landed(s3, feed, names, manifest_schema)


def test_429s_pause_every_connect_for_retry_after_and_lose_nothing(feed, s3, start_collector, manifest_schema):
    names = symbols(12)
    feed.call(feed.feed.throttle, 0.3, 1)
    # A shortened window keeps the slowed pace after each 429 to a fraction of a second.
    collector = start_collector(ws_url=feed.feed.url, symbols=",".join(names), connect_window=10)
    wait_until(lambda: feed.feed.connection_count() == len(names), 60, "every symbol to connect")
    time.sleep(1)
    assert collector.terminate() == 0
    log = feed.feed.handshake_log
    refused = [t for t, _, status in log if status == 429]
    assert refused, "the feed answered some handshakes with 429"
    assert "HTTP 429 from Binance: too many connection attempts" in collector.log
    for t429 in refused:
        # A 429 holds back every connect (not only its symbol's) until Retry-After (1 s) has passed.
        early = [t for t, _, _ in log if t429 + 0.3 < t < t429 + 0.9]
        assert early == [], f"{len(early)} handshake(s) inside a 429's Retry-After"
    landed(s3, feed, tuple(names), manifest_schema)


def test_a_collector_restarting_in_a_loop_goes_on_with_its_budget(s3, start_collector, tmp_path):
    """systemd restarts a failed collector within seconds: each start must not bring a fresh burst."""
    budget, window, names = 50, 30.0, symbols(20)
    burst, pace = 10, window / 40
    with FeedThread(rate=0) as feed:
        for _ in range(6):
            collector = start_collector(ws_url=feed.feed.url, symbols=",".join(names), connect_budget=budget,
                                        connect_window=window, connect_state=tmp_path / "connect-budget.json")
            collector.wait_for_log("connected /ws")
            time.sleep(0.3)
            collector.kill()
        times = [t for t, _, _ in feed.feed.handshake_log]
    assert most_in_window(times, window) <= budget
    # One burst for all six runs, then the pace: a fresh budget per start would have made 60 attempts.
    assert len(times) <= burst + (max(times) - min(times)) / pace + 2, len(times)


def test_during_a_ban_open_connections_keep_delivering_and_handovers_wait(feed, s3, start_collector, manifest_schema):
    """A handover that meets a 418 keeps its old connection, waits for the ban to pass, then hands over."""
    collector = start_collector(ws_url=feed.feed.url, connection_lifetime=4)
    collector.wait_for_log("connected /ws")
    ban_ends = time.monotonic() + 5
    feed.call(feed.feed.ban, 5)
    collector.wait_for_log("HTTP 418 from Binance", timeout=10)
    collector.wait_for_log("handover done", timeout=20)
    time.sleep(1)
    assert collector.terminate() == 0
    ids = landed(s3, feed, ("BTCUSDT",), manifest_schema).ids("BTCUSDT")
    assert ids == list(range(ids[0], ids[-1] + 1)), "no gap: the old connection delivered through the ban"
    banned = [t for t, _, status in feed.feed.handshake_log if status == 418]
    after = [t for t, _, status in feed.feed.handshake_log if status == 101 and t > banned[0]]
    # Retry-After is the ban's remaining time in whole seconds, rounded up: no attempt before the ban ends.
    assert len(banned) == 1 and min(after) >= ban_ends - 0.05
