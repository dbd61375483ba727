"""Binance WebSocket connections, one stream per symbol.

A connection is websockets' sans-I/O `ClientProtocol` driven straight from asyncio's transport callbacks:
frames are handed on from `data_received` without a queue or a task switch per message, which halves the
cost of an event-loop wake-up compared with the library's asyncio client (see bench/). `Link` keeps that
client's safeguards: the transport is closed once the protocol ends the stream (TLS included), and cut when
a close the protocol expects does not come in time.

What to do with the connections (connect, ping, hand over, switch, back off) is decided by
`connection_policy.py`; `SymbolStream` feeds it events and carries out its actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import ssl
from collections.abc import Callable
from typing import Protocol

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from collector.connect_budget import retry_after_seconds
from collector.connect_gate import BANNED, TOO_MANY, ConnectGate
from collector.connection_policy import (
    Abort,
    Action,
    Close,
    ConnectionPolicy,
    Deliver,
    Failure,
    Gap,
    OpenLink,
    Ping,
    Reconnected,
    Reject,
    RequestConnect,
    Switch,
    Withdraw,
)
from collector.frames import Trade, parse_message

log = logging.getLogger("collector.ws")

OPEN_TIMEOUT_SECONDS = 10.0
# How long the peer has to end the connection once the protocol expects it to (after a close frame either
# way, or a failure): then the transport is cut.
CLOSE_TIMEOUT_SECONDS = 2.0
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

    def on_trades(self, trades: list[Trade]) -> None:
        """Trades of one socket read, in order."""

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


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One context for every connection of the process: building one loads the CA store (tens of ms on the
    event loop), which every reconnect and handover would otherwise pay."""
    return ssl.create_default_context()


class Link(asyncio.Protocol):
    """One WebSocket connection; `name` is the number the connection policy gave it."""

    def __init__(self, name: int, url: str, *, compression: bool, on_messages: MessagesHandler) -> None:
        self.name = name
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
        # When the protocol last accepted a frame (data, ping, pong or close): what liveness is measured from.
        # Bytes it discards (after a close or a failure) do not count.
        self.last_frame = self.loop.time()
        self._close_deadline: asyncio.TimerHandle | None = None
        self._fragments: list[bytes] = []
        self._fragment_text = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closed.done():  # given up while the connection was being made
            transport.abort()
            return
        self.ws.send_request(self.ws.connect())
        self._send()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        self._send()
        events = ws.events_received()
        if events:
            self.last_frame = self.loop.time()
        if self._close_deadline is None and ws.close_expected():
            self._closing()
        messages: list[tuple[bytes, bool]] = []
        for event in events:
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
        # Never keep a half-closed connection: the WebSocket closing handshake needs no writes after EOF (and an
        # SSL transport cannot stay half open anyway).
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent: the protocol ends CLOSED
        if self._close_deadline is not None:
            self._close_deadline.cancel()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during handshake: {exc or 'EOF'}"))
        if not self.closed.done():
            close = self.ws.close_rcvd
            detail = (f"close code {close.code} {close.reason!r}" if close is not None
                      else f"no close frame ({exc or 'EOF'})")
            self.closed.set_result(detail)

    # our side

    def _closing(self) -> None:
        """The protocol expects the connection to end: the peer gets `CLOSE_TIMEOUT_SECONDS` to do so."""
        self._close_deadline = self.loop.call_later(CLOSE_TIMEOUT_SECONDS, self.abort, "close timed out")
        exc = self.ws.parser_exc
        if exc is not None:
            log.warning("%s: the connection failed: %s", self.ws.uri.resource_name, exc)

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
            else:
                # TLS cannot half-close: the protocol's end of stream is the end of the connection.
                transport.close()

    def ping(self) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_ping(b"keepalive")
            self._send()

    def abort(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.transport is not None:
            self.transport.abort()

    def close(self, reason: str) -> None:
        """Polite close; the transport is cut if the server does not finish the handshake in time."""
        if self.transport is None or self.closed.done() or self.ws.state is not State.OPEN:
            self.abort(reason)
            return
        self.ws.send_close(1000, reason)
        self._send()
        if self._close_deadline is None:
            self._closing()


async def connect(link: Link) -> None:
    """Open `link` and finish the handshake; logs the negotiated extensions. Frames that arrive with the
    handshake response already go to the link's handler, so the caller routes by link identity."""
    uri = link.ws.uri
    context = tls_context() if uri.secure else None
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
    """Keeps one symbol's trade stream flowing, as its `ConnectionPolicy` decides: reconnects with backoff,
    detects dead links, and hands over to a fresh connection before Binance's 24-hour cut or on a
    `serverShutdown` notice. Every attempt waits for the instance's connection budget (`gate`) first."""

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
        self.compression = compression
        self.policy = ConnectionPolicy(symbol=symbol, reconnect_delay=reconnect_delay, ping_interval=ping_interval,
                                       connection_lifetime=connection_lifetime, rng=rng or random.Random())
        if parse_uri(self.url).secure:
            tls_context()  # before the first connect, not during it
        self._links: dict[int, Link] = {}
        # The link whose trades go straight to the sink (see `_on_messages`).
        self._direct: Link | None = None
        self._opening: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    # control, from the service

    def pause(self) -> None:
        """Close the connection and stay disconnected until `resume` (disk budget reached)."""
        self._apply(self.policy.pause(asyncio.get_running_loop().time()))

    def resume(self) -> None:
        self._apply(self.policy.resume(asyncio.get_running_loop().time()))

    def stop(self) -> None:
        self._apply(self.policy.stop(asyncio.get_running_loop().time()))

    # messages, from the links

    def _on_messages(self, link: Link, messages: list[tuple[bytes, bool]]) -> None:
        symbol = self.symbol
        parsed = [parse_message(data, text, symbol) for data, text in messages]
        if link is self._direct:
            trades = [p for p in parsed if isinstance(p, Trade)]
            if len(trades) == len(parsed):
                # The common case: only trades, on the one link in service. The sink takes them in one go.
                self.sink.on_trades(trades)
                return
        self._apply(self.policy.received(link.name, parsed, link.loop.time()))

    # the loop

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self.policy
        self._apply(policy.start(loop.time()))
        due = policy.next_tick(loop.time())
        try:
            while not policy.finished:
                self._wake.clear()
                timeout = due - loop.time()
                if timeout > 0:
                    # Every event given to the policy wakes us, since it may bring the next tick forward.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(None if timeout == math.inf else timeout):
                            await self._wake.wait()
                now = loop.time()
                if now >= due:
                    self._apply(policy.tick(now, {n: link.last_frame for n, link in self._links.items()}))
                    due = policy.next_tick(now)
                else:
                    due = min(due, policy.next_tick(now))
        finally:
            for link in list(self._links.values()):
                link.abort("collector stopping")
            for task in self._opening:
                task.cancel()

    def _apply(self, actions: list[Action]) -> None:
        """Carry out the policy's actions, in order."""
        for action in actions:
            kind = type(action)
            if kind is Deliver:
                self.sink.on_trades(action.trades)
            elif kind is Reject:
                self.sink.on_rejected(action.reason)
            elif kind is RequestConnect:
                self.gate.request(self, action.kind).add_done_callback(self._granted)
            elif kind is Withdraw:
                self.gate.withdraw(self)
            elif kind is OpenLink:
                self._open(action.link)
            elif kind is Ping:
                self._links[action.link].ping()
            elif kind is Close:
                if (link := self._links.get(action.link)) is not None:
                    link.close(action.reason)
            elif kind is Abort:
                if (link := self._links.get(action.link)) is not None:
                    link.abort(action.reason)
            elif kind is Reconnected:
                self.sink.on_reconnect()
            elif kind is Gap:
                log.debug("%s: the stream may have a gap here (%s)", self.symbol, action.reason)
            else:
                assert kind is Switch
        direct = self.policy.direct
        self._direct = None if direct is None else self._links.get(direct)
        self._wake.set()

    def _granted(self, granted: asyncio.Future[None]) -> None:
        if not granted.cancelled():
            self._apply(self.policy.granted(asyncio.get_running_loop().time(), self.sink.last_trade_id()))

    def _open(self, name: int) -> None:
        link = self._links[name] = Link(name, self.url, compression=self.compression, on_messages=self._on_messages)
        link.closed.add_done_callback(functools.partial(self._closed, link))
        task = asyncio.create_task(self._connect(link), name=f"connect-{self.symbol}-{name}")
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _connect(self, link: Link) -> None:
        policy, loop = self.policy, link.loop
        try:
            await connect(link)
        except LocationRefused as exc:
            self._apply(policy.failed(link.name, loop.time(), Failure.REFUSED, str(exc)))
        except RateLimited as exc:
            # The gate logs it once for the instance and holds every attempt back.
            self.gate.refused(exc.status, exc.retry_after)
            self._apply(policy.failed(link.name, loop.time(), Failure.RATE_LIMITED, str(exc)))
        except (OSError, TimeoutError) as exc:
            detail = f"connect to {self.url}: {exc or type(exc).__name__}"
            self._apply(policy.failed(link.name, loop.time(), Failure.ERROR, detail))
        else:
            self._apply(policy.opened(link.name, loop.time()))

    def _closed(self, link: Link, closed: asyncio.Future[str]) -> None:
        self._links.pop(link.name, None)
        self._apply(self.policy.closed(link.name, link.loop.time(), closed.result()))
