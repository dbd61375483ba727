"""The upload queue: sealed files go to S3 oldest first, data before manifest, and leave the disk only
once both are there. A file whose attempts all failed goes back into the queue after a capped backoff."""

from __future__ import annotations

import asyncio
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
        self._workers: list[asyncio.Task[None]] = []

    def add(self, item: Sealed) -> None:
        self.queue.put_nowait((item.part.opened_at_ms, item.part.stem, item))

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"shipper-{n}") for n in range(WORKERS)]

    def _ship(self, item: Sealed) -> None:
        """Blocking; runs in a worker thread."""
        bucket = self.uploader.bucket
        if item.data is not None:
            size = item.data.stat().st_size
            created = self.uploader.put(item.part.data_key, item.data, "application/gzip")
            log.info("uploaded s3://%s/%s (%d bytes)%s", bucket, item.part.data_key, size,
                     "" if created else ", already there")
        created = self.uploader.put(item.part.manifest_key, item.manifest, "application/json")
        log.info("uploaded s3://%s/%s%s", bucket, item.part.manifest_key, "" if created else ", already there")
        self.spool.remove(item)

    async def _work(self) -> None:
        while True:
            entry = await self.queue.get()
            try:
                await asyncio.to_thread(self._ship, entry[2])
            except UploadFailed as exc:
                delay = self.backoff.next()
                log.error("upload failed, kept on disk and retried in %.0f s: %s", delay, exc)
                self.queue.put_nowait(entry)
                self.queue.task_done()
                await asyncio.sleep(delay)
                continue
            except OSError as exc:
                # The local files are gone or unreadable: nothing to retry from; say so loudly.
                log.error("cannot ship %s: %s", entry[1], exc)
            else:
                self.uploaded += 1
                self.backoff.reset()
            self.queue.task_done()

    async def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty (true) or `timeout` passes (false); then stop the workers."""
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
