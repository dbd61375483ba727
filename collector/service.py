"""Wiring: streams feed the rotators, rotated files are sealed off the event loop and shipped.

This is the asyncio shell around the sans-I/O core (frames, rotator, stats, manifest, keys, handover):
it only moves bytes between sockets, spool files, gzip and S3, and keeps time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from io import BufferedWriter
from typing import Any

import orjson

from collector.config import Config
from collector.frames import Trade
from collector.rotator import Rotator, SpoolFile
from collector.s3_uploader import S3Uploader, make_client
from collector.shipper import Shipper
from collector.spool import Spool
from collector.ws_client import SymbolStream

log = logging.getLogger("collector")

# Unwritten bytes reach the OS at least this often, so a crash loses nothing received a second ago.
TICK_SECONDS = 0.2
DISK_CHECK_SECONDS = 1.0
DISK_LOG_SECONDS = 60.0
# Receiving resumes once shipping has brought the spool this far under its budget.
DISK_RESUME_FRACTION = 0.9
REJECT_LOG_SECONDS = 10.0
STREAM_STOP_SECONDS = 5.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class RejectLog:
    """At most one log line per symbol per interval for rejected messages, with the count since the last."""

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self._last: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}

    def should_log(self, symbol: str, now_ms: int) -> int | None:
        """None to stay silent; otherwise how many rejections were kept quiet before this one."""
        if now_ms - self._last.get(symbol, -self.interval_ms) >= self.interval_ms:
            self._last[symbol] = now_ms
            return self._suppressed.pop(symbol, 0)
        self._suppressed[symbol] = self._suppressed.get(symbol, 0) + 1
        return None


class SymbolSpool:
    """One symbol's side of the spool, and the sink of its stream: trades go into the open file; a full or
    old file is closed and handed to `seal`. Runs once per message, so it keeps its lookups short."""

    def __init__(self, *, rotator: Rotator, spool: Spool, seal: Callable[[SpoolFile], None],
                 rejects: RejectLog) -> None:
        self.symbol = rotator.symbol
        self.rotator = rotator
        self.spool = spool
        self.writer: BufferedWriter | None = None
        self._seal = seal
        self._rejects = rejects
        self._place = rotator.place

    def on_trade(self, trade: Trade) -> None:
        seal, gap = self._place(trade, time.time_ns() // 1_000_000)
        if seal is not None:
            self.seal(seal)
        writer = self.writer
        if writer is None:
            assert self.rotator.current is not None
            writer = self.writer = self.spool.open_for_append(self.rotator.current.part)
        writer.write(trade.raw + b"\n")  # one call is cheaper than two, even with the copy
        if gap is not None:
            log.warning("%s: trade ids %d..%d missing (%d)", self.symbol, gap.first, gap.last, gap.missing)

    def on_rejected(self, reason: str) -> None:
        self.rotator.note_malformed()
        quiet = self._rejects.should_log(self.symbol, wall_ms())
        if quiet is not None:
            more = f" ({quiet} more since the last report)" if quiet else ""
            log.warning("%s: message rejected: %s%s", self.symbol, reason, more)

    def on_reconnect(self) -> None:
        self.rotator.note_reconnect()

    def last_trade_id(self) -> int | None:
        return self.rotator.ids.last_id

    def seal(self, spool_file: SpoolFile) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self._seal(spool_file)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()


class Service:
    def __init__(self, config: Config, *, s3_client: Any = None) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir, bucket=config.bucket, gzip_level=config.gzip_level, clock_ms=wall_ms)
        self._stop_uploads = threading.Event()
        self.shipper = Shipper(
            spool=self.spool,
            uploader=S3Uploader(s3_client or make_client(), bucket=config.bucket,
                                attempts=config.upload_attempts, stop=self._stop_uploads),
        )
        rejects = RejectLog(int(REJECT_LOG_SECONDS * 1000))
        self.symbols = [
            SymbolSpool(
                rotator=Rotator(symbol=symbol, instance_id=config.instance_id, rotate_bytes=config.rotate_bytes,
                                rotate_seconds=config.rotate_seconds),
                spool=self.spool, seal=self._seal, rejects=rejects,
            )
            for symbol in config.symbols
        ]
        self.streams = [
            SymbolStream(symbol=sink.symbol, ws_url=config.ws_url, sink=sink, compression=config.ws_compression,
                         reconnect_delay=config.reconnect_delay, ping_interval=config.ping_interval,
                         connection_lifetime=config.connection_lifetime)
            for sink in self.symbols
        ]
        self._sealing: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._paused_since: float | None = None
        self._lag_ms: list[float] | None = [] if config.lag_report is not None else None

    # sealing

    def _seal(self, spool_file: SpoolFile) -> None:
        task = asyncio.create_task(self._seal_and_queue(spool_file))
        self._sealing.add(task)
        task.add_done_callback(self._sealing.discard)

    async def _seal_and_queue(self, spool_file: SpoolFile) -> None:
        stats = spool_file.stats
        started = time.perf_counter()
        try:
            sealed = await asyncio.to_thread(self.spool.seal, spool_file.part, stats)
        except OSError as exc:
            # The JSONL stays in the spool and is sealed by the next start's sweep.
            log.error("sealing %s failed, left in the spool: %s", spool_file.part.stem, exc)
            return
        compressed = sealed.data.stat().st_size if sealed.data else 0
        log.info(
            "rotated %s: %d records, ids %d..%d, %d -> %d bytes, %d gap(s), %d rejected, sealed in %.0f ms",
            spool_file.part.stem, stats.record_count, stats.first_trade_id, stats.last_trade_id,
            stats.uncompressed_bytes, compressed, stats.trade_id_gaps, stats.malformed_messages,
            (time.perf_counter() - started) * 1000,
        )
        self.shipper.add(sealed)

    def _seal_all(self) -> None:
        for symbol in self.symbols:
            spool_file = symbol.rotator.detach()
            if spool_file is not None:
                symbol.seal(spool_file)

    # periodic work

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_disk_check = 0.0
        while True:
            due = loop.time() + TICK_SECONDS
            await asyncio.sleep(TICK_SECONDS)
            if self._lag_ms is not None:
                # How late this timer ran: every callback that held the loop delayed it.
                self._lag_ms.append((loop.time() - due) * 1000)
            now_ms = wall_ms()
            for symbol in self.symbols:
                symbol.flush()
                expired = symbol.rotator.expire(now_ms)
                if expired is not None:
                    symbol.seal(expired)
            if loop.time() >= next_disk_check:
                next_disk_check = loop.time() + DISK_CHECK_SECONDS
                await self._check_disk(loop.time())

    async def _check_disk(self, now: float) -> None:
        used = await asyncio.to_thread(self.spool.usage_bytes)
        limit = self.config.spool_max_bytes
        if self._paused_since is None:
            if used >= limit:
                self._paused_since = now
                log.error("spool holds %d unshipped bytes, budget %d: stopped receiving until S3 catches up",
                          used, limit)
                for stream in self.streams:
                    stream.pause()
        elif used < limit * DISK_RESUME_FRACTION:
            log.warning("spool down to %d bytes: receiving again after %.0f s", used, now - self._paused_since)
            self._paused_since = None
            for stream in self.streams:
                stream.resume()
        elif now - self._paused_since >= DISK_LOG_SECONDS:
            self._paused_since = now
            log.error("still not receiving: spool holds %d unshipped bytes, budget %d; %d file(s) queued",
                      used, limit, self.shipper.pending())

    # lifecycle

    def stop(self, signame: str) -> None:
        if not self._stop.is_set():
            log.info("%s received: stopping", signame)
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig.name)
        c = self.config
        log.info("collector starting: instance %s, symbols %s, %s, bucket %s, spool %s",
                 c.instance_id, ",".join(c.symbols), c.ws_url, c.bucket, c.spool_dir)
        for sealed in await asyncio.to_thread(self.spool.recover, c.instance_id):
            self.shipper.add(sealed)
        self.shipper.start()
        stream_tasks = [asyncio.create_task(s.run(), name=f"stream-{s.symbol}") for s in self.streams]
        ticker = asyncio.create_task(self._tick(), name="tick")
        await self._stop.wait()
        deadline = loop.time() + c.shutdown_timeout

        for stream in self.streams:
            stream.stop()
        _, slow = await asyncio.wait(stream_tasks, timeout=STREAM_STOP_SECONDS)
        for task in slow:
            task.cancel()
        ticker.cancel()
        self._seal_all()
        if self._sealing:
            await asyncio.wait(self._sealing)
        if await self.shipper.drain(max(0.0, deadline - loop.time())):
            log.info("stopped: everything shipped (%d objects this run)", self.shipper.uploaded)
        else:
            log.error("stopped with %d file(s) not shipped; they stay in %s for the next start",
                      self.shipper.pending(), c.spool_dir)
        if c.lag_report is not None and self._lag_ms is not None:
            c.lag_report.write_bytes(orjson.dumps({"tick_seconds": TICK_SECONDS, "lag_ms": self._lag_ms}))
