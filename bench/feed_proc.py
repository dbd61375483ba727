"""The benchmark's feed, in its own process: `python -m bench.feed_proc [--flood | --rate R]`.

Steady mode is `sandbox.feed.Feed` as it is (bursts every `--burst-seconds`). Flood mode reuses the same
server (handshake, paths, permessage-deflate negotiation) but replaces the per-symbol producer: each
connection gets a cycle of pre-built, pre-serialised frames written as fast as the socket drains, so the
client, not the feed, is the bottleneck (a websockets server calling `send()` tops out below a bare client).
Prints `PORT <n>` once listening; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import time

from websockets.asyncio.server import ServerConnection
from websockets.extensions import Extension
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from sandbox.feed import FIRST_TRADE_ID, Feed, trade_message

# 100,000 distinct trades (~14 MB) per cycle: a 2 MiB data file holds ~15,500, so gzip never sees a file
# repeat itself and its ratio stays that of real trades. Ids go back where the cycle starts again; the
# collector starts a new file there, as for any replay: one extra file per 100,000 trades.
CYCLE_MESSAGES = 100_000
# Writes are whole frames, ~256 KiB at a time: websockets may write a pong or close frame between two of
# our writes, which must never land inside one of our frames.
CHUNK_BYTES = 256 * 1024
WRITE_BUFFER_HIGH = 1 << 20


def cycle_messages(symbol: str, count: int = CYCLE_MESSAGES) -> list[bytes]:
    rng = random.Random(7)
    now_ms = time.time_ns() // 1_000_000
    return [trade_message(symbol, FIRST_TRADE_ID + n, now_ms, rng) for n in range(count)]


def frame_chunks(messages: list[bytes], extensions: list[Extension]) -> list[bytes]:
    """The cycle serialised with the connection's own extensions, cut at frame boundaries.

    With permessage-deflate and context takeover, replaying the cycle is still valid: its first frame was
    compressed from an empty window, so no frame of the cycle refers back to data before the cycle, and
    deflate back-references are relative, so each replay decodes to the same messages.
    """
    chunks: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for message in messages:
        frame = Frame(Opcode.TEXT, message).serialize(mask=False, extensions=extensions)
        pending.append(frame)
        size += len(frame)
        if size >= CHUNK_BYTES:
            chunks.append(b"".join(pending))
            pending, size = [], 0
    if pending:
        chunks.append(b"".join(pending))
    return chunks


class FloodFeed(Feed):
    """Every connection of `/ws/<symbol>@trade` gets that symbol's trades as fast as it reads them."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._messages: dict[str, list[bytes]] = {}
        # Serialised once per symbol and negotiated extensions (~0.2 s, or ~0.5 s with deflate), not per connection.
        self._chunks: dict[tuple[str, str], list[bytes]] = {}

    async def _handler(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        symbol = connection.request.path.split("/")[-1].split("@")[0].upper()
        messages = self._messages.get(symbol)
        if messages is None:
            messages = self._messages[symbol] = cycle_messages(symbol)
        extensions = connection.protocol.extensions
        key = (symbol, repr(extensions))
        chunks = self._chunks.get(key)
        if chunks is None:
            # Compressed by this connection's encoder from an empty window: valid for any connection that
            # negotiated the same parameters (its decoder starts empty too). Only our frames use the encoder.
            chunks = self._chunks[key] = frame_chunks(messages, extensions)
        transport = connection.transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        while True:
            for chunk in chunks:
                if connection.protocol.state is not State.OPEN or transport.is_closing():
                    await connection.wait_closed()
                    return
                transport.write(chunk)
                if connection.paused:
                    try:
                        await connection.drain()
                    except ConnectionError:
                        # A client that stops reading mid-flood resets the connection: that is its way out.
                        return
                else:
                    # drain() does not yield when not paused; the loop must still read close frames.
                    await asyncio.sleep(0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feed_proc", description=__doc__.splitlines()[0])
    parser.add_argument("--flood", action="store_true", help="as fast as the client reads")
    parser.add_argument("--rate", type=float, default=3000.0, help="steady mode: trades/s per symbol")
    parser.add_argument("--burst-seconds", type=float, default=0.05)
    args = parser.parse_args()

    async def serve() -> None:
        # No server pings: the runs are short, and a flood must not be interleaved with control frames.
        if args.flood:
            feed: Feed = FloodFeed(port=0, ping_interval=None)
        else:
            feed = Feed(port=0, rate=args.rate, burst_seconds=args.burst_seconds, ping_interval=None)
        await feed.start()
        print(f"PORT {feed.port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await feed.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
