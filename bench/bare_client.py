"""The ceiling: a bare `websockets` asyncio client that receives and discards, one connection per symbol.

`python -m bench.bare_client URL SYMBOLS --compression none|deflate` prints `connected <extensions>` per
connection once its first message is in (a feed may take a moment to prepare its frames), then runs until
SIGTERM and prints `count <messages>`. The benchmark reads its CPU from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.client import ClientConnection, connect

# The collector's own protocol limit; the same here so both parse the same frames the same way.
MAX_SIZE = 1 << 20


async def receive(ws: ClientConnection, counter: list[int]) -> None:
    async for _message in ws:
        counter[0] += 1


async def run(url: str, symbols: list[str], compression: str | None) -> int:
    counter = [0]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    connections = []
    for symbol in symbols:
        ws = await connect(f"{url}/ws/{symbol.lower()}@trade", compression=compression, max_size=MAX_SIZE)
        assert ws.response is not None
        await ws.recv()
        counter[0] += 1
        print(f"connected {symbol} {ws.response.headers.get('Sec-WebSocket-Extensions', 'none')}", flush=True)
        connections.append(ws)
    tasks = [asyncio.create_task(receive(ws, counter)) for ws in connections]
    await stop.wait()
    count = counter[0]
    # Keep receiving while closing: a reader that stops fills websockets' queue, reading pauses, and the
    # server's close frame behind the flood is never seen (a 10 s close timeout).
    await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_client", description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("symbols", help="comma-separated")
    parser.add_argument("--compression", choices=("none", "deflate"), default="none")
    args = parser.parse_args()
    compression = None if args.compression == "none" else "deflate"
    count = asyncio.run(run(args.url, args.symbols.split(","), compression))
    print(f"count {count}", flush=True)


if __name__ == "__main__":
    main()
