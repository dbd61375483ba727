"""The upload queue: sealed files go to S3 oldest first, data before manifest, and leave the disk only
once both are there. A file whose attempts all failed goes back into the queue at once; its worker then waits
out a short capped backoff before it takes the next file, cut short when another worker's upload succeeds
(S3 is back) or at shutdown. Uploads run on the shipper's own threads, so a long S3 outage never starves
sealing or anything else that needs a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from concurrent.futures import ThreadPoolExecutor

from collector.backoff import UPLOAD_REQUEUE_CAP_SECONDS, UPLOAD_REQUEUE_FIRST_SECONDS, Backoff
from collector.s3_uploader import KeyTaken, S3Uploader, UploadFailed
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
        self.quarantined = 0
        # Running totals for the metrics: bytes of data and manifests written, files whose attempts all failed.
        self.uploaded_bytes = 0
        self.failures = 0
        self._workers: list[asyncio.Task[None]] = []
        self._threads = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ship")
        # Set when waiting out a backoff is no longer worth it: an upload went through (S3 is back), or
        # shutdown (one last try for everything).
        self._retry_now = asyncio.Event()
        self._stopping = False

    def add(self, item: Sealed) -> None:
        self.queue.put_nowait((item.part.opened_at_ms, item.part.stem, item))

    def start(self) -> list[asyncio.Task[None]]:
        self._workers = [asyncio.create_task(self._work(), name=f"shipper-{n}") for n in range(WORKERS)]
        return self._workers

    def _ship(self, item: Sealed) -> int | None:
        """Blocking; runs on a shipper thread. The bytes shipped, or None when the file was quarantined."""
        bucket = self.uploader.bucket
        tried = self.spool.note_attempt(item)
        size = 0
        try:
            if item.data is not None:
                size = item.data.stat().st_size
                created = self.uploader.put(item.part.data_key, item.data, "application/gzip", tried_before=tried)
                log.info("uploaded s3://%s/%s (%d bytes)%s", bucket, item.part.data_key, size,
                         "" if created else ", already there")
            created = self.uploader.put(item.part.manifest_key, item.manifest, "application/json",
                                        tried_before=tried)
        except KeyTaken as exc:
            # Never deleted and never described by our manifest: the key's bytes are not ours.
            kept = self.spool.quarantine(item)
            self.quarantined += 1
            log.error("%s; %s kept in %s for an operator (%d this run)", exc, item.part.stem, kept, self.quarantined)
            return None
        log.info("uploaded s3://%s/%s%s", bucket, item.part.manifest_key, "" if created else ", already there")
        size += item.manifest.stat().st_size
        self.spool.remove(item)
        return size

    async def _work(self) -> None:
        # Anything but a failed upload (a local file gone, a bug) ends the worker; the service then
        # stops and the restart's sweep takes over.
        loop = asyncio.get_running_loop()
        while True:
            entry = await self.queue.get()
            try:
                shipped = await loop.run_in_executor(self._threads, self._ship, entry[2])
            except UploadFailed as exc:
                self.failures += 1
                delay = self.backoff.next()
                log.error("upload failed, kept on disk and retried in %.0f s: %s", delay, exc)
                self.queue.put_nowait(entry)
                self.queue.task_done()
                if not self._stopping:
                    self._retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._retry_now.wait()
                continue
            if shipped is not None:
                self.uploaded += 1
                self.uploaded_bytes += shipped
            self.backoff.reset()
            self._retry_now.set()
            self.queue.task_done()

    async def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty (true), `timeout` passes or a worker has died (false); then stop the
        workers."""
        self._stopping = True
        self._retry_now.set()
        emptied = asyncio.ensure_future(self.queue.join())
        try:
            done, _ = await asyncio.wait([emptied, *self._workers], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            return emptied in done
        finally:
            emptied.cancel()
            self.uploader.stop.set()
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(emptied, *self._workers, return_exceptions=True)
            self._threads.shutdown(wait=False, cancel_futures=True)

    def pending(self) -> int:
        return self.queue.qsize()
