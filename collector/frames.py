"""Classifying one WebSocket message: a trade to keep, an announcement to act on, or input to reject."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Literal, NamedTuple

import msgspec

# Binance trade events are ~200 bytes; anything far larger is not one and must not reach a data file.
MAX_MESSAGE_BYTES = 16 * 1024
# Binance's ids and times are 64-bit; a larger number would not survive a consumer's int64 column.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Trade(NamedTuple):
    """A trade event; `raw` is the message exactly as received (its line in the data file, minus `\\n`).
    A tuple, not a dataclass: one is built per message, and a tuple is the cheapest object to build."""

    raw: bytes
    trade_id: int
    event_time: int
    trade_time: int


class Notice(Enum):
    """A message that is not a trade (so it is counted as rejected) but asks the connection to act."""

    SERVER_SHUTDOWN = "serverShutdown"


@dataclass(frozen=True, slots=True)
class Rejected:
    """Input that never reaches a data file; `reason` goes to the log."""

    reason: str


Parsed = Trade | Notice | Rejected


_Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]  # msgspec's int: true, false, 1.0 do not pass


class _TradeEvent(msgspec.Struct, gc=False):
    """The fields of a trade event the collector relies on; others are checked as JSON and skipped unbuilt."""

    e: Literal["trade"]
    E: _Int64
    s: str
    t: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    T: _Int64


_decode_trade = msgspec.json.Decoder(_TradeEvent).decode
_new_trade = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


def parse_message(data: bytes, text: bool, symbol: str) -> Parsed:
    """Classify one complete message of the `<symbol>@trade` stream.

    The accepting path is written for speed (it runs for every message): one typed decode in C that reads
    the five fields and checks the JSON syntax of the rest, plus a UTF-8 check (msgspec does not decode
    the strings it skips). Numbers in fields it skips are not range-checked: the audit reads data files
    with this same function. Anything it does not accept is decoded again, slowly, by `_classify_rest`
    to say why.
    """
    if text and len(data) <= MAX_MESSAGE_BYTES:
        try:
            event = _decode_trade(data)
        except (msgspec.DecodeError, RecursionError):  # DecodeError includes msgspec.ValidationError
            return _classify_rest(data, symbol)
        # A raw line break is JSON whitespace but would split the message over two lines.
        if event.s == symbol and 10 not in data and 13 not in data and (data.isascii() or _is_utf8(data)):
            return _new_trade(Trade, (data, event.t, event.E, event.T))
        return _classify_rest(data, symbol)
    if not text:
        return Rejected("binary frame")
    return Rejected(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _classify_rest(data: bytes, symbol: str) -> Notice | Rejected:
    try:
        event = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return Rejected("not JSON")
    except RecursionError:
        return Rejected("JSON nested too deeply")
    if type(event) is not dict:
        return Rejected("JSON that is not an object")
    kind = event.get("e")
    if kind == "trade":
        if not all(type(v) is int and INT64_MIN <= v <= INT64_MAX for v in (event.get(k) for k in "tET")):
            return Rejected("trade without 64-bit integer t/E/T")
        if event["t"] < 0:
            return Rejected("negative trade id")
        if event.get("s") != symbol:
            return Rejected(f"trade for symbol {event.get('s')!r} on the {symbol} stream")
        if 10 in data or 13 in data:
            return Rejected("trade with a raw line break")
        # The typed decode checks every occurrence of a field; a plain decode keeps only the last one.
        return Rejected("trade with a field given twice")
    if kind == "serverShutdown":
        return Notice.SERVER_SHUTDOWN
    if "result" in event and "id" in event:
        return Rejected("subscription reply")
    return Rejected(f"event type {kind!r} is not a trade" if kind is not None else "JSON without an event type")
