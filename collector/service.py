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
from io import BufferedWriter
from typing import Any

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
        self.rotators = {
            symbol: Rotator(symbol=symbol, instance_id=config.instance_id, rotate_bytes=config.rotate_bytes,
                            rotate_seconds=config.rotate_seconds)
            for symbol in config.symbols
        }
        self.writers: dict[str, BufferedWriter] = {}
        self.streams = [
            SymbolStream(symbol=symbol, ws_url=config.ws_url, sink=self, compression=config.ws_compression,
                         reconnect_delay=config.reconnect_delay, ping_interval=config.ping_interval,
                         connection_lifetime=config.connection_lifetime)
            for symbol in config.symbols
        ]
        self._sealing: set[asyncio.Task[None]] = set()
        self._rejects = RejectLog(int(REJECT_LOG_SECONDS * 1000))
        self._stop = asyncio.Event()
        self._paused_since: float | None = None

    # Sink: called from the links' data_received, once per message

    def on_trade(self, symbol: str, trade: Trade) -> None:
        placement = self.rotators[symbol].place(trade, wall_ms())
        if placement.seal is not None:
            self._seal(symbol, placement.seal)
        writer = self.writers.get(symbol)
        if writer is None:
            writer = self.writers[symbol] = self.spool.open_for_append(placement.target.part)
        writer.write(trade.raw)
        writer.write(b"\n")
        if placement.gap is not None:
            log.warning("%s: trade ids %d..%d missing (%d)", symbol, placement.gap.first, placement.gap.last,
                        placement.gap.missing)

    def on_rejected(self, symbol: str, reason: str) -> None:
        self.rotators[symbol].note_malformed()
        quiet = self._rejects.should_log(symbol, wall_ms())
        if quiet is not None:
            more = f" ({quiet} more since the last report)" if quiet else ""
            log.warning("%s: message rejected: %s%s", symbol, reason, more)

    def on_reconnect(self, symbol: str) -> None:
        self.rotators[symbol].note_reconnect()

    def last_trade_id(self, symbol: str) -> int | None:
        return self.rotators[symbol].ids.last_id

    # sealing

    def _seal(self, symbol: str, spool_file: SpoolFile) -> None:
        writer = self.writers.pop(symbol, None)
        if writer is not None:
            writer.close()
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
        for symbol, rotator in self.rotators.items():
            spool_file = rotator.detach()
            if spool_file is not None:
                self._seal(symbol, spool_file)

    # periodic work

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_disk_check = 0.0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            for writer in self.writers.values():
                writer.flush()
            now_ms = wall_ms()
            for symbol, rotator in self.rotators.items():
                expired = rotator.expire(now_ms)
                if expired is not None:
                    self._seal(symbol, expired)
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
