"""The backfill's Binance REST client against the local history stub (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import random
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from email.message import Message
from typing import Any

import msgspec
import pytest

from audit.binance_rest import (
    Banned,
    HistoricalTrades,
    HistoryError,
    HistoryUnavailable,
    WeightBudget,
    check_klines,
    check_page,
)
from audit.days import day_bounds_ms
from sandbox.binance_rest import HistoryServer
from sandbox.market import Market

SYMBOL = "BTCUSDT"
START_MS = day_bounds_ms(date(2026, 11, 29))[0]


@pytest.fixture(scope="module")
def market() -> Market:
    return Market.generate(SYMBOL, start_ms=START_MS, end_ms=START_MS + 30_000, spacing_ms=10)


@pytest.fixture
def server(market: Market) -> Iterator[HistoryServer]:
    with HistoryServer({SYMBOL: market}) as stub:
        yield stub


class Clock:
    """Injected time: `sleep` records the delay and moves the clock on, so no test waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


class LongestJitter(random.Random):
    """The backoff's jitter always at its upper bound, so the delays are known."""

    def uniform(self, a: float, b: float) -> float:
        return b


def client(url: str, clock: Clock, **kwargs: Any) -> HistoricalTrades:
    return HistoricalTrades(url, sleep=clock.sleep, monotonic=clock.monotonic, rng=LongestJitter(), **kwargs)


def records(market: Market, from_id: int, limit: int) -> list[dict[str, object]]:
    return [trade.rest_record() for trade in market.from_id(from_id, limit)]


def raw_get(url: str) -> tuple[int, Message, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers, msgspec.json.decode(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, msgspec.json.decode(error.read())


# --- the client against the stub


def test_pages_are_exactly_the_markets_trades(market: Market, server: HistoryServer, clock: Clock):
    history = client(server.url, clock)
    first, last = market.trades[0].id, market.trades[-1].id
    assert last - first > 2500  # room for full pages

    assert history.page(SYMBOL, first) == records(market, first, 1000)
    assert [r["id"] for r in history.page(SYMBOL, first + 1500, limit=7)] == list(range(first + 1500, first + 1507))
    assert history.page(SYMBOL, last - 9) == records(market, last - 9, 10)
    assert server.requests == [(SYMBOL, first, 1000), (SYMBOL, first + 1500, 7), (SYMBOL, last - 9, 1000)]
    assert (history.calls, history.weight_used, clock.sleeps) == (3, 75, [])


def test_from_id_past_the_last_trade_is_an_empty_page(market: Market, server: HistoryServer, clock: Clock):
    assert client(server.url, clock).page(SYMBOL, market.trades[-1].id + 1) == []


@pytest.mark.parametrize("limit", [0, 1001])
def test_a_refused_limit_is_a_history_error_with_binances_code_and_no_retry(
    market: Market, server: HistoryServer, clock: Clock, limit: int
):
    with pytest.raises(HistoryError, match="limit") as caught:
        client(server.url, clock).page(SYMBOL, market.trades[0].id, limit=limit)
    assert caught.value.code == -1100
    assert (server.calls, clock.sleeps) == (1, [])


def test_an_unknown_symbol_is_a_history_error(server: HistoryServer, clock: Clock):
    with pytest.raises(HistoryError, match="Invalid symbol") as caught:
        client(server.url, clock).page("NOPEUSDT", 1)
    assert caught.value.code == -1121


def test_server_errors_are_retried_with_exponential_backoff(market: Market, server: HistoryServer, clock: Clock):
    server.fail_next(500, count=2)
    history = client(server.url, clock)
    assert history.page(SYMBOL, market.trades[0].id, limit=3) == records(market, market.trades[0].id, 3)
    assert clock.sleeps == [0.5, 1.0]
    assert (server.calls, history.calls) == (3, 3)


def test_server_errors_on_every_attempt_make_history_unavailable(server: HistoryServer, clock: Clock):
    server.fail_next(503, count=10)
    with pytest.raises(HistoryUnavailable, match=r"after 3 attempts: HTTP 503, code -1001"):
        client(server.url, clock, attempts=3).page(SYMBOL, 1)
    assert clock.sleeps == [0.5, 1.0]
    assert server.calls == 3


def test_a_refused_connection_is_retried_then_history_unavailable(clock: Clock):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    history = client(f"http://127.0.0.1:{port}", clock, attempts=4)
    with pytest.raises(HistoryUnavailable, match="after 4 attempts"):
        history.page(SYMBOL, 1)
    assert (clock.sleeps, history.calls, history.weight_used) == ([0.5, 1.0, 2.0], 4, 0)


def test_a_server_that_never_answers_times_out_and_is_retried(clock: Clock):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel's backlog; nobody reads or answers
        history = client(f"http://127.0.0.1:{silent.getsockname()[1]}", clock, attempts=2, timeout=0.1)
        with pytest.raises(HistoryUnavailable, match="timed out"):
            history.page(SYMBOL, 1)
    assert clock.sleeps == [0.5]


def test_429_waits_retry_after_then_succeeds(market: Market, server: HistoryServer, clock: Clock):
    server.fail_next(429, retry_after=7)
    first = market.trades[0].id
    assert client(server.url, clock).page(SYMBOL, first, limit=1) == records(market, first, 1)
    assert clock.sleeps == [7.0]
    assert server.calls == 2


def test_429_without_retry_after_waits_a_minute(market: Market, server: HistoryServer, clock: Clock):
    server.fail_next(429)
    client(server.url, clock).page(SYMBOL, market.trades[0].id, limit=1)
    assert clock.sleeps == [60.0]


def test_418_is_banned_and_never_retried(server: HistoryServer, clock: Clock):
    server.fail_next(418, count=3, retry_after=120)
    with pytest.raises(Banned, match=r"banned this IP for 120 seconds.*stop") as caught:
        client(server.url, clock).page(SYMBOL, 1)
    assert caught.value.retry_after == 120
    assert (server.calls, clock.sleeps) == (1, [])


def test_the_weight_budget_makes_the_call_that_would_exceed_it_wait(
    market: Market, server: HistoryServer, clock: Clock
):
    history = client(server.url, clock, max_weight_per_minute=100)
    for _ in range(4):  # 4 x 25 = 100: the budget, reached
        history.page(SYMBOL, market.trades[0].id, limit=1)
        clock.now += 10
    assert clock.sleeps == []
    history.page(SYMBOL, market.trades[0].id, limit=1)
    # The window was first seen at the first answer (t=1000); the fifth call comes at t=1040.
    assert clock.sleeps == [20.0]
    assert server.calls == 5


def test_a_stub_over_its_own_limit_answers_429_and_the_client_gives_up_after_its_attempts(
    market: Market, clock: Clock
):
    with HistoryServer({SYMBOL: market}, weight_limit=50) as stub:
        history = client(stub.url, clock, attempts=3)
        for _ in range(2):
            history.page(SYMBOL, market.trades[0].id, limit=1)
        with pytest.raises(HistoryUnavailable, match="HTTP 429, code -1003"):
            history.page(SYMBOL, market.trades[0].id, limit=1)
    assert len(clock.sleeps) == 2
    assert all(0 < s <= 60 for s in clock.sleeps)
    assert len(stub.requests) == 2


def test_the_api_key_is_sent_only_when_given(market: Market, server: HistoryServer, clock: Clock):
    client(server.url, clock).page(SYMBOL, market.trades[0].id, limit=1)
    client(server.url, clock, api_key="operator-key").page(SYMBOL, market.trades[0].id, limit=1)
    assert server.api_keys == [None, "operator-key"]


def test_an_answer_with_repeated_ids_is_malformed(market: Market, clock: Clock):
    first, second = market.trades[0], market.trades[1]
    with (
        HistoryServer({SYMBOL: Market(SYMBOL, [first, first, second])}) as stub,
        pytest.raises(HistoryError, match=rf"malformed answer.*id {first.id} follows {first.id}"),
    ):
        client(stub.url, clock).page(SYMBOL, first.id)


def test_the_client_refuses_a_url_that_is_not_http(clock: Clock):
    with pytest.raises(ValueError, match="not an http"):
        client("file:///etc/passwd", clock)


# --- the sans-I/O parts


def test_weight_budget_waits_only_when_the_next_call_would_exceed_it():
    budget = WeightBudget(limit=100)
    assert budget.delay(now=0.0) == 0.0  # nothing seen yet
    budget.observe(75, now=10.0)
    assert budget.delay(now=15.0) == 0.0
    budget.observe(100, now=15.0)
    assert budget.delay(now=15.0) == 55.0
    assert budget.delay(now=70.0) == 0.0
    assert budget.delay(now=15.0, weight=0) == 0.0


def test_weight_budget_starts_a_window_when_the_counter_drops():
    budget = WeightBudget(limit=100)
    budget.observe(100, now=10.0)
    budget.observe(100, now=30.0)  # other tools' calls, same window
    budget.observe(100, now=40.0)
    assert budget.delay(now=40.0) == 30.0
    budget.observe(25, now=45.0)  # Binance's minute rolled over between the last two answers
    budget.observe(100, now=50.0)
    assert budget.delay(now=50.0) == 55.0


def test_weight_budget_counts_its_own_calls_when_the_header_is_missing():
    budget = WeightBudget(limit=50)
    budget.observe(None, now=0.0)
    assert budget.delay(now=1.0) == 0.0
    budget.observe(None, now=1.0)
    assert budget.delay(now=1.0) == 59.0
    budget.observe(None, now=61.0)  # a new window: the count starts again
    assert budget.delay(now=61.0) == 0.0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>", "not JSON"),
        (b'{"code":-1,"msg":"x"}', "not a JSON array"),
        (msgspec.json.encode([{"id": 10 + n, "time": 1, "price": "1", "qty": "1", "isBuyerMaker": True}
                              for n in range(3)]),
         "not a JSON array of at most 2 trades"),
        (b'[{"id":10,"time":1,"price":"1","qty":"1"}]', "record 0 is not a trade"),
        (b'[{"id":true,"time":1,"price":"1","qty":"1","isBuyerMaker":true}]', "record 0 is not a trade"),
        (b'[{"id":10,"time":1,"price":1.5,"qty":"1","isBuyerMaker":true}]', "record 0 is not a trade"),
        (b'[{"id":%d,"time":1,"price":"1","qty":"1","isBuyerMaker":true}]' % 2**63, "record 0 is not a trade"),
        (b'[{"id":10,"time":%d,"price":"1","qty":"1","isBuyerMaker":true}]' % 2**63, "record 0 is not a trade"),
        (b'[{"id":9,"time":1,"price":"1","qty":"1","isBuyerMaker":true}]', "starts at id 9"),
        (b'[{"id":11,"time":1,"price":"1","qty":"1","isBuyerMaker":true},'
         b'{"id":10,"time":1,"price":"1","qty":"1","isBuyerMaker":true}]', "id 10 follows 11"),
    ],
)
def test_check_page_refuses_what_is_not_a_page_of_trades(body: bytes, reason: str):
    with pytest.raises(HistoryError, match=f"malformed answer for BTCUSDT fromId=10: {reason}"):
        check_page(body, SYMBOL, from_id=10, limit=2)


def test_check_page_accepts_ids_with_gaps_from_from_id_on():
    page = [{"id": i, "time": 1, "price": "1", "qty": "1", "isBuyerMaker": False} for i in (12, 13, 20)]
    assert check_page(msgspec.json.encode(page), SYMBOL, from_id=10, limit=3) == page


# --- the stub itself, as the demo and other tests rely on it


def test_stub_without_from_id_answers_the_most_recent_trades(market: Market, server: HistoryServer):
    status, headers, body = raw_get(f"{server.url}/api/v3/historicalTrades?symbol={SYMBOL}&limit=3")
    assert (status, body) == (200, [t.rest_record() for t in market.trades[-3:]])
    assert headers["X-MBX-USED-WEIGHT-1M"] == "25"
    status, _, body = raw_get(f"{server.url}/api/v3/historicalTrades?symbol={SYMBOL}")
    assert len(body) == 500
    assert server.requests == [(SYMBOL, None, 3), (SYMBOL, None, 500)]


def test_stub_refuses_over_its_weight_limit_with_429_and_retry_after(market: Market):
    with HistoryServer({SYMBOL: market}, weight_limit=50) as stub:
        url = f"{stub.url}/api/v3/historicalTrades?symbol={SYMBOL}&limit=1"
        assert [raw_get(url)[0] for _ in range(2)] == [200, 200]
        status, headers, body = raw_get(url)
    assert (status, body["code"]) == (429, -1003)
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["X-MBX-USED-WEIGHT-1M"] == "50"
    assert (stub.calls, len(stub.requests)) == (3, 2)


def test_stub_answers_404_elsewhere(server: HistoryServer):
    assert raw_get(f"{server.url}/api/v3/trades?symbol={SYMBOL}")[0] == 404
    assert server.calls == 0


def test_a_klines_answer_must_be_a_list_of_klines() -> None:
    row = [1795824000000, "1.00000000", "1.00000000", "1.00000000", "1.00000000", "2.00000000", 1795824000999,
           "2.00000000", 1, "0.00000000", "0.00000000", "0"]
    assert check_klines(msgspec.json.encode([row]), 10) == [row]
    for body in (b"nope", b'{"code": -1}', msgspec.json.encode([row] * 3), msgspec.json.encode([[*row[:6], "x"]])):
        with pytest.raises(HistoryError, match="malformed klines answer"):
            check_klines(body, 2)
