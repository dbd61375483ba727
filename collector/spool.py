"""The spool directory on disk: open JSONL files, and sealed files (gzip + manifest) waiting for S3.

Every state a crash can leave is recognisable from file names alone, so a restart finishes the work:
  <stem>.jsonl                       receiving, or sealed half-way
  <stem>.jsonl.gz + .manifest.json   sealed: to upload, data first, then manifest
  <stem>.manifest.json alone         data object already in S3, manifest still to upload
  <stem>.attempted                   an upload of the stem's objects was started: a 412 for its keys is ours
  *.tmp                              a write that did not finish; its source is still there
  last-key-stamp                     the newest name stamp of a file shipped and removed
  quarantine/                        files whose key S3 already held with bytes not provably ours
Sealing writes the manifest last (after the gzip) and only then deletes the JSONL, so a stem is never
lost and never shipped under two keys: the key comes from the stem. Stems only go up, across restarts too
(a wall clock stepping back included): the next run starts above both the newest stem on disk and
`last-key-stamp`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BufferedWriter
from pathlib import Path
from typing import BinaryIO

from isal import igzip

from collector import manifest
from collector.frames import Trade, parse_message
from collector.keys import Part
from collector.stats import FileStats, IdTracker

log = logging.getLogger("collector.spool")

JSONL = ".jsonl"
GZ = ".jsonl.gz"
MANIFEST = ".manifest.json"
ATTEMPTED = ".attempted"
TMP = ".tmp"
STAMP_FILE = "last-key-stamp"
QUARANTINE_DIR = "quarantine"
# The default 8 KiB buffer means a write(2) every ~60 trades, each one a chance for the sealing and upload
# threads to take the GIL; the service's tick flushes every 0.2 s anyway.
WRITE_BUFFER_BYTES = 1 << 20


def unshipped(directory: Path) -> list[str]:
    """The names in the spool directory that hold data not yet in S3 (quarantined files included); the name
    stamp it keeps across restarts is not data."""
    return sorted(p.name for p in directory.iterdir() if p.name != STAMP_FILE)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A file ready to ship. `data` is None when only the manifest is left to upload."""

    part: Part
    data: Path | None
    manifest: Path
    # What the manifest says, when this run sealed it (not part of its identity).
    stats: FileStats | None = field(default=None, compare=False)


def open_gzip(out: BinaryIO, level: int) -> BinaryIO:
    """A gzip writer onto `out`: ISA-L's igzip (standard gzip output, several times zlib's speed; see bench/)."""
    return igzip.IGzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = path.with_name(path.name + TMP)
    with tmp.open("wb") as out:
        write(out)
        out.flush()
        os.fsync(out.fileno())
    tmp.rename(path)


class Spool:
    def __init__(self, directory: Path, *, bucket: str, gzip_level: int, clock_ms: Callable[[], int]) -> None:
        self.dir = directory
        self.bucket = bucket
        self.gzip_level = gzip_level
        self.clock_ms = clock_ms
        directory.mkdir(parents=True, exist_ok=True)
        self._stamp_lock = threading.Lock()
        self._stamp_path = directory / STAMP_FILE
        try:
            self._saved_stamp = int(self._stamp_path.read_text())
        except (FileNotFoundError, ValueError):
            self._saved_stamp = -1

    def last_stamp_ms(self) -> int:
        """The newest name stamp this spool ever used, as far as the disk remembers: new names start above."""
        stamps = [self._saved_stamp]
        for entry in self.dir.iterdir():
            with contextlib.suppress(ValueError):
                stamps.append(Part.from_stem(entry.name.split(".", 1)[0]).opened_at_ms)
        return max(stamps)

    def _save_stamp(self, stamp_ms: int) -> None:
        # Before a shipped file's name leaves the disk, the disk must remember it (a restart starts above it).
        with self._stamp_lock:
            if stamp_ms > self._saved_stamp:
                _write_atomically(self._stamp_path, lambda out: out.write(b"%d\n" % stamp_ms))
                self._saved_stamp = stamp_ms

    def path(self, part: Part, suffix: str) -> Path:
        return self.dir / (part.stem + suffix)

    def open_for_append(self, part: Part) -> BufferedWriter:
        return self.path(part, JSONL).open("ab", buffering=WRITE_BUFFER_BYTES)

    def usage_bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.dir):
            try:
                total += entry.stat().st_size
            except FileNotFoundError:  # shipped or renamed since the listing
                continue
        return total

    # sealing runs in a worker thread: compression and hashing release the GIL

    def seal(self, part: Part, stats: FileStats) -> Sealed:
        """fsync, gzip, hash, write the manifest, delete the JSONL. `stats` describe the JSONL as is."""
        source = self.path(part, JSONL)
        with source.open("rb") as src:
            os.fsync(src.fileno())

            def compress(out: BinaryIO) -> None:
                with open_gzip(out, self.gzip_level) as gz:
                    shutil.copyfileobj(src, gz, 1 << 16)

            return self._finish(part, stats, source, compress)

    def _finish(self, part: Part, stats: FileStats, source: Path, compress: Callable[[BinaryIO], object]) -> Sealed:
        data = self.path(part, GZ)
        _write_atomically(data, compress)
        with data.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        doc = manifest.build(
            part=part, stats=stats, bucket=self.bucket, compressed_bytes=data.stat().st_size,
            sha256=digest, created_at_ms=self.clock_ms(),
        )
        manifest_path = self.path(part, MANIFEST)
        _write_atomically(manifest_path, lambda out: out.write(manifest.encode(doc)))
        source.unlink()
        _fsync_dir(self.dir)
        return Sealed(part, data, manifest_path, stats)

    def seal_recounted(self, part: Part, carried: FileStats | None = None) -> Sealed | None:
        """Seal a JSONL whose in-memory statistics cannot be trusted (a previous run's, or one whose write or
        close failed): keep every complete trade line, count the rest as malformed. `carried` brings what
        never reached the file (rejected messages, reconnects). None if no trade line reached the file."""
        source = self.path(part, JSONL)
        if not source.exists():  # the first write of the file already failed
            return None
        return self._seal_recounted(part, source, carried)

    def _seal_recounted(self, part: Part, source: Path, carried: FileStats | None = None) -> Sealed | None:
        stats, ids, kept = FileStats(), IdTracker(), []
        with source.open("rb") as src:
            for line in src:
                parsed = parse_message(line[:-1], text=True, symbol=part.symbol) if line.endswith(b"\n") else None
                if isinstance(parsed, Trade):
                    kept.append(line)
                    stats.add(parsed, len(line), ids.advance(parsed.trade_id))
                else:
                    stats.malformed_messages += 1
        if not kept:
            log.warning("spool: %s holds no complete trade; removing it", source.name)
            source.unlink()
            return None
        if stats.malformed_messages:
            log.warning("spool: %s: %d incomplete or invalid line(s) left out", source.name, stats.malformed_messages)
        if carried is not None:
            stats.malformed_messages += carried.malformed_messages
            stats.reconnects += carried.reconnects

        def compress(out: BinaryIO) -> None:
            with open_gzip(out, self.gzip_level) as gz:
                gz.writelines(kept)

        return self._finish(part, stats, source, compress)

    def recover(self, instance_id: str) -> list[Sealed]:
        """Sweep at start: finish every file a previous run left, oldest first."""
        for tmp in self.dir.glob("*" + TMP):
            tmp.unlink()
        quarantined = self.dir / QUARANTINE_DIR
        if quarantined.is_dir() and (count := sum(1 for _ in quarantined.glob("*" + MANIFEST))):
            log.error("spool: %d file(s) in %s wait for an operator: S3 held their keys with other bytes",
                      count, quarantined)
        stems: dict[str, set[str]] = {}
        for entry in self.dir.iterdir():
            if entry.name in (STAMP_FILE, QUARANTINE_DIR):
                continue
            for suffix in (GZ, MANIFEST, JSONL, ATTEMPTED):
                if entry.name.endswith(suffix):
                    stems.setdefault(entry.name[: -len(suffix)], set()).add(suffix)
                    break
            else:
                log.warning("spool: ignoring unknown file %s", entry.name)
        sealed: list[Sealed] = []
        for stem, suffixes in stems.items():
            try:
                part = Part.from_stem(stem)
            except ValueError:
                log.warning("spool: ignoring unknown file stem %s", stem)
                continue
            if part.instance_id != instance_id:
                # Another instance id (config change, copied disk): ship under the id that wrote it.
                log.warning("spool: %s was written as instance %s; shipping it under that id", stem, part.instance_id)
            if MANIFEST in suffixes:
                if JSONL in suffixes:  # crashed after the manifest, before removing the source
                    self.path(part, JSONL).unlink()
                data = self.path(part, GZ) if GZ in suffixes else None
                sealed.append(Sealed(part, data, self.path(part, MANIFEST)))
            elif JSONL in suffixes:
                if GZ in suffixes:  # crashed between gzip and manifest: redo from the source
                    self.path(part, GZ).unlink()
                resealed = self._seal_recounted(part, self.path(part, JSONL))
                if resealed is not None:
                    sealed.append(resealed)
            elif suffixes == {ATTEMPTED}:  # shipped; the crash came before its marker was removed
                self.path(part, ATTEMPTED).unlink()
            else:
                # A gzip with neither source nor manifest cannot happen with the order above.
                log.error("spool: %s has no manifest and no source; leaving it for an operator", stem)
        sealed.sort(key=lambda s: (s.part.opened_at_ms, s.part.symbol))
        if sealed:
            log.info("spool: recovered %d file(s) from a previous run", len(sealed))
        return sealed

    def note_attempt(self, item: Sealed) -> bool:
        """Record, durably, that uploads of `item`'s keys start now; True if they had started before (then a
        412 for its keys answers an earlier attempt of ours)."""
        marker = self.path(item.part, ATTEMPTED)
        if marker.exists():
            return True
        marker.touch()
        _fsync_dir(self.dir)
        return False

    def remove(self, item: Sealed) -> None:
        """Both objects are in S3: the local copies may go. Data first, so a crash leaves the manifest."""
        self._save_stamp(item.part.opened_at_ms)
        if item.data is not None:
            item.data.unlink(missing_ok=True)
        item.manifest.unlink(missing_ok=True)
        self.path(item.part, ATTEMPTED).unlink(missing_ok=True)

    def quarantine(self, item: Sealed) -> Path:
        """Keep `item`'s files out of the queue, under `quarantine/`, for an operator; never delete them."""
        target = self.dir / QUARANTINE_DIR
        target.mkdir(exist_ok=True)
        self._save_stamp(item.part.opened_at_ms)
        for path in (item.data, item.manifest, self.path(item.part, ATTEMPTED)):
            if path is not None and path.exists():
                path.rename(target / path.name)
        _fsync_dir(target)
        _fsync_dir(self.dir)
        return target
