"""A local Binance-compatible trade feed: `ws://127.0.0.1:<port>/ws/<symbol>@trade`.

Each symbol is one market: trades are generated in small bursts at a set rate, with ids that keep
increasing across connections, and every open connection of that symbol gets the same trades (as on
Binance, where a new connection sees trades from the moment it subscribes). The server pings like Binance.
It also plays Binance's failures on demand, for the demo and the fault-injection tests: a
`serverShutdown` notice (also to a connection as it opens), dropped or silent connections, a refused location
(HTTP 451), too many connection attempts (HTTP 429) and a ban (HTTP 418), both with Retry-After, bad messages,
a message too big that is followed by more trades while the client's close goes unread.

Run alone: `python -m sandbox.feed --port 9443 --rate 200`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

log = logging.getLogger("sandbox.feed")

FIRST_TRADE_ID = 5_400_000_001  # above 2**32, as on Binance
BINANCE_PING_SECONDS = 20.0
_PATH_RE = re.compile(r"^/ws/([a-z0-9]+)@trade$")


def trade_message(symbol: str, trade_id: int, now_ms: int, rng: random.Random) -> bytes:
    """One trade event, shaped and spelled like Binance's (fields e, E, s, t, p, q, T, m, M)."""
    price = 43000 + rng.random() * 1000
    qty = rng.random() / 10
    return (
        f'{{"e":"trade","E":{now_ms},"s":"{symbol}","t":{trade_id},"p":"{price:.8f}","q":"{qty:.8f}",'
        f'"T":{now_ms - 1},"m":{"true" if rng.random() < 0.5 else "false"},"M":true}}'
    ).encode()


@dataclass
class Subscriber:
    connection: ServerConnection
    symbol: str
    first_id: int | None = None
    last_id: int | None = None


@dataclass
class Market:
    """One symbol's trade sequence and who receives it."""

    symbol: str
    next_id: int = FIRST_TRADE_ID
    subscribers: list[Subscriber] = field(default_factory=list)


class Feed:
    def __init__(
        self,
        *,
        port: int = 0,
        rate: float = 100.0,
        burst_seconds: float = 0.05,
        ping_interval: float | None = BINANCE_PING_SECONDS,
        max_connection_seconds: float | None = None,
        keep_messages: bool = False,
        seed: int = 1,
    ) -> None:
        self.port = port
        self.rate = rate
        self.burst_seconds = burst_seconds
        self.ping_interval = ping_interval
        self.max_connection_seconds = max_connection_seconds
        self.rng = random.Random(seed)
        self.markets: dict[str, Market] = {}
        # Every message sent, by (symbol, id), for byte-for-byte checks; off for long or fast runs.
        self.messages: dict[tuple[str, int], bytes] | None = {} if keep_messages else None
        self.skipped: set[tuple[str, int]] = set()
        # Connections opened from now on get no trades and are cut after this many seconds (None: normal).
        self.new_connections_die_after: float | None = None
        self.refuse_status: int | None = None
        self.silent = False
        # The next connection to open gets a `serverShutdown` notice at once and is closed this long after.
        self.notice_next_connection: float | None = None
        self.handshakes = 0
        # Every handshake as (time.monotonic(), request path, HTTP status answered: 101 for accepted).
        self.handshake_log: list[tuple[float, str, int]] = []
        self._banned_until = -math.inf
        self._throttle_fraction = 0.0
        self._throttle_retry_after = 0
        self.sent_ranges: list[tuple[str, int, int]] = []
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # server side

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        now = time.monotonic()
        response = self._answer(connection, request, now)
        self.handshake_log.append((now, request.path, 101 if response is None else response.status_code))
        return response

    def _answer(self, connection: ServerConnection, request: Request, now: float) -> Response | None:
        if self.refuse_status is not None:
            status = HTTPStatus(self.refuse_status)
            return connection.respond(status, "Service unavailable from a restricted location.\n")
        if now < self._banned_until:
            response = connection.respond(HTTPStatus.IM_A_TEAPOT, "Way too many requests; IP banned.\n")
            response.headers["Retry-After"] = str(math.ceil(self._banned_until - now))
            return response
        if self._throttle_fraction and self.rng.random() < self._throttle_fraction:
            response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too many requests.\n")
            response.headers["Retry-After"] = str(self._throttle_retry_after)
            return response
        if not _PATH_RE.match(request.path):
            return connection.respond(HTTPStatus.NOT_FOUND, "use /ws/<symbol>@trade\n")
        return None

    async def _handler(self, connection: ServerConnection) -> None:
        match = _PATH_RE.match(connection.request.path if connection.request else "")
        assert match is not None
        symbol = match[1].upper()
        market = self.markets.get(symbol)
        if market is None:
            market = self.markets[symbol] = Market(symbol)
            self._tasks.append(asyncio.create_task(self._produce(market)))
        sub = Subscriber(connection, symbol)
        if self.new_connections_die_after is not None:
            # Open, pings answered, but no trades, then cut: a connection that fails during a handover.
            await asyncio.sleep(self.new_connections_die_after)
            connection.transport.abort()
            return
        market.subscribers.append(sub)
        if self.notice_next_connection is not None:
            self._announce([connection], self.notice_next_connection)
            self.notice_next_connection = None
        try:
            if self.max_connection_seconds is None:
                await connection.wait_closed()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.max_connection_seconds):
                        await connection.wait_closed()
                await connection.close(1000, "connection lifetime reached")
        finally:
            market.subscribers.remove(sub)
            if sub.first_id is not None and sub.last_id is not None:
                self.sent_ranges.append((symbol, sub.first_id, sub.last_id))

    async def _produce(self, market: Market) -> None:
        """Bursts every `burst_seconds` carrying `rate * burst_seconds` trades, as an exchange does."""
        carry = 0.0
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while True:
            tick += self.burst_seconds
            await asyncio.sleep(max(0.0, tick - loop.time()))
            carry += self.rate * self.burst_seconds
            count, carry = int(carry), carry - int(carry)
            if not count or self.silent:
                continue
            now_ms = time.time_ns() // 1_000_000
            first = market.next_id
            frames = []
            for n in range(count):
                message = trade_message(market.symbol, first + n, now_ms, self.rng)
                if self.messages is not None:
                    self.messages[market.symbol, first + n] = message
                frames.append(Frame(Opcode.TEXT, message))
            market.next_id += count
            self._broadcast(market, frames, first, first + count - 1)

    def _broadcast(self, market: Market, frames: list[Frame], first: int, last: int) -> None:
        for sub in market.subscribers:
            protocol, transport = sub.connection.protocol, sub.connection.transport
            if protocol.state.name != "OPEN" or transport.is_closing():
                continue
            # Pre-built frames straight to the socket: websockets' send() per message would make the
            # feed, not the collector, the bottleneck of a benchmark. Same extensions, same state.
            transport.write(b"".join(f.serialize(mask=False, extensions=protocol.extensions) for f in frames))
            if sub.first_id is None:
                sub.first_id = first
            sub.last_id = last

    # controls (call through FeedThread.call from another thread)

    def send_raw(self, message: bytes | str, *, symbol: str | None = None) -> None:
        """Send one message as it is (text for str, binary for bytes) to every subscriber."""
        for market in self.markets.values():
            if symbol is not None and market.symbol != symbol:
                continue
            for sub in market.subscribers:
                self._tasks.append(asyncio.create_task(sub.connection.send(message)))

    def announce_shutdown(self, close_after: float) -> None:
        """Binance's maintenance notice, then the old connections are closed `close_after` seconds later."""
        self._announce([sub.connection for m in self.markets.values() for sub in m.subscribers], close_after)

    def _announce(self, doomed: list[ServerConnection], close_after: float) -> None:
        notice = f'{{"e":"serverShutdown","E":{time.time_ns() // 1_000_000}}}'
        for connection in doomed:
            self._tasks.append(asyncio.create_task(connection.send(notice)))

        async def close_later() -> None:
            await asyncio.sleep(close_after)
            for connection in doomed:
                await connection.close(1001, "server shutdown")

        self._tasks.append(asyncio.create_task(close_later()))

    def send_too_big_and_ignore_close(self, symbol: str, size: int) -> None:
        """One message of `size` bytes to every connection of `symbol`, then stop reading from them while the
        trades go on: a peer that keeps sending after the client failed the connection (1009, message too big)
        and never reads the client's close frame."""
        for sub in self.markets[symbol].subscribers:
            protocol, transport = sub.connection.protocol, sub.connection.transport
            transport.write(Frame(Opcode.TEXT, b"x" * size).serialize(mask=False, extensions=protocol.extensions))
            transport.pause_reading()

    def skip_trades(self, symbol: str, count: int) -> None:
        """Trades that happen but are never sent: what a client sees as a gap in trade ids."""
        market = self.markets[symbol]
        self.skipped.update((symbol, i) for i in range(market.next_id, market.next_id + count))
        market.next_id += count

    def replay_trades(self, symbol: str, count: int) -> None:
        """Send the last `count` trades again, byte for byte, as a server replaying its stream would.
        Needs `keep_messages`."""
        if self.messages is None:
            raise RuntimeError("replay_trades needs a feed started with keep_messages=True")
        market = self.markets[symbol]
        first = market.next_id - count
        frames = [Frame(Opcode.TEXT, self.messages[symbol, i]) for i in range(first, market.next_id)
                  if (symbol, i) in self.messages]
        self._broadcast(market, frames, first, market.next_id - 1)

    def ban(self, seconds: float) -> None:
        """Answer every handshake for `seconds` with 418 and the ban's remaining time as Retry-After, as
        Binance does to an IP that kept connecting after 429s. Open connections are not touched."""
        self._banned_until = time.monotonic() + seconds

    def throttle(self, fraction: float, retry_after: int) -> None:
        """Answer this fraction of handshakes with 429 and Retry-After (seconds); 0 turns it off."""
        self._throttle_fraction, self._throttle_retry_after = fraction, retry_after

    def drop_connections(self) -> None:
        """Cut every connection without a close frame, as a network failure does."""
        for market in self.markets.values():
            for sub in market.subscribers:
                sub.connection.transport.abort()

    def go_silent(self) -> None:
        """Stop sending and stop reading (so pings go unanswered) while keeping the TCP connections open."""
        self.silent = True
        for market in self.markets.values():
            for sub in market.subscribers:
                sub.connection.transport.pause_reading()
                if sub.connection.keepalive_task is not None:
                    sub.connection.keepalive_task.cancel()

    def connection_count(self, symbol: str | None = None) -> int:
        return sum(len(m.subscribers) for m in self.markets.values() if symbol in (None, m.symbol))

    def sent_ids(self, symbol: str) -> set[int]:
        """Every trade id written to some connection of `symbol` (closed and open connections)."""
        ranges = [(first, last) for s, first, last in self.sent_ranges if s == symbol]
        ranges += [
            (sub.first_id, sub.last_id)
            for sub in self.markets.get(symbol, Market(symbol)).subscribers
            if sub.first_id is not None and sub.last_id is not None
        ]
        return {i for first, last in ranges for i in range(first, last + 1) if (symbol, i) not in self.skipped}

    # lifecycle

    async def start(self) -> None:
        self._server = await serve(
            self._handler, "127.0.0.1", self.port, process_request=self._process_request,
            ping_interval=self.ping_interval, ping_timeout=None if self.ping_interval is None else 60,
            compression="deflate",
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # A silent connection cannot finish a closing handshake; stopping must not wait for one.
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class FeedThread:
    """A Feed on its own event loop in a background thread, for code that is not async (tests, demo)."""

    def __init__(self, **kwargs: Any) -> None:
        self.feed = Feed(**kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="feed", daemon=True)

    def __enter__(self) -> FeedThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.feed.start(), self.loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.feed.stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on the feed's loop and return its result."""

        async def run() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.feed", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--rate", type=float, default=100.0, help="trades per second per symbol")
    parser.add_argument("--burst-seconds", type=float, default=0.05)
    parser.add_argument("--ping-interval", type=float, default=BINANCE_PING_SECONDS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    async def serve_forever() -> None:
        feed = Feed(port=args.port, rate=args.rate, burst_seconds=args.burst_seconds, ping_interval=args.ping_interval)
        await feed.start()
        print(f"feed listening on {feed.url}/ws/<symbol>@trade", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever())


if __name__ == "__main__":
    main()
