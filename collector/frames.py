"""Classifying one WebSocket message: a trade to keep, an announcement to act on, or input to reject."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import orjson

# Binance trade events are ~200 bytes; anything far larger is not one and must not reach a data file.
MAX_MESSAGE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Trade:
    """A trade event; `raw` is the message exactly as received (its line in the data file, minus `\\n`)."""

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


def _is_int(value: object) -> bool:
    return type(value) is int


def parse_message(data: bytes, *, text: bool, symbol: str) -> Parsed:
    """Classify one complete message of the `<symbol>@trade` stream."""
    if not text:
        return Rejected("binary frame")
    if len(data) > MAX_MESSAGE_BYTES:
        return Rejected(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Rejected("not JSON")
    if not isinstance(event, dict):
        return Rejected("JSON that is not an object")
    kind = event.get("e")
    if kind == "trade":
        trade_id, event_time, trade_time = event.get("t"), event.get("E"), event.get("T")
        if not (_is_int(trade_id) and _is_int(event_time) and _is_int(trade_time)):
            return Rejected("trade without integer t/E/T")
        if trade_id < 0:
            return Rejected("negative trade id")
        if event.get("s") != symbol:
            return Rejected(f"trade for symbol {event.get('s')!r} on the {symbol} stream")
        if b"\n" in data or b"\r" in data:
            # Would split one message over two JSONL lines.
            return Rejected("trade with a raw line break")
        return Trade(data, trade_id, event_time, trade_time)
    if kind == "serverShutdown":
        return Notice.SERVER_SHUTDOWN
    if "result" in event and "id" in event:
        return Rejected("subscription reply")
    return Rejected(f"event type {kind!r} is not a trade" if kind is not None else "JSON without an event type")
