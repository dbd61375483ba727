"""Binance's REST trade history, `GET /api/v3/historicalTrades`: the source of the trades every replica missed;
and its klines, `GET /api/v3/klines`, to cross-check the bars computed from the trades.

`HistoricalTrades` is the I/O shell (urllib). What it decides lives in plain functions without I/O: how long the
weight budget says to wait (`WeightBudget`), whether an answer is trade
history (`check_page`).
"""

from __future__ import annotations

import http.client
import logging
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from typing import Any

import msgspec

from collector.backoff import Backoff
from collector.frames import INT64_MAX, INT64_MIN

log = logging.getLogger("audit.binance_rest")

DEFAULT_URL = "https://api.binance.com"
PAGE_LIMIT = 1000
CALL_WEIGHT = 25  # historicalTrades' request weight, whatever the limit
KLINES_WEIGHT = 2  # klines' request weight
IP_WEIGHT_PER_MINUTE = 6000  # Binance's REQUEST_WEIGHT limit per IP
# 80% of it: other tools on the same IP keep room, and a miscount never reaches a 429 (and a 418 after it).
DEFAULT_MAX_WEIGHT = 4800
WINDOW_SECONDS = 60.0  # Binance counts REQUEST_WEIGHT per IP per minute
RETRY_AFTER_DEFAULT_SECONDS = 60.0
# Binance's side failing (5xx, network): 0.5 s, then doubling with jitter up to 30 s.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0

_TRADE_FIELDS: dict[str, type] = {"id": int, "time": int, "price": str, "qty": str, "isBuyerMaker": bool}


class BackfillError(Exception):
    """The backfill cannot go on; the message says why, for the operator."""


class HistoryError(BackfillError):
    """Binance refused the request (an HTTP 4xx other than 418 and 429), or its answer is not trade history."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class HistoryUnavailable(BackfillError):
    """Binance's side kept failing (5xx, connection errors, timeouts, 429s) on every attempt."""


class Banned(BackfillError):
    """HTTP 418: Binance banned this IP for carrying on after 429s. Every further call lengthens the ban."""

    def __init__(self, retry_after: int | None) -> None:
        self.retry_after = retry_after
        how_long = f"for {retry_after} seconds" if retry_after is not None else "for an unknown time"
        super().__init__(f"Binance has banned this IP {how_long} (HTTP 418, too much request weight): stop the "
                         "backfill and every other tool calling Binance from this IP, and start again after the ban")


@dataclass(slots=True)
class WeightBudget:
    """Keeps this IP's request weight per minute under `limit`, from the `X-MBX-USED-WEIGHT-1M` Binance reports.

    The client sees neither Binance's minute boundary nor other tools' calls, only the used weight in each answer.
    A window is taken to start when it is first seen: at the first answer, when the counter drops, or at the first
    answer after a full minute. That is never before the real start, so waiting a minute from it never ends early.
    """

    limit: int
    used: int = 0
    window_start: float | None = None

    def observe(self, used: int | None, now: float, weight: int = CALL_WEIGHT) -> None:
        """An answer to a call of `weight` arrived at `now`; `used` is its used weight, None without the header."""
        if self.window_start is None or now - self.window_start >= WINDOW_SECONDS:
            self.window_start, self.used = now, 0
        if used is None:
            # Not every answer on the way comes from Binance's API servers (a proxy's, a CDN's); count ours.
            used = self.used + weight
        elif used < self.used:
            self.window_start = now
        self.used = used

    def delay(self, now: float, weight: int = CALL_WEIGHT) -> float:
        """Seconds to wait before a call of `weight`: 0 if it fits in this window, else until the window ends."""
        if self.window_start is None or self.used + weight <= self.limit:
            return 0.0
        return max(0.0, self.window_start + WINDOW_SECONDS - now)


def _header_int(headers: Message, name: str) -> int | None:
    value = (headers.get(name) or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def binance_error(body: bytes) -> tuple[int | None, str]:
    """(code, msg) of a Binance error body; (None, the start of the body) when it is not one (a proxy's page)."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        doc = None
    if isinstance(doc, dict) and type(doc.get("code")) is int and isinstance(doc.get("msg"), str):
        return doc["code"], doc["msg"]
    return None, body[:200].decode(errors="replace")


def _json_array(body: bytes, limit: int, where: str, what: str) -> list[Any]:
    try:
        rows = msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise HistoryError(f"{where}: not JSON ({error})") from None
    if not isinstance(rows, list) or len(rows) > limit:
        raise HistoryError(f"{where}: not a JSON array of at most {limit} {what}: {body[:200]!r}")
    return rows


def check_page(body: bytes, symbol: str, from_id: int, limit: int) -> list[dict[str, Any]]:
    """The trades in a 200 answer to `fromId=from_id&limit=limit`, or HistoryError if it is not such a page."""
    where = f"malformed answer for {symbol} fromId={from_id}"
    records = _json_array(body, limit, where, "trades")
    previous = from_id - 1
    for n, record in enumerate(records):
        # `type(...) is` rather than isinstance: JSON true must not pass for an int id.
        if (not isinstance(record, dict) or any(type(record.get(k)) is not t for k, t in _TRADE_FIELDS.items())
                or not INT64_MIN <= record["time"] <= INT64_MAX or record["id"] > INT64_MAX):  # as the stream's
            raise HistoryError(f"{where}: record {n} is not a trade: {record!r:.200}")
        if record["id"] <= previous:
            what = f"starts at id {record['id']}" if n == 0 else f"id {record['id']} follows {previous}"
            raise HistoryError(f"{where}: {what}")
        previous = record["id"]
    return records


def check_klines(body: bytes, limit: int) -> list[list[Any]]:
    """The klines in a 200 answer to `GET /api/v3/klines`, or HistoryError if it is not such a list."""
    rows = _json_array(body, limit, "malformed klines answer", "klines")
    for n, row in enumerate(rows):
        if (not isinstance(row, list) or len(row) < 11 or type(row[0]) is not int or type(row[6]) is not int
                or type(row[8]) is not int or not all(isinstance(row[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10))):
            raise HistoryError(f"malformed klines answer: row {n} is not a kline: {row!r:.200}")
    return rows


def rest_url(text: str) -> str:
    """`text` if it is an http(s) URL with a host; urllib would also open file:// and others."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {text!r}")
    return text


class HistoricalTrades:
    """Pages of Binance's trade history, kept under a weight budget, with Binance's rules for retries."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_weight_per_minute: int = DEFAULT_MAX_WEIGHT,
        timeout: float = 10.0,
        attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = rest_url(base_url).rstrip("/")
        self.timeout = timeout
        self.attempts = attempts
        self.calls = 0
        self.weight_used = 0  # by the calls Binance answered, as it counts them
        # historicalTrades needs no key today (security type NONE); one is sent only if the operator gives it.
        self._headers = {"X-MBX-APIKEY": api_key} if api_key is not None else {}
        self._budget = WeightBudget(max_weight_per_minute)
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()

    def page(self, symbol: str, from_id: int, limit: int = PAGE_LIMIT) -> list[dict[str, Any]]:
        """Up to `limit` trades of `symbol` from id `from_id` on, oldest first; [] past the last trade."""
        query = urllib.parse.urlencode({"symbol": symbol, "fromId": from_id, "limit": limit})
        body = self._call(f"/api/v3/historicalTrades?{query}", f"{symbol} fromId={from_id}", CALL_WEIGHT)
        return check_page(body, symbol, from_id, limit)

    def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int,
               limit: int = PAGE_LIMIT) -> list[list[Any]]:
        """Binance's own klines (`GET /api/v3/klines`) whose open time is in [start_ms, end_ms], up to `limit`
        from the start, for a cross-check of the bars computed from the trades."""
        query = urllib.parse.urlencode({"symbol": symbol, "interval": interval, "startTime": start_ms,
                                        "endTime": end_ms, "limit": limit})
        body = self._call(f"/api/v3/klines?{query}", f"{symbol} klines {interval} from {start_ms}", KLINES_WEIGHT)
        return check_klines(body, limit)

    def _call(self, path: str, where: str, weight: int) -> bytes:
        """The body of a 200 answer to GET `path`, with Binance's rules for waits and retries."""
        url = f"{self.base_url}{path}"
        failures = 0
        backoff = Backoff(BACKOFF_FIRST_SECONDS, BACKOFF_CAP_SECONDS, self._rng)
        while True:
            self._wait_for_budget(weight)
            try:
                status, headers, body = self._get(url)
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, torn answer
                last_error = f"{type(error).__name__}: {error}"
                delay = backoff.next()
            else:
                self.weight_used += weight
                self._budget.observe(_header_int(headers, "X-MBX-USED-WEIGHT-1M"), self._monotonic(), weight)
                if status == HTTPStatus.OK:
                    return body
                if status == HTTPStatus.IM_A_TEAPOT:
                    raise Banned(_header_int(headers, "Retry-After"))
                code, msg = binance_error(body)
                last_error = f"HTTP {status}, code {code}: {msg}"
                if status == HTTPStatus.TOO_MANY_REQUESTS:
                    retry_after = _header_int(headers, "Retry-After")
                    delay = RETRY_AFTER_DEFAULT_SECONDS if retry_after is None else float(retry_after)
                elif status >= HTTPStatus.INTERNAL_SERVER_ERROR:
                    delay = backoff.next()
                else:
                    raise HistoryError(f"Binance refused {where}: {last_error}", code=code)
            failures += 1
            if failures >= self.attempts:
                raise HistoryUnavailable(f"no answer for {where} after {failures} attempts: {last_error}")
            log.warning("%s failed (%s); attempt %d of %d in %.1f s",
                        where, last_error, failures + 1, self.attempts, delay)
            self._sleep(delay)

    def _wait_for_budget(self, weight: int) -> None:
        delay = self._budget.delay(self._monotonic(), weight)
        if delay > 0:
            log.info("request weight %d of %d used this minute; waiting %.1f s for the next minute",
                     self._budget.used, self._budget.limit, delay)
            self._sleep(delay)

    def _get(self, url: str) -> tuple[int, Message, bytes]:
        self.calls += 1
        request = urllib.request.Request(url, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.headers, error.read()
