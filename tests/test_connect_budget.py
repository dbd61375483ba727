"""The connection budget as a pure policy: the rolling limit, pacing, order, 429 and 418."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.connect_budget import (
    RETRY_AFTER_DEFAULT_SECONDS,
    ConnectBudget,
    Kind,
    burst,
    pace_seconds,
    retry_after_seconds,
    startup_seconds,
)


def drain(budget: ConnectBudget, now: float, until: float = math.inf) -> list[tuple[float, object]]:
    """Poll as the gate's timer does, from `now` until nothing waits (or `until`); (time, key) per grant."""
    out: list[tuple[float, object]] = []
    at: float | None = now
    while at is not None and at <= until:
        grants = budget.poll(at)
        out += [(at, key) for key in grants.keys]
        at = grants.next_at
    return out


def max_in_window(times: list[float], window: float) -> int:
    """The most grants any window of `window` seconds holds, both ends included."""
    times = sorted(times)
    return max((sum(1 for t in times if start <= t <= start + window) for start in times), default=0)


def test_start_up_bursts_a_fifth_then_paces_at_the_rest_of_the_budget():
    budget = ConnectBudget(limit=250, window=300)
    for n in range(500):
        budget.request(n, Kind.FIRST, 0.0)
    grants = drain(budget, 0.0)
    times = [t for t, _ in grants]
    assert [key for _, key in grants] == list(range(500)), "first come, first served within a class"
    assert times[:50] == [0.0] * 50 and times[50] == pytest.approx(1.5) and times[51] == pytest.approx(3.0)
    assert times[-1] == pytest.approx(startup_seconds(500, 250, 300)) == pytest.approx(675)
    assert max_in_window(times, 300) <= 250


def test_the_figures_the_log_and_docs_use():
    assert (burst(250), pace_seconds(250, 300)) == (50, 1.5)
    assert startup_seconds(50, 250, 300) == 0
    assert startup_seconds(1, 2, 60) == 0 and startup_seconds(3, 2, 60) == 120


def test_a_dead_link_goes_before_a_handover_before_a_first_connect():
    budget = ConnectBudget(limit=5, window=10)
    assert drain(budget, 0.0) == []
    for n in range(burst(5)):  # spend the burst
        budget.request(("spent", n), Kind.FIRST, 0.0)
    drain(budget, 0.0, until=0.0)
    budget.request("first", Kind.FIRST, 0.1)
    budget.request("handover", Kind.HANDOVER, 0.2)
    budget.request("reconnect", Kind.RECONNECT, 0.3)
    assert [key for _, key in drain(budget, 0.3)] == ["reconnect", "handover", "first"]


@pytest.mark.parametrize(("reconnect_at", "order"), [
    (15.0, ["reconnect", "first connect"]),
    (25.0, ["first connect", "reconnect"]),  # the first connect has waited more than two windows longer
])
def test_a_request_that_waited_windows_longer_goes_first(reconnect_at, order):
    budget = ConnectBudget(limit=2, window=10)
    budget.banned(0.0, 30.0)
    budget.request("first connect", Kind.FIRST, 0.0)
    budget.request("reconnect", Kind.RECONNECT, reconnect_at)
    assert [key for _, key in drain(budget, reconnect_at)] == order


def test_a_withdrawn_or_repeated_request_is_granted_at_most_once():
    budget = ConnectBudget(limit=10, window=10)
    budget.request("a", Kind.FIRST, 0.0)
    budget.request("a", Kind.RECONNECT, 0.0)
    budget.request("b", Kind.FIRST, 0.0)
    budget.withdraw("b")
    assert [key for _, key in drain(budget, 0.0)] == ["a"]
    assert budget.waiting().total() == 0


def test_429_pauses_everything_for_retry_after_then_slows_the_pace():
    budget = ConnectBudget(limit=250, window=300)
    assert budget.too_many(0.0, 10.0)
    assert not budget.too_many(0.5, 10.0), "more 429s of attempts in flight: the same pause"
    for n in range(5):
        budget.request(n, Kind.RECONNECT, 1.0)
    times = [t for t, _ in drain(budget, 1.0)]
    assert times[0] == pytest.approx(10.5), "no attempt before Retry-After, and no burst after it"
    assert times[1] - times[0] == pytest.approx(2 * pace_seconds(250, 300))
    # a window without a 429 restores the pace
    budget.request("later", Kind.RECONNECT, 1000.0)
    budget.request("later still", Kind.RECONNECT, 1000.0)
    later = [t for t, _ in drain(budget, 1000.0)]
    assert later == [1000.0, 1000.0]


def test_a_418_stops_every_attempt_until_the_ban_has_passed_and_reports_it_once():
    budget = ConnectBudget(limit=250, window=300)
    assert budget.banned(0.0, 600.0)
    assert not budget.banned(0.2, 599.0)
    budget.request("x", Kind.RECONNECT, 1.0)
    assert drain(budget, 1.0, until=599.9) == []
    assert drain(budget, 599.9) == [(600.0, "x")]
    assert budget.banned(700.0, 5.0), "a later ban is a new one"


def test_a_restarted_collector_goes_on_with_the_previous_runs_pace_and_ban():
    first = ConnectBudget(limit=250, window=300)
    for n in range(60):
        first.request(n, Kind.FIRST, 0.0)
    assert len(first.poll(0.0).keys) == 50
    first.banned(1.0, 100.0)
    restarted = ConnectBudget(limit=250, window=300)
    restarted.restore(first.state().shifted(5000.0))  # saved on the wall clock, read on a new loop clock
    for n in range(60):
        restarted.request(n, Kind.FIRST, 5002.0)
    assert restarted.poll(5002.0).keys == []
    assert [t for t, _ in drain(restarted, 5002.0)][:2] == [5101.0, 5101.0 + pace_seconds(250, 300)]


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), ("0", 0.0), (" 12 ", 12.0), (None, RETRY_AFTER_DEFAULT_SECONDS), ("-1", RETRY_AFTER_DEFAULT_SECONDS),
    ("Wed, 21 Oct 2015 07:28:00 GMT", RETRY_AFTER_DEFAULT_SECONDS), ("inf", RETRY_AFTER_DEFAULT_SECONDS),
    ("nan", RETRY_AFTER_DEFAULT_SECONDS),
])
def test_retry_after_is_read_as_seconds(value, seconds):
    assert retry_after_seconds(value) == seconds


events = st.lists(st.tuples(
    st.floats(0, 60, allow_nan=False),  # seconds since the previous event
    st.sampled_from(["request", "request", "request", "withdraw", "429", "418", "restart"]),
    st.integers(0, 40),  # key
    st.sampled_from(list(Kind)),
    st.floats(0, 200, allow_nan=False),  # Retry-After
), max_size=150)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(2, 30), window=st.floats(0.5, 120, allow_nan=False), events=events)
def test_no_window_ever_holds_more_than_the_budget_and_every_request_is_served(limit, window, events):
    """Random requests, re-requests after failures, withdrawals, 429s, 418s and restarts of the collector
    (a new budget from the old one's state, every symbol asking again), with the gate's polling."""
    budget = ConnectBudget(limit=limit, window=window)
    grants: list[tuple[float, object]] = []
    blocked: list[tuple[float, float]] = []
    pending: set[int] = set()

    def granted(new: list[tuple[float, object]]) -> None:
        grants.extend(new)
        pending.difference_update(key for _, key in new)

    now, next_at = 0.0, None
    for advance, action, key, kind, retry_after in events:
        now += advance
        if next_at is not None and next_at <= now:
            granted(drain(budget, next_at, until=now))
        if action == "request":
            budget.request(key, kind, now)
            pending.add(key)
        elif action == "withdraw":
            budget.withdraw(key)
            pending.discard(key)
        elif action == "restart":
            state = budget.state()
            budget = ConnectBudget(limit=limit, window=window)
            budget.restore(state)
            for waiting in pending:
                budget.request(waiting, Kind.FIRST, now)
        else:
            (budget.too_many if action == "429" else budget.banned)(now, retry_after)
            blocked.append((now, now + retry_after))
        polled = budget.poll(now)
        granted([(now, k) for k in polled.keys])
        next_at = polled.next_at
    granted(drain(budget, now))
    times = [t for t, _ in grants]
    assert max_in_window(times, window) <= limit
    assert all(not start < t < end for t in times for start, end in blocked), "an attempt during a 429 or ban"
    assert pending == set(), "a request never served"
    assert budget.waiting().total() == 0
