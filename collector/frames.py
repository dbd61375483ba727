"""Classifying one WebSocket message: a trade to keep, an announcement to act on, or input to reject."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import orjson

# Binance trade events are ~200 bytes; anything far larger is not one and must not reach a data file.
MAX_MESSAGE_BYTES = 16 * 1024


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


_new_trade = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


def parse_message(data: bytes, text: bool, symbol: str) -> Parsed:
    """Classify one complete message of the `<symbol>@trade` stream.

    The accepting path is written for speed (it runs for every message); anything it does not accept is
    classified again, slowly, by `_classify_rest` to say why.
    """
    if text and len(data) <= MAX_MESSAGE_BYTES:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _NOT_JSON
        if type(event) is dict and event.get("e") == "trade":
            trade_id, event_time, trade_time = event.get("t"), event.get("E"), event.get("T")
            # `type(...) is int`, not isinstance: JSON true/false must not pass as 1/0.
            if (
                type(trade_id) is int and type(event_time) is int and type(trade_time) is int
                and trade_id >= 0 and event.get("s") == symbol
                and b"\n" not in data and b"\r" not in data  # either would split the message over two lines
            ):
                return _new_trade(Trade, (data, trade_id, event_time, trade_time))
        return _classify_rest(event, symbol)
    if not text:
        return Rejected("binary frame")
    return Rejected(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")


_NOT_JSON = Rejected("not JSON")


def _classify_rest(event: object, symbol: str) -> Notice | Rejected:
    if type(event) is not dict:
        return Rejected("JSON that is not an object")
    kind = event.get("e")
    if kind == "trade":
        if not all(type(event.get(k)) is int for k in "tET"):
            return Rejected("trade without integer t/E/T")
        if event["t"] < 0:
            return Rejected("negative trade id")
        if event.get("s") != symbol:
            return Rejected(f"trade for symbol {event.get('s')!r} on the {symbol} stream")
        return Rejected("trade with a raw line break")
    if kind == "serverShutdown":
        return Notice.SERVER_SHUTDOWN
    if "result" in event and "id" in event:
        return Rejected("subscription reply")
    return Rejected(f"event type {kind!r} is not a trade" if kind is not None else "JSON without an event type")
