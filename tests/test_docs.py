"""Figures the docs state about connections, checked against the code that makes them true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import userdata
from collector import config
from collector.backoff import RECONNECT_CAP_SECONDS, Backoff
from collector.connect_budget import burst, pace_seconds, startup_seconds
from collector.handover import HANDOVER_SPREAD_SECONDS

DOCS = Path(__file__).resolve().parent.parent / "docs"
OPERATIONS = " ".join((DOCS / "operations.md").read_text().split())
GUARANTEES = " ".join((DOCS / "guarantees.md").read_text().split())
MINUS, TIMES = "\N{MINUS SIGN}", "\N{MULTIPLICATION SIGN}"


class _Jitter:
    """Backoff's random source pinned to one point of each jitter range."""

    def __init__(self, at: float) -> None:
        self.at = at

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.at


def _flapping_attempts(at: float) -> int:
    """Attempts in the first 5 minutes of a link that fails every time (the densest window)."""
    backoff = Backoff(first=config.RECONNECT_DELAY, cap=RECONNECT_CAP_SECONDS, rng=_Jitter(at))  # type: ignore[arg-type]
    attempts, t = 0, 0.0
    while t <= 300:
        attempts, t = attempts + 1, t + backoff.next()
    return attempts


def test_a_flapping_links_attempts_per_five_minutes():
    assert f"makes {_flapping_attempts(1.0)} to {_flapping_attempts(0.0)} attempts per 5 minutes" in GUARANTEES


def test_the_connection_budget_settings_are_documented_with_their_defaults():
    assert f"| `COLLECTOR_CONNECT_BUDGET` | `--connect-budget` | `{config.CONNECT_BUDGET}` |" in OPERATIONS
    assert f"| `COLLECTOR_CONNECT_WINDOW` | `--connect-window` | `{config.CONNECT_WINDOW:g}` |" in OPERATIONS
    assert f"2 to {config.BINANCE_CONNECT_LIMIT} (Binance allows {config.BINANCE_CONNECT_LIMIT} per IP)" in OPERATIONS
    assert f"`$RUNTIME_DIRECTORY/{config.CONNECT_STATE_FILE}`" in OPERATIONS
    assert f"no 5-minute window holds more than {config.CONNECT_BUDGET} attempts" in GUARANTEES


def test_the_pace_and_burst_are_the_codes():
    limit, window = config.CONNECT_BUDGET, config.CONNECT_WINDOW
    assert f"A fifth of it ({burst(limit)}) may go at once" in OPERATIONS
    assert f"one every {pace_seconds(limit, window):g} s ({window:g} s / {limit - burst(limit)})" in OPERATIONS
    pace = pace_seconds(limit, window)
    assert f"N symbols are all connected after (N {MINUS} {burst(limit)}) {TIMES} {pace:g} s" in OPERATIONS


@pytest.mark.parametrize("symbols", [100, 250, 500])
def test_the_start_up_table_is_the_budgets(symbols):
    seconds = startup_seconds(symbols, config.CONNECT_BUDGET, config.CONNECT_WINDOW)
    assert re.search(rf"\| {symbols} \| {seconds:.0f} s[ |(]", OPERATIONS), (symbols, seconds)
    assert startup_seconds(burst(config.CONNECT_BUDGET), config.CONNECT_BUDGET, config.CONNECT_WINDOW) == 0
    assert f"| up to {burst(config.CONNECT_BUDGET)} | at once |" in OPERATIONS


def test_the_largest_symbol_list_and_the_descriptor_limit():
    assert f"One instance serves at most **{config.MAX_SYMBOLS}** symbols" in OPERATIONS
    assert f"`LimitNOFILE={userdata.LIMIT_NOFILE}`" in OPERATIONS
    assert f"{userdata.FDS_PER_SYMBOL} {TIMES} {config.MAX_SYMBOLS} + {userdata.FDS_BASE}" in OPERATIONS


def test_the_planned_handover_hour():
    latest = config.CONNECTION_LIFETIME / 3600
    earliest = (config.CONNECTION_LIFETIME - HANDOVER_SPREAD_SECONDS) / 3600
    assert f"between {earliest:g} h and {latest:g} h" in OPERATIONS
    assert f"between {earliest:g} h and {latest:g} h of a connection's life" in GUARANTEES
