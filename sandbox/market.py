"""A simulated exchange's trade history for one symbol: the ground truth that replicas, the REST stub and
the audit's tests are measured against.

The stream line of a trade is spelled as Binance spells it (fields e, E, s, t, p, q, T, m, M). Binance's
REST history has no event time `E`; this market sets `E` equal to `T` (as Binance's own example event does),
so that a trade backfilled from REST history is byte-identical to the one the stream delivered.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from audit.days import day_bounds_ms
from sandbox.feed import FIRST_TRADE_ID


@dataclass(frozen=True, slots=True)
class MarketTrade:
    id: int
    price: str
    qty: str
    quote_qty: str
    time: int  # Binance milliseconds
    is_buyer_maker: bool

    def stream_line(self, symbol: str) -> bytes:
        """The trade event as the WebSocket stream sends it."""
        m = "true" if self.is_buyer_maker else "false"
        return (
            f'{{"e":"trade","E":{self.time},"s":"{symbol}","t":{self.id},"p":"{self.price}","q":"{self.qty}",'
            f'"T":{self.time},"m":{m},"M":true}}'
        ).encode()

    def rest_record(self) -> dict[str, object]:
        """The trade as `GET /api/v3/historicalTrades` returns it."""
        return {"id": self.id, "price": self.price, "qty": self.qty, "quoteQty": self.quote_qty,
                "time": self.time, "isBuyerMaker": self.is_buyer_maker, "isBestMatch": True}


@dataclass(frozen=True)
class Market:
    """Trades of one symbol from `start_ms` to `end_ms`, one every `spacing_ms` on average, ids consecutive."""

    symbol: str
    trades: Sequence[MarketTrade]

    @classmethod
    def generate(cls, symbol: str, *, start_ms: int, end_ms: int, spacing_ms: int, seed: int = 7,
                 first_id: int = FIRST_TRADE_ID) -> Market:
        rng = random.Random(seed)
        trades: list[MarketTrade] = []
        t = start_ms
        while t < end_ms:
            price = 43000 + rng.random() * 1000
            qty = rng.random() / 10
            trades.append(MarketTrade(first_id + len(trades), f"{price:.8f}", f"{qty:.8f}",
                                      f"{price * qty:.8f}", t, rng.random() < 0.5))
            t += rng.randint(1, 2 * spacing_ms - 1)
        return cls(symbol, trades)

    def by_id(self, trade_id: int) -> MarketTrade:
        return self.trades[trade_id - self.trades[0].id]

    def from_id(self, trade_id: int, limit: int) -> Sequence[MarketTrade]:
        """What `historicalTrades?fromId=&limit=` answers: up to `limit` trades from `trade_id` on."""
        offset = max(0, trade_id - self.trades[0].id)
        return self.trades[offset:offset + limit]

    def day_lines(self, day: date) -> list[bytes]:
        """The ground truth of one curated day: every trade whose `T` falls on `day` (UTC), in id order."""
        start, end = day_bounds_ms(day)
        return [t.stream_line(self.symbol) for t in self.trades if start <= t.time < end]
