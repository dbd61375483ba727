"""The upload queue: sealed files go to S3 oldest first, data before manifest, and leave the disk only
once both are there. A file whose attempts all failed goes back into the queue at once; its worker then waits
out a capped backoff (cut short at shutdown) before it takes the next file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from collector.backoff import UPLOAD_REQUEUE_CAP_SECONDS, UPLOAD_REQUEUE_FIRST_SECONDS, Backoff
from collector.s3_uploader import S3Uploader, UploadFailed
from collector.spool import Sealed, Spool

log = logging.getLogger("collector.ship")

WORKERS = 2


class Shipper:
    def __init__(self, *, spool: Spool, uploader: S3Uploader) -> None:
        self.spool = spool
        self.uploader = uploader
        self.queue: asyncio.PriorityQueue[tuple[int, str, Sealed]] = asyncio.PriorityQueue()
        self.backoff = Backoff(UPLOAD_REQUEUE_FIRST_SECONDS, UPLOAD_REQUEUE_CAP_SECONDS, random.Random())
        self.uploaded = 0
        # Running totals for the metrics: bytes of data and manifests written, files whose attempts all failed.
        self.uploaded_bytes = 0
        self.failures = 0
        self._workers: list[asyncio.Task[None]] = []
        # Set when waiting out a backoff is no longer worth it (shutdown: one last try for everything).
        self._retry_now = asyncio.Event()

    def add(self, item: Sealed) -> None:
        self.queue.put_nowait((item.part.opened_at_ms, item.part.stem, item))

    def start(self) -> list[asyncio.Task[None]]:
        self._workers = [asyncio.create_task(self._work(), name=f"shipper-{n}") for n in range(WORKERS)]
        return self._workers

    def _ship(self, item: Sealed) -> int:
        """Blocking; runs in a worker thread. Returns the bytes shipped."""
        bucket = self.uploader.bucket
        size = 0
        if item.data is not None:
            size = item.data.stat().st_size
            created = self.uploader.put(item.part.data_key, item.data, "application/gzip")
            log.info("uploaded s3://%s/%s (%d bytes)%s", bucket, item.part.data_key, size,
                     "" if created else ", already there")
        created = self.uploader.put(item.part.manifest_key, item.manifest, "application/json")
        log.info("uploaded s3://%s/%s%s", bucket, item.part.manifest_key, "" if created else ", already there")
        size += item.manifest.stat().st_size
        self.spool.remove(item)
        return size

    async def _work(self) -> None:
        # Anything but a failed upload (a local file gone, a bug) ends the worker; the service then
        # stops and the restart's sweep takes over.
        while True:
            entry = await self.queue.get()
            try:
                shipped = await asyncio.to_thread(self._ship, entry[2])
            except UploadFailed as exc:
                self.failures += 1
                delay = self.backoff.next()
                log.error("upload failed, kept on disk and retried in %.0f s: %s", delay, exc)
                self.queue.put_nowait(entry)
                self.queue.task_done()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._retry_now.wait()
                continue
            self.uploaded += 1
            self.uploaded_bytes += shipped
            self.backoff.reset()
            self.queue.task_done()

    async def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty (true) or `timeout` passes (false); then stop the workers."""
        self._retry_now.set()
        try:
            async with asyncio.timeout(timeout):
                await self.queue.join()
            return True
        except TimeoutError:
            return False
        finally:
            self.uploader.stop.set()
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)

    def pending(self) -> int:
        return self.queue.qsize()
