"""A local Binance-compatible REST API on 127.0.0.1 for the audit's tests and the demo: the trade history
(`GET /api/v3/historicalTrades`) and klines (`GET /api/v3/klines`).

It answers from `Market`s (the ground truth), charges Binance's weight per call in a one-minute window and
reports it in `X-MBX-USED-WEIGHT-1M`, refuses calls over the limit with 429 as Binance does, and plays
Binance's other failures (5xx, 429, 418) on demand.

Its klines are computed here, on purpose apart from the audit's bar code (a loop over the market's trades
with Python's Decimal), so that a test comparing the two compares two computations.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import msgspec

from sandbox.loopback import ServedInThread
from sandbox.market import Market, MarketTrade

PATH = "/api/v3/historicalTrades"
KLINES_PATH = "/api/v3/klines"
CALL_WEIGHT = 25
KLINES_WEIGHT = 2
KLINE_INTERVALS_MS = {"1s": 1_000, "1m": 60_000, "1h": 3_600_000}
WINDOW_SECONDS = 60.0
DEFAULT_LIMIT = 500
MAX_LIMIT = 1000

# Binance's own codes and wording for the errors the stub plays.
_INJECTED_ERRORS: dict[int, tuple[int, str]] = {
    HTTPStatus.TOO_MANY_REQUESTS: (-1003, "Too much request weight used; current limit is {limit} request weight "
                                          "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid "
                                          "polling the API."),
    HTTPStatus.IM_A_TEAPOT: (-1003, "Way too much request weight used; IP banned. Please use WebSocket Streams for "
                                    "live updates to avoid bans."),
}
_SERVER_ERROR = (-1001, "Internal error; unable to process your request. Please try again.")
_UNKNOWN_ERROR = (-1000, "An unknown error occurred while processing the request.")

Answer = tuple[int, dict[str, str], bytes]


def _error(status: int, code: int, msg: str, headers: dict[str, str]) -> Answer:
    return status, headers, msgspec.json.encode({"code": code, "msg": msg})


class HistoryServer(ServedInThread):
    """`with HistoryServer({"BTCUSDT": market}) as server:` serves `server.url` until the block ends."""

    def __init__(self, markets: dict[str, Market], *, weight_limit: int = 6000) -> None:
        self.markets = markets
        self.weight_limit = weight_limit
        self.requests: list[tuple[str, int | None, int]] = []
        self.api_keys: list[str | None] = []  # the X-MBX-APIKEY header of every call, None when absent
        self.calls = 0
        self._lock = threading.Lock()
        self._failures: deque[tuple[int, int | None]] = deque()
        self._window_start = time.monotonic()
        self._weight = 0
        super().__init__(_Server(self), "binance-rest")

    def fail_next(self, status: int, count: int = 1, retry_after: int | None = None) -> None:
        """The next `count` calls answer `status` with a Binance-style error body (and `Retry-After` if given)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def answer(self, path: str, api_key: str | None) -> Answer:
        """Status, headers and body for one GET of `path` (with its query string)."""
        url = urlsplit(path)
        weights = {PATH: CALL_WEIGHT, KLINES_PATH: KLINES_WEIGHT}
        if url.path not in weights:
            return _error(HTTPStatus.NOT_FOUND, *_UNKNOWN_ERROR, {})
        weight = weights[url.path]
        with self._lock:
            self.calls += 1
            self.api_keys.append(api_key)
            now = time.monotonic()
            elapsed = now - self._window_start
            if elapsed >= WINDOW_SECONDS:
                # Binance's windows are whole minutes: the new one starts on the boundary, not at this call.
                self._window_start = now - elapsed % WINDOW_SECONDS
                self._weight = 0
            headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight)}
            if self._failures:
                status, retry_after = self._failures.popleft()
                if retry_after is not None:
                    headers["Retry-After"] = str(retry_after)
                code, msg = _INJECTED_ERRORS.get(status, _SERVER_ERROR if status >= 500 else _UNKNOWN_ERROR)
                return _error(status, code, msg.format(limit=self.weight_limit), headers)
            if self._weight + weight > self.weight_limit:
                left = WINDOW_SECONDS - (now - self._window_start)
                headers["Retry-After"] = str(max(1, math.ceil(left)))
                code, msg = _INJECTED_ERRORS[HTTPStatus.TOO_MANY_REQUESTS]
                return _error(HTTPStatus.TOO_MANY_REQUESTS, code, msg.format(limit=self.weight_limit), headers)
            self._weight += weight
            headers["X-MBX-USED-WEIGHT-1M"] = str(self._weight)
            if url.path == KLINES_PATH:
                return self._klines(parse_qs(url.query), headers)
            return self._history(parse_qs(url.query), headers)

    def _klines(self, query: dict[str, list[str]], headers: dict[str, str]) -> Answer:
        """Klines whose open time is in [startTime, endTime], the first `limit` of them from startTime (the
        last `limit` without startTime), as Binance answers; seconds without trades have none."""
        market = self.markets.get(query.get("symbol", [""])[0])
        if market is None:
            return _error(HTTPStatus.BAD_REQUEST, -1121, "Invalid symbol.", headers)
        interval = query.get("interval", [""])[0]
        if interval not in KLINE_INTERVALS_MS:
            return _error(HTTPStatus.BAD_REQUEST, -1120, "Invalid interval.", headers)
        numbers: dict[str, int | None] = {}
        for name in ("startTime", "endTime", "limit"):
            text = query.get(name, [None])[0]
            if text is not None and not text.isdigit():
                return _error(HTTPStatus.BAD_REQUEST, -1100,
                              f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
                              headers)
            numbers[name] = None if text is None else int(text)
        start, end, limit = numbers["startTime"], numbers["endTime"], numbers["limit"] or DEFAULT_LIMIT
        if not 1 <= limit <= MAX_LIMIT:
            return _error(HTTPStatus.BAD_REQUEST, -1100,
                          f"Illegal characters found in parameter 'limit'; legal range is '1' to '{MAX_LIMIT}'.",
                          headers)
        rows = [row for row in klines(market, KLINE_INTERVALS_MS[interval])
                if (start is None or row[0] >= start) and (end is None or row[0] <= end)]  # type: ignore[operator]
        rows = rows[:limit] if start is not None else rows[-limit:]
        self.requests.append((market.symbol, start, limit))
        headers["Content-Type"] = "application/json;charset=UTF-8"
        return HTTPStatus.OK, headers, msgspec.json.encode(rows)

    def _history(self, query: dict[str, list[str]], headers: dict[str, str]) -> Answer:
        symbol = query.get("symbol", [""])[0]
        if not symbol:
            return _error(HTTPStatus.BAD_REQUEST, -1102,
                          "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.", headers)
        market = self.markets.get(symbol)
        if market is None:
            return _error(HTTPStatus.BAD_REQUEST, -1121, "Invalid symbol.", headers)
        limit_text = query.get("limit", [str(DEFAULT_LIMIT)])[0]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            return _error(HTTPStatus.BAD_REQUEST, -1100,
                          f"Illegal characters found in parameter 'limit'; legal range is '1' to '{MAX_LIMIT}'.",
                          headers)
        limit = int(limit_text)
        from_text = query.get("fromId", [None])[0]
        if from_text is not None and not from_text.isdigit():
            return _error(HTTPStatus.BAD_REQUEST, -1100,
                          "Illegal characters found in parameter 'fromId'; legal range is '^[0-9]{1,20}$'.", headers)
        from_id = None if from_text is None else int(from_text)
        trades = market.trades[-limit:] if from_id is None else market.from_id(from_id, limit)
        self.requests.append((symbol, from_id, limit))
        headers["Content-Type"] = "application/json;charset=UTF-8"
        return HTTPStatus.OK, headers, msgspec.json.encode([trade.rest_record() for trade in trades])


@dataclass
class _Kline:
    open_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = Decimal(0)
    quote: Decimal = Decimal(0)
    count: int = 0
    taker_base: Decimal = Decimal(0)
    taker_quote: Decimal = Decimal(0)

    def row(self, width_ms: int) -> list[object]:
        def text(value: Decimal) -> str:
            return f"{value.quantize(Decimal('0.00000001'), rounding=ROUND_HALF_EVEN):f}"

        return [self.open_time, text(self.open), text(self.high), text(self.low), text(self.close),
                text(self.volume), self.open_time + width_ms - 1, text(self.quote), self.count,
                text(self.taker_base), text(self.taker_quote), "0"]


def klines(market: Market, width_ms: int) -> list[list[object]]:
    """Every kline of `market` at `width_ms`, by a plain loop: trades in id order, a new kline where the bucket
    of trade time changes; decimals exact, printed with 8 places (half to even) as Binance prints them."""
    done: list[_Kline] = []
    with localcontext(prec=76):  # exact: Decimal's default 28 digits could round a product or a sum
        for trade in market.trades:
            _add(done, trade, width_ms)
    return [k.row(width_ms) for k in done]


def _add(done: list[_Kline], trade: MarketTrade, width_ms: int) -> None:
    price, qty = Decimal(trade.price), Decimal(trade.qty)
    open_time = trade.time - trade.time % width_ms
    if not done or done[-1].open_time != open_time:
        done.append(_Kline(open_time, price, price, price, price))
    k = done[-1]
    k.high, k.low, k.close = max(k.high, price), min(k.low, price), price
    k.volume += qty
    k.quote += price * qty
    k.count += 1
    if not trade.is_buyer_maker:  # the buyer took the liquidity
        k.taker_base += qty
        k.taker_quote += price * qty


class _Server(ThreadingHTTPServer):

    def __init__(self, history: HistoryServer) -> None:
        self.history = history
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        status, headers, body = self.server.history.answer(self.path, self.headers.get("X-MBX-APIKEY"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: the tests assert on `requests` and `calls`, not on an access log."""
