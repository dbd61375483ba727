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
from concurrent.futures import ThreadPoolExecutor
from io import BufferedWriter
from typing import TYPE_CHECKING, Any

import msgspec

from collector.config import Config
from collector.connect_budget import ConnectBudget, burst, pace_seconds, startup_seconds
from collector.connect_gate import ConnectGate
from collector.frames import Trade
from collector.rotator import Rotator, SpoolFile
from collector.s3_uploader import S3Uploader, make_client
from collector.shipper import Shipper
from collector.spool import Spool
from collector.ws_client import SymbolStream

if TYPE_CHECKING:
    from collector.telemetry import Telemetry

log = logging.getLogger("collector")

# Unwritten bytes reach the OS at least this often, so a crash loses nothing received a second ago.
TICK_SECONDS = 0.2
DISK_CHECK_SECONDS = 1.0
DISK_LOG_SECONDS = 60.0
# Receiving resumes once shipping has brought the spool this far under its budget.
DISK_RESUME_FRACTION = 0.9
REJECT_LOG_SECONDS = 10.0
STREAM_STOP_SECONDS = 5.0
# A file named this far from its first trade's event time means the wall clock is off (Binance stamps E).
CLOCK_SKEW_WARN_SECONDS = 60.0
CLOCK_SKEW_LOG_SECONDS = 600.0


def clock_skew_ms(spool_file: SpoolFile) -> int:
    """How far the file's name (the wall clock when its first trade arrived) is from that trade's event time."""
    return spool_file.part.opened_at_ms - spool_file.stats.min_event_time


def wall_ms() -> int:
    """Names and event times only: the wall clock may step."""
    return time.time_ns() // 1_000_000


def mono_ms() -> int:
    """Ages, timers and backoff."""
    return time.monotonic_ns() // 1_000_000


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
    old file is closed and handed to `on_closed`. Runs once per message, so it keeps its lookups short."""

    def __init__(self, *, rotator: Rotator, spool: Spool, on_closed: Callable[[SpoolFile], None],
                 rejects: RejectLog, fail: Callable[[str], None]) -> None:
        self.symbol = rotator.symbol
        self.rotator = rotator
        self.spool = spool
        self.writer: BufferedWriter | None = None
        # Set when the spool failed; from then on trades cannot be kept, so they are at least counted.
        self.broken = False
        self.unwritten = 0
        self._on_closed = on_closed
        self._rejects = rejects
        self._fail = fail
        self._place = rotator.place
        self._place_run = rotator.place_run

    def on_trade(self, trade: Trade) -> None:
        if self.broken:
            self.unwritten += 1
            return
        closes, gap, replayed_after = self._place(trade, time.monotonic_ns() // 1_000_000)
        # One write call is cheaper than two, even with the copy.
        if not self._append(closes, trade.raw + b"\n"):
            return
        if gap is not None:
            log.warning("%s: trade ids %d..%d missing (%d)", self.symbol, gap.first, gap.last, gap.missing)
        elif replayed_after is not None:
            log.warning("%s: trade id %d after %d: the server replayed trades; a new file starts here",
                        self.symbol, trade.trade_id, replayed_after)

    def on_trades(self, trades: list[Trade]) -> None:
        placement = None
        if not self.broken and len(trades) > 1:
            lines = b"\n".join([t.raw for t in trades]) + b"\n"
            placement = self._place_run(trades, len(lines), time.monotonic_ns() // 1_000_000)
        if placement is None:  # a gap, a repeat or a size rotation inside the batch: trade by trade
            for trade in trades:
                self.on_trade(trade)
            return
        self._append(placement.closes, lines)

    def _append(self, closes: SpoolFile | None, lines: bytes) -> bool:
        """Close `closes` if any, then append `lines` (trades already counted into the open file's statistics)
        to the open file; False if the spool failed."""
        # Placing a trade always leaves a file open: `current` is never None here.
        if closes is not None:
            self.close_file(closes)
            if self.broken:  # the close failed: the spool is not to be trusted with more
                self.rotator.current.recount = True  # type: ignore[union-attr]
                return False
        try:
            writer = self.writer
            if writer is None:
                writer = self.writer = self.spool.open_for_append(self.rotator.current.part)  # type: ignore[union-attr]
            writer.write(lines)
        except OSError as exc:
            # Some, all or none of these (or of earlier, buffered) lines reached the file: only the file knows.
            self.rotator.current.recount = True  # type: ignore[union-attr]
            self._broken(exc)
            return False
        return True

    def on_rejected(self, reason: str) -> None:
        self.rotator.note_malformed()
        quiet = self._rejects.should_log(self.symbol, mono_ms())
        if quiet is not None:
            more = f" ({quiet} more since the last report)" if quiet else ""
            log.warning("%s: message rejected: %s%s", self.symbol, reason, more)

    def on_reconnect(self) -> None:
        self.rotator.note_reconnect()

    def last_trade_id(self) -> int | None:
        return self.rotator.ids.last_id

    def close_file(self, spool_file: SpoolFile) -> None:
        """Close the file and hand it on for sealing; whatever reached it is shipped, by us or the next sweep."""
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError as exc:
                spool_file.recount = True  # the close flushes: some of the counted lines may be missing
                self._broken(exc)
        self._on_closed(spool_file)

    def flush(self) -> None:
        if self.writer is not None and not self.broken:
            try:
                self.writer.flush()
            except OSError as exc:
                if self.rotator.current is not None:
                    self.rotator.current.recount = True
                self._broken(exc)

    def _broken(self, exc: OSError) -> None:
        # A spool that cannot be written (disk full, I/O error) does not heal by itself: stop, and let
        # systemd restart the collector, whose first act is to sweep and ship what is on disk. What was
        # counted into the file but did not reach it is found when the file is sealed (recounted).
        if not self.broken:
            self.broken = True
            self._fail(f"{self.symbol}: cannot write the spool: {exc}")


class Service:
    def __init__(self, config: Config, *, s3_client: Any = None, telemetry: Telemetry | None = None) -> None:
        self.config = config
        self.telemetry = telemetry
        self.spool = Spool(config.spool_dir, bucket=config.bucket, gzip_level=config.gzip_level, clock_ms=wall_ms)
        self._stop_uploads = threading.Event()
        self.shipper = Shipper(
            spool=self.spool,
            uploader=S3Uploader(s3_client or make_client(), bucket=config.bucket,
                                attempts=config.upload_attempts, stop=self._stop_uploads),
        )
        rejects = RejectLog(int(REJECT_LOG_SECONDS * 1000))
        last_stamp = self.spool.last_stamp_ms()
        self.symbols = [
            SymbolSpool(
                rotator=Rotator(symbol=symbol, instance_id=config.instance_id, rotate_bytes=config.rotate_bytes,
                                rotate_seconds=config.rotate_seconds, last_stamp_ms=last_stamp),
                spool=self.spool, on_closed=self._file_closed, rejects=rejects, fail=self.fail,
            )
            for symbol in config.symbols
        ]
        self._set_wall_offset()
        self.gate = ConnectGate(ConnectBudget(limit=config.connect_budget, window=config.connect_window),
                                state_file=config.connect_state)
        self.streams = [
            SymbolStream(symbol=sink.symbol, ws_url=config.ws_url, sink=sink, gate=self.gate,
                         compression=config.ws_compression,
                         reconnect_delay=config.reconnect_delay, ping_interval=config.ping_interval,
                         connection_lifetime=config.connection_lifetime)
            for sink in self.symbols
        ]
        self._sealing: set[asyncio.Task[None]] = set()
        # Sealing has a thread of its own: uploads waiting on S3 must never hold up a rotation.
        self._seal_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seal")
        self._skew_logged_at: float | None = None
        # Trades counted into a file whose write failed, and found missing from it when it was sealed.
        self.lost_in_files = 0
        self._stop = asyncio.Event()
        self.exit_status = 0
        self._paused_since: float | None = None
        self._lag_ms: list[float] | None = [] if config.lag_report is not None else None

    # sealing

    def _file_closed(self, spool_file: SpoolFile) -> None:
        """Seal it off the event loop, then queue it for S3."""
        task = asyncio.create_task(self._seal_and_queue(spool_file), name=f"seal-{spool_file.part.stem}")
        self._sealing.add(task)
        task.add_done_callback(self._sealing.discard)
        self._supervise(task)

    async def _seal_and_queue(self, spool_file: SpoolFile) -> None:
        self._check_clock(spool_file)
        stats = spool_file.stats
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            if spool_file.recount:
                counted = stats.record_count
                recounted = await loop.run_in_executor(self._seal_thread, self.spool.seal_recounted,
                                                       spool_file.part, stats)
                held = recounted.stats.record_count if recounted is not None and recounted.stats else 0
                self.lost_in_files += counted - held
                log.error("%s: %d of the %d trade(s) counted into it reached the disk (a write failed); its "
                          "manifest counts what the file holds", spool_file.part.stem, held, counted)
                if recounted is None or recounted.stats is None:
                    return
                sealed, stats = recounted, recounted.stats
            else:
                sealed = await loop.run_in_executor(self._seal_thread, self.spool.seal, spool_file.part, stats)
        except OSError as exc:
            # The JSONL stays in the spool; the restart's sweep seals it.
            self.fail(f"sealing {spool_file.part.stem} failed: {exc}")
            return
        compressed = sealed.data.stat().st_size if sealed.data else 0
        log.info(
            "rotated %s: %d records, ids %d..%d, %d -> %d bytes, %d gap(s), %d rejected, sealed in %.0f ms",
            spool_file.part.stem, stats.record_count, stats.first_trade_id, stats.last_trade_id,
            stats.uncompressed_bytes, compressed, stats.trade_id_gaps, stats.malformed_messages,
            (time.perf_counter() - started) * 1000,
        )
        if self.telemetry is not None:
            self.telemetry.sealed(spool_file.part.symbol, stats)
        self.shipper.add(sealed)

    def _check_clock(self, spool_file: SpoolFile) -> None:
        """Names follow the wall clock; Binance's event times say whether it is right."""
        skew_ms = clock_skew_ms(spool_file)
        now = time.monotonic()
        if abs(skew_ms) > CLOCK_SKEW_WARN_SECONDS * 1000 and (
                self._skew_logged_at is None or now - self._skew_logged_at >= CLOCK_SKEW_LOG_SECONDS):
            self._skew_logged_at = now
            log.warning("the wall clock is %+.0f s off Binance's event times (file %s): keys are named by the "
                        "wall clock, so they land in other date/hour partitions; check the time service",
                        skew_ms / 1000, spool_file.part.stem)

    def _close_all_files(self) -> None:
        for symbol in self.symbols:
            spool_file = symbol.rotator.detach()
            if spool_file is not None:
                symbol.close_file(spool_file)

    # periodic work

    def _set_wall_offset(self) -> int:
        """Where the wall clock stands against the monotonic one, for the names of the next files; returns
        the monotonic time."""
        now_ms = mono_ms()
        offset = wall_ms() - now_ms
        for symbol in self.symbols:
            symbol.rotator.wall_offset_ms = offset
        return now_ms

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_disk_check = 0.0
        while True:
            due = loop.time() + TICK_SECONDS
            await asyncio.sleep(TICK_SECONDS)
            if self._lag_ms is not None:
                # How late this timer ran: every callback that held the loop delayed it.
                self._lag_ms.append((loop.time() - due) * 1000)
            now_ms = self._set_wall_offset()
            for symbol in self.symbols:
                symbol.flush()
                expired = symbol.rotator.expire(now_ms)
                if expired is not None:
                    symbol.close_file(expired)
            if loop.time() >= next_disk_check:
                next_disk_check = loop.time() + DISK_CHECK_SECONDS
                await self._check_disk(loop.time())
            # Metrics are stamped, and backlog ages measured from file names, on the wall clock.
            if self.telemetry is not None and self.telemetry.metrics.due(wall := wall_ms()):
                await self.telemetry.report(wall, self.shipper)

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

    def fail(self, reason: str) -> None:
        """Something that should not happen did: stop as for SIGTERM, then exit 1 so that systemd restarts us."""
        log.critical("%s; stopping so that a restart recovers from the spool", reason)
        self.exit_status = 1
        self._stop.set()

    def _supervise(self, task: asyncio.Task[Any]) -> None:
        def done(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.critical("task %s crashed", task.get_name(), exc_info=task.exception())
                self.fail(f"task {task.get_name()} crashed")

        task.add_done_callback(done)

    def stop(self, signame: str) -> None:
        if not self._stop.is_set():
            log.info("%s received: stopping", signame)
        self._stop.set()

    async def run(self) -> int:
        """Until SIGTERM/SIGINT (exit status 0) or a failure (1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig.name)
        c = self.config
        log.info("collector starting: instance %s, symbols %s, %s, bucket %s, spool %s",
                 c.instance_id, ",".join(c.symbols), c.ws_url, c.bucket, c.spool_dir)
        log.info("connection budget: %d attempts per %g s (%d at once, then one every %.2f s): %d symbol(s) "
                 "connect within %.0f s", c.connect_budget, c.connect_window, burst(c.connect_budget),
                 pace_seconds(c.connect_budget, c.connect_window), len(c.symbols),
                 startup_seconds(len(c.symbols), c.connect_budget, c.connect_window))
        self.gate.load()
        for sealed in await asyncio.to_thread(self.spool.recover, c.instance_id):
            self.shipper.add(sealed)
        for worker in self.shipper.start():
            self._supervise(worker)
        stream_tasks = [asyncio.create_task(s.run(), name=f"stream-{s.symbol}") for s in self.streams]
        ticker = asyncio.create_task(self._tick(), name="tick")
        for task in (*stream_tasks, ticker):
            self._supervise(task)
        await self._stop.wait()
        deadline = loop.time() + c.shutdown_timeout

        for stream in self.streams:
            stream.stop()
        _, slow = await asyncio.wait(stream_tasks, timeout=STREAM_STOP_SECONDS)
        for task in (*slow, ticker):
            task.cancel()
        # No link may deliver once the last files are sealed.
        await asyncio.gather(*slow, ticker, return_exceptions=True)
        self._close_all_files()
        if self._sealing:
            await asyncio.wait(self._sealing)
        if await self.shipper.drain(max(0.0, deadline - loop.time())):
            log.info("stopped: everything shipped (%d objects this run)", self.shipper.uploaded)
        else:
            log.error("stopped with %d file(s) not shipped; they stay in %s for the next start",
                      self.shipper.pending(), c.spool_dir)
        self._seal_thread.shutdown(wait=False)
        lost = self.lost_in_files + sum(symbol.unwritten for symbol in self.symbols)
        if lost:
            log.critical("%d trade(s) received could not be written: the spool failed", lost)
        if self.telemetry is not None:  # the last files' counts
            await self.telemetry.report(wall_ms(), self.shipper)
        if c.lag_report is not None and self._lag_ms is not None:
            c.lag_report.write_bytes(msgspec.json.encode({"tick_seconds": TICK_SECONDS, "lag_ms": self._lag_ms}))
        return self.exit_status
