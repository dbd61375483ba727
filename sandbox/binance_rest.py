"""A local Binance-compatible REST trade history: `GET /api/v3/historicalTrades` on 127.0.0.1, for the audit's
tests and the demo.

It answers from `Market`s (the ground truth), charges Binance's weight per call in a one-minute window and
reports it in `X-MBX-USED-WEIGHT-1M`, refuses calls over the limit with 429 as Binance does, and plays
Binance's other failures (5xx, 429, 418) on demand.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import msgspec

from sandbox.loopback import ServedInThread
from sandbox.market import Market

PATH = "/api/v3/historicalTrades"
CALL_WEIGHT = 25
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
        if url.path != PATH:
            return _error(HTTPStatus.NOT_FOUND, *_UNKNOWN_ERROR, {})
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
            if self._weight + CALL_WEIGHT > self.weight_limit:
                left = WINDOW_SECONDS - (now - self._window_start)
                headers["Retry-After"] = str(max(1, math.ceil(left)))
                code, msg = _INJECTED_ERRORS[HTTPStatus.TOO_MANY_REQUESTS]
                return _error(HTTPStatus.TOO_MANY_REQUESTS, code, msg.format(limit=self.weight_limit), headers)
            self._weight += CALL_WEIGHT
            headers["X-MBX-USED-WEIGHT-1M"] = str(self._weight)
            return self._history(parse_qs(url.query), headers)

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
