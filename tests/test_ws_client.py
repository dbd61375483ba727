"""The WebSocket shell in-process, against real sockets on loopback."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from collector.ws_client import Link, connect, tls_context


def test_every_connect_shares_one_tls_context(monkeypatch):
    """Building a context loads the CA store (tens of ms on the event loop): once per process, not per connect."""
    made: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def counting(*args, **kwargs) -> ssl.SSLContext:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    tls_context.cache_clear()

    async def three_connects() -> None:
        # A server that accepts and hangs up: each TLS handshake fails after the context was taken.
        server = await asyncio.start_server(lambda _reader, writer: writer.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            for name in range(3):
                link = Link(name, f"wss://127.0.0.1:{port}/ws/btcusdt@trade", compression=False,
                            on_messages=lambda _link, _messages: None)
                with pytest.raises(OSError):
                    await connect(link)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(three_connects())
    tls_context.cache_clear()
    assert len(made) == 1
