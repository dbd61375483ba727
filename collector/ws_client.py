"""Binance WebSocket connections, one stream per symbol.

A connection is websockets' sans-I/O `ClientProtocol` driven straight from asyncio's transport callbacks:
frames are handed on from `data_received` without a queue or a task switch per message, which halves the
cost of an event-loop wake-up compared with the library's asyncio client (see bench/).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from collector.backoff import (
    RECONNECT_CAP_SECONDS,
    REFUSED_LOCATION_DELAY_SECONDS,
    STABLE_CONNECTION_SECONDS,
    Backoff,
)
from collector.connect_budget import Kind, retry_after_seconds
from collector.connect_gate import BANNED, TOO_MANY, ConnectGate
from collector.frames import Notice, Rejected, Trade, parse_message
from collector.handover import Handover, planned_lifetime

log = logging.getLogger("collector.ws")

OPEN_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 2.0
# How long a new connection may take to overlap the old one before the old one is closed anyway.
HANDOVER_TIMEOUT_SECONDS = 10.0
# The protocol's own limit is a backstop; oversized messages below it are rejected by frames.parse_message.
PROTOCOL_MAX_SIZE = 1 << 20
REFUSED_STATUSES = (403, 451)
RATE_LIMIT_STATUSES = (TOO_MANY, BANNED)
# Bound once: looking up an Enum member costs ~25 ns, and `data_received` would do it per frame.
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT

# Every complete message of one socket read, in order: (data, is_text). One call per read, not per message.
MessagesHandler = Callable[["Link", list[tuple[bytes, bool]]], None]


class Sink(Protocol):
    """Where one symbol's stream delivers: the collector's spool side for that symbol."""

    def on_trade(self, trade: Trade) -> None: ...

    def on_trades(self, trades: list[Trade]) -> None:
        """Trades of one socket read, in order; the same as `on_trade` for each."""

    def on_rejected(self, reason: str) -> None: ...

    def on_reconnect(self) -> None: ...

    def last_trade_id(self) -> int | None: ...


class LocationRefused(Exception):
    """Binance answered the handshake with 451/403: it serves no one from here."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class RateLimited(Exception):
    """Binance answered the handshake with 429 (too many attempts) or 418 (this IP is banned)."""

    def __init__(self, status: int, retry_after: float) -> None:
        super().__init__(f"HTTP {status}, Retry-After {retry_after:g} s")
        self.status = status
        self.retry_after = retry_after


def stream_url(ws_url: str, symbol: str) -> str:
    return f"{ws_url}/ws/{symbol.lower()}@trade"


class Link(asyncio.Protocol):
    """One WebSocket connection."""

    def __init__(self, url: str, *, compression: bool, on_messages: MessagesHandler) -> None:
        self.ws = ClientProtocol(
            parse_uri(url),
            extensions=enable_client_permessage_deflate(None) if compression else None,
            max_size=PROTOCOL_MAX_SIZE,
        )
        self.on_messages = on_messages
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[str] = self.loop.create_future()
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self.last_rx = self.loop.time()
        self._fragments: list[bytes] = []
        self._fragment_text = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._send()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        self.ws.receive_data(data)
        self._send()
        messages: list[tuple[bytes, bool]] = []
        for event in self.ws.events_received():
            if type(event) is not Frame:
                self._handshake_done(event)
                continue
            opcode = event.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if event.fin:
                    messages.append((bytes(event.data), opcode is _TEXT))
                else:
                    self._fragments, self._fragment_text = [bytes(event.data)], opcode is _TEXT
            elif opcode is _CONT:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    message, self._fragments = b"".join(self._fragments), []
                    messages.append((message, self._fragment_text))
        if messages:
            self.on_messages(self, messages)

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._send()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during handshake: {exc or 'EOF'}"))
        if not self.closed.done():
            code = self.ws.close_rcvd.code if self.ws.close_rcvd is not None else None
            reason = self.ws.close_rcvd.reason if self.ws.close_rcvd is not None else ""
            detail = f"close code {code} {reason!r}" if code is not None else f"no close frame ({exc or 'EOF'})"
            self.closed.set_result(detail)

    # our side

    def _handshake_done(self, response: Response) -> None:
        if self.opened.done():
            return
        exc = self.ws.handshake_exc
        if exc is None:
            self.opened.set_result(response.headers.get("Sec-WebSocket-Extensions", "none"))
        elif isinstance(exc, InvalidStatus) and exc.response.status_code in REFUSED_STATUSES:
            self.opened.set_exception(LocationRefused(exc.response.status_code))
        elif isinstance(exc, InvalidStatus) and exc.response.status_code in RATE_LIMIT_STATUSES:
            retry_after = retry_after_seconds(exc.response.headers.get("Retry-After"))
            self.opened.set_exception(RateLimited(exc.response.status_code, retry_after))
        else:
            self.opened.set_exception(ConnectionError(f"handshake failed: {exc}"))

    def _send(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    def ping(self) -> None:
        self.ws.send_ping(b"keepalive")
        self._send()

    def abort(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.transport is not None:
            self.transport.abort()

    async def close(self, reason: str) -> None:
        """Polite close; the transport is cut if the server does not finish the handshake in time."""
        if self.transport is None or self.closed.done():
            self.abort(reason)
            return
        try:
            self.ws.send_close(1000, reason)
        except Exception:  # noqa: BLE001 - already closing or failed: cutting the transport is all that is left
            self.abort(reason)
            return
        self._send()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            self.abort(reason)


async def connect(link: Link) -> None:
    """Open `link` and finish the handshake; logs the negotiated extensions. Frames that arrive with the
    handshake response already go to the link's handler, so the caller routes by link identity."""
    uri = link.ws.uri
    context = ssl.create_default_context() if uri.secure else None
    try:
        async with asyncio.timeout(OPEN_TIMEOUT_SECONDS):
            await link.loop.create_connection(
                lambda: link, uri.host, uri.port, ssl=context, server_hostname=uri.host if context else None
            )
            extensions = await link.opened
    except BaseException:
        link.abort("handshake failed")
        raise
    log.info("connected %s (extensions: %s)", uri.resource_name, extensions)


class SymbolStream:
    """Keeps one symbol's trade stream flowing: reconnects with backoff, detects dead links, and hands
    over to a fresh connection before Binance's 24-hour cut or on a `serverShutdown` notice. Every attempt
    waits for the instance's connection budget (`gate`) first."""

    def __init__(
        self,
        *,
        symbol: str,
        ws_url: str,
        sink: Sink,
        gate: ConnectGate,
        compression: bool,
        reconnect_delay: float,
        ping_interval: float,
        connection_lifetime: float,
        rng: random.Random | None = None,
    ) -> None:
        self.symbol = symbol
        self.url = stream_url(ws_url, symbol)
        self.sink = sink
        self.gate = gate
        self._on_trade = sink.on_trade  # bound once: called for every message off the common path
        self.compression = compression
        self.ping_interval = ping_interval
        self.connection_lifetime = connection_lifetime
        self._rng = rng or random.Random()
        self.backoff = Backoff(first=reconnect_delay, cap=RECONNECT_CAP_SECONDS, rng=self._rng)
        self._running = asyncio.Event()
        self._running.set()
        self._stopping = False
        self._wake = asyncio.Event()
        # The link whose trades are delivered; during a handover the new link's trades go to `_handover`.
        self._link: Link | None = None
        self._handover: Handover | None = None
        # When the next planned handover is due (loop time), and why.
        self._handover_at = float("inf")
        self._handover_why = ""
        self._connections = 0
        self._retry_after = 0.0
        self._stale_trades = 0

    # control, from the service

    def pause(self) -> None:
        """Close the connection and stay disconnected until `resume` (disk budget reached)."""
        self._running.clear()
        self._wake.set()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stopping = True
        self._running.set()
        self._wake.set()

    # messages, from the links

    def _on_messages(self, link: Link, messages: list[tuple[bytes, bool]]) -> None:
        symbol = self.symbol
        parsed = [parse_message(data, text, symbol) for data, text in messages]
        if link is self._link and self._handover is None:
            trades = [p for p in parsed if isinstance(p, Trade)]
            if len(trades) == len(parsed):
                # The common case: only trades, on the one link in service. The sink takes them in one go.
                self.sink.on_trades(trades)
                return
        for one in parsed:
            self._on_parsed(link, one)

    def _on_parsed(self, link: Link, parsed: Trade | Notice | Rejected) -> None:
        if type(parsed) is Trade:
            handover = self._handover
            if link is self._link:
                if handover is None:
                    self._on_trade(parsed)
                    return
                if handover.from_old(parsed):
                    self._on_trade(parsed)
            elif handover is not None:
                for trade in handover.from_new(parsed):
                    self._on_trade(trade)
            else:
                # A link being closed after a handover. When the handover joined, the current link has
                # delivered these too; when it did not, they fall in the reported gap. Counted either way.
                self._stale_trades += 1
                return
            if handover.joined:
                self._wake.set()
            return
        if parsed is Notice.SERVER_SHUTDOWN:
            reason = "serverShutdown notice"
            if link is self._link and self._handover is None:
                log.warning("%s: serverShutdown announced, handing over to a new connection", self.symbol)
                self._handover_at, self._handover_why = 0.0, "serverShutdown"
                self._wake.set()
        else:
            assert isinstance(parsed, Rejected)
            reason = parsed.reason
        self.sink.on_rejected(reason)

    # the loop

    async def run(self) -> None:
        try:
            while not self._stopping:
                await self._running.wait()
                if self._stopping:
                    break
                if self._link is None and not await self._connect():
                    continue
                assert self._link is not None
                await self._serve(self._link)
        finally:
            if self._link is not None:
                await self._link.close("collector stopping")
                self._link = None

    async def _admitted(self, kind: Kind) -> bool:
        """Until the connection budget grants one attempt (true), or we stop or pause (false)."""
        granted = self.gate.request(self, kind)
        while not granted.done():
            if self._stopping or not self._running.is_set():
                self.gate.withdraw(self)
                return False
            await self._wait(granted, timeout=None)
        return True

    async def _open(self) -> Link | None:
        """A new open link, or None after a failed attempt (the caller decides what to do next)."""
        link = Link(self.url, compression=self.compression, on_messages=self._on_messages)
        if self._handover is None:
            self._link = link
        try:
            await connect(link)
        except LocationRefused as exc:
            log.error(
                "%s: this location is refused by Binance (%s); deploy to another region or set "
                "COLLECTOR_WS_URL; retrying in %.0f s", self.symbol, exc, REFUSED_LOCATION_DELAY_SECONDS,
            )
            self._retry_after = REFUSED_LOCATION_DELAY_SECONDS
        except RateLimited as exc:
            # The gate logs it once for the instance and holds every attempt back; retry through it at once.
            self.gate.refused(exc.status, exc.retry_after)
            self._retry_after = 0.0
            log.debug("%s: connect refused (%s)", self.symbol, exc)
        except (OSError, TimeoutError) as exc:
            self._retry_after = self.backoff.next()
            log.warning("%s: connect to %s failed (%s); retrying in %.1f s", self.symbol, self.url,
                        exc or type(exc).__name__, self._retry_after)
        else:
            self._connections += 1
            if self._connections > 1:
                self.sink.on_reconnect()
            return link
        if self._link is link:
            self._link = None
        return None

    async def _connect(self) -> bool:
        """Retries until connected (true), or until stopped or paused (false)."""
        while not self._stopping and self._running.is_set():
            kind = Kind.FIRST if self._connections == 0 else Kind.RECONNECT
            if await self._admitted(kind) and await self._open() is not None:
                return True
            await self._wait(timeout=self._retry_after)
        return False

    async def _wait(self, *futures: asyncio.Future[Any], timeout: float | None) -> None:
        """Until one of `futures` is done, `_wake` is set, or `timeout` passes; at once when stopping or
        paused, so a `stop()` or `pause()` that came while we were busy is never slept through."""
        if self._stopping or not self._running.is_set():
            return
        self._wake.clear()
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([*futures, waker], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()

    async def _serve(self, link: Link) -> None:
        """Until the link ends or is replaced by a handover."""
        loop = link.loop
        started = loop.time()
        # Each connection draws its own lifetime, so the instance's handovers never fall together.
        lifetime = planned_lifetime(self.connection_lifetime, self._rng)
        self._handover_at = started + lifetime
        self._handover_why = f"planned after {lifetime:.0f} s"
        # A due handover waits here for the connection budget, while the link is still watched and pinged.
        granted: asyncio.Future[None] | None = None
        try:
            while True:
                due = self._handover_at if granted is None else float("inf")
                await self._wait(link.closed, *([granted] if granted else []),
                                 timeout=max(0.0, min(self.ping_interval / 2, due - loop.time())))
                now = loop.time()
                if link.closed.done():
                    reason = link.closed.result()
                    break
                if self._stopping or not self._running.is_set():
                    reason = "collector stopping" if self._stopping else "spool full: pausing"
                    await link.close(reason)
                    break
                silent = now - link.last_rx
                if silent > 2 * self.ping_interval:
                    reason = f"no frame for {silent:.0f} s"
                    link.abort(reason)
                    break
                if silent > self.ping_interval:
                    link.ping()
                if granted is None and now >= self._handover_at:
                    granted = self.gate.request(self, Kind.HANDOVER)
                if granted is not None and granted.done():
                    granted = None
                    if await self._hand_over(link, self._handover_why):
                        return
                    # The old link still works: try again soon, well before Binance cuts it.
                    self._handover_at = loop.time() + self.backoff.next()
        finally:
            if granted is not None:
                self.gate.withdraw(self)
        self._link = None
        if self._stopping or not self._running.is_set():
            log.info("%s: disconnected: %s", self.symbol, reason)
            return
        if loop.time() - started >= STABLE_CONNECTION_SECONDS:
            self.backoff.reset()
        delay = self.backoff.next()
        log.warning("%s: disconnected: %s; reconnecting in %.2f s", self.symbol, reason, delay)
        await self._wait(timeout=delay)

    async def _hand_over(self, old: Link, why: str) -> bool:
        """Open a new link while `old` keeps delivering, join them by trade id, then close `old`.
        False when `old` stays in service: the new link failed, died, or delivered nothing in time, or we
        are stopping or pausing. Trades held from the new link are delivered either way."""
        log.info("%s: handing over (%s): opening the new connection before closing the old one", self.symbol, why)
        handover = self._handover = Handover(self.sink.last_trade_id())
        new = await self._open()
        if new is None:
            self._handover = None
            return False
        loop = old.loop
        deadline = loop.time() + HANDOVER_TIMEOUT_SECONDS
        while (not handover.joined and not old.closed.done() and not new.closed.done()
               and loop.time() < deadline and not self._stopping and self._running.is_set()):
            await self._wait(old.closed, new.closed, timeout=deadline - loop.time())
        busy = self._stopping or not self._running.is_set()
        # Switch when joined; else only to a live new link that delivers, when the old one is gone or we
        # gave up waiting for the overlap (then the gap is reported).
        overlap_missed = not handover.joined and not old.closed.done() and bool(handover.held) and not busy
        switch = handover.joined or (not new.closed.done() and (old.closed.done() or overlap_missed))
        if switch and overlap_missed:
            log.warning("%s: new connection did not overlap the old one in %.0f s; switching anyway",
                        self.symbol, HANDOVER_TIMEOUT_SECONDS)
        self._handover = None
        for trade in handover.release():
            self._on_trade(trade)
        if not switch:
            log.warning("%s: handover abandoned (%s); keeping the old connection", self.symbol,
                        "new connection closed" if new.closed.done() else
                        "stopping" if busy else "new connection silent")
            await new.close("handover abandoned")
            return False
        self._link, self._stale_trades = new, 0
        await old.close("handover to a new connection")
        log.info("%s: handover done at trade id %s", self.symbol, handover.last_id)
        if self._stale_trades:
            log.log(logging.INFO if handover.joined else logging.WARNING,
                    "%s: %d trade(s) arrived on the replaced connection while it closed and were dropped (%s)",
                    self.symbol, self._stale_trades,
                    "the new connection had them" if handover.joined else "they fall in the reported gap")
        return True
