"""A manifest always describes the bytes of its object, whatever the disk or the clock does; a key S3 already
holds with bytes that are not ours is never taken for ours."""

import asyncio
import errno
import gzip
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from collector import config
from collector.frames import parse_message
from collector.keys import Part
from collector.rotator import Rotator
from collector.s3_uploader import S3Uploader
from collector.service import Service
from collector.shipper import Shipper
from collector.spool import ATTEMPTED, GZ, MANIFEST, QUARANTINE_DIR, STAMP_FILE, Spool
from tests.conftest import BUCKET
from tests.test_frames import TRADE

BASE_ID = 5_400_000_000  # ids of one width, so every line has the length of TRADE


def trade(n: int):
    return parse_message(TRADE.replace(b"5400000001", b"%d" % (BASE_ID + n)), text=True, symbol="BTCUSDT")


class FullDisk(io.RawIOBase):
    """A real file that takes `room` more bytes, then fails every write with ENOSPC (a tiny full disk)."""

    def __init__(self, path: Path, room: int) -> None:
        self._file = path.open("ab", buffering=0)
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = self._file.write(bytes(data[: self.room]))
        self.room -= taken
        return taken

    def close(self) -> None:
        self._file.close()
        super().close()


def _service(tmp_path: Path, symbols: str = "BTCUSDT") -> Service:
    settings = config.parse(["--bucket", BUCKET, "--symbols", symbols, "--spool-dir", str(tmp_path),
                             "--instance-id", "i-1"], environ={})
    return Service(settings, s3_client=object())


def _object_and_manifest(tmp_path: Path) -> list[tuple[list[bytes], dict]]:
    found = []
    for manifest_path in sorted(tmp_path.glob("*" + MANIFEST)):
        doc = msgspec.json.decode(manifest_path.read_bytes())
        data = manifest_path.with_name(manifest_path.name.replace(MANIFEST, GZ))
        found.append((gzip.decompress(data.read_bytes()).splitlines(), doc))
    return found


def _full_disk_for(service: Service, symbol: str, room: int) -> None:
    """`symbol`'s spool files get `room` bytes; the other symbols' files are ordinary."""
    ordinary = service.spool.open_for_append

    def open_for_append(part: Part) -> io.BufferedWriter:
        if part.symbol != symbol:
            return ordinary(part)
        return io.BufferedWriter(FullDisk(service.spool.path(part, ".jsonl"), room), buffer_size=1 << 20)

    service.spool.open_for_append = open_for_append


def test_a_full_disk_mid_file_leaves_a_manifest_that_counts_only_what_reached_the_disk(tmp_path, caplog):
    service = _service(tmp_path)
    (symbol,) = service.symbols
    _full_disk_for(service, "BTCUSDT", 100 * (len(TRADE) + 1) + 40)  # 100 trades and part of the 101st fit

    async def run() -> None:
        symbol.on_trades([trade(n) for n in range(1, 101)])
        symbol.flush()
        symbol.on_trades([trade(n) for n in range(101, 201)])  # buffered: the disk is full at the flush
        symbol.flush()
        symbol.on_trade(trade(201))  # after the failure: counted as lost, never placed
        service._close_all_files()
        await asyncio.wait(service._sealing)

    asyncio.run(run())
    assert service.exit_status == 1
    assert "BTCUSDT: cannot write the spool: [Errno 28] No space left on device" in caplog.text
    assert "100 of the 200 trade(s) counted into it reached the disk" in caplog.text
    (lines, doc), = _object_and_manifest(tmp_path)
    assert len(lines) == doc["payload"]["record_count"] == 100
    assert (doc["payload"]["first_trade_id"], doc["payload"]["last_trade_id"]) == (BASE_ID + 1, BASE_ID + 100)
    assert doc["quality"]["malformed_messages"] == 1  # the torn 101st line
    assert symbol.unwritten == 1


def test_a_close_that_fails_at_shutdown_still_seals_every_symbol_from_what_is_on_disk(tmp_path, caplog):
    service = _service(tmp_path, "BTCUSDT,ETHUSDT")
    btc, eth = service.symbols
    _full_disk_for(service, "BTCUSDT", 0)

    async def run() -> None:
        btc.on_trades([trade(n) for n in range(1, 11)])  # buffered; the close will fail
        eth_trade = parse_message(TRADE.replace(b'"BTCUSDT"', b'"ETHUSDT"'), text=True, symbol="ETHUSDT")
        eth.on_trade(eth_trade)
        service._close_all_files()  # must not raise: ETHUSDT is sealed all the same
        await asyncio.wait(service._sealing)

    asyncio.run(run())
    assert service.exit_status == 1 and "BTCUSDT: cannot write the spool" in caplog.text
    assert "0 of the 10 trade(s) counted into it reached the disk" in caplog.text
    (lines, doc), = _object_and_manifest(tmp_path)
    assert doc["source"]["symbol"] == "ETHUSDT" and len(lines) == doc["payload"]["record_count"] == 1
    assert not list(tmp_path.glob("BTCUSDT-*")), "nothing reached the disk for BTCUSDT, so nothing claims it did"


def test_a_wall_clock_step_back_neither_stops_rotation_nor_reuses_a_name():
    rot = Rotator(symbol="BTCUSDT", instance_id="i-1", rotate_bytes=1 << 20, rotate_seconds=5)
    rot.wall_offset_ms = 1_000_000
    rot.place(trade(1), now_ms=0)
    first = rot.current.part
    rot.wall_offset_ms = 1_000_000 - 3_600_000  # the wall clock stepped back an hour
    assert rot.expire(4_999) is None
    assert rot.expire(5_000) is not None, "age is measured on the monotonic clock"
    rot.place(trade(2), now_ms=5_000)
    assert rot.current.part.opened_at_ms == first.opened_at_ms + 1, "names never go back"


def test_names_start_above_the_newest_stamp_of_an_earlier_run_even_with_the_clock_behind(tmp_path):
    spool = Spool(tmp_path, bucket=BUCKET, gzip_level=1, clock_ms=lambda: 0)
    shipped = Part("BTCUSDT", "i-1", 1_764_433_201_123)
    (tmp_path / (shipped.stem + MANIFEST)).write_bytes(b"{}")
    spool.remove(spool.recover("i-1")[0])  # shipped: its name leaves the disk, its stamp stays
    assert list(tmp_path.iterdir()) == [tmp_path / STAMP_FILE]
    again = Spool(tmp_path, bucket=BUCKET, gzip_level=1, clock_ms=lambda: 0)
    rot = Rotator(symbol="ETHUSDT", instance_id="i-1", rotate_bytes=1 << 20, rotate_seconds=5,
                  last_stamp_ms=again.last_stamp_ms())
    rot.wall_offset_ms = shipped.opened_at_ms - 60_000  # a minute behind the last run
    rot.place(trade(1), now_ms=0)
    assert rot.current.part.opened_at_ms == shipped.opened_at_ms + 1


def test_a_wall_clock_far_from_binance_s_event_times_is_logged_once(tmp_path, caplog):
    service = _service(tmp_path)
    (symbol,) = service.symbols

    async def run() -> None:
        for n in (1, 2):  # TRADE's event time is a year before this test's wall clock
            symbol.on_trade(trade(n))
            service._close_all_files()
            await asyncio.wait(service._sealing)

    asyncio.run(run())
    assert caplog.text.count("the wall clock is +") == 1
    assert "s off Binance's event times" in caplog.text


def _sealed(tmp_path: Path, spool: Spool, trade_id: int):
    part = Part("BTCUSDT", "i-1", 1_764_433_201_123 + trade_id)
    spool.path(part, ".jsonl").write_bytes(TRADE.replace(b"5400000001", b"%d" % trade_id) + b"\n")
    return spool.seal_recounted(part)


@pytest.fixture
def shipper(tmp_path, s3):
    spool = Spool(tmp_path / "spool", bucket=BUCKET, gzip_level=1, clock_ms=lambda: 0)
    uploader = S3Uploader(s3.client(), bucket=BUCKET, attempts=1, stop=threading.Event())
    return Shipper(spool=spool, uploader=uploader)


def test_a_412_on_a_key_we_never_tried_quarantines_the_file_and_never_deletes_it(shipper, s3):
    item = _sealed(shipper.spool.dir, shipper.spool, 7)
    s3.client().put_object(Bucket=BUCKET, Key=item.part.data_key, Body=b"someone else's bytes")
    assert shipper._ship(item) is None
    kept = shipper.spool.dir / QUARANTINE_DIR
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        [item.part.stem + GZ, item.part.stem + MANIFEST, item.part.stem + ATTEMPTED])
    assert shipper.quarantined == 1
    listed = s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [o["Key"] for o in listed] == [item.part.data_key], "no manifest describes the foreign bytes"
    assert shipper.spool.recover("i-1") == [], "quarantined files wait for an operator, out of the queue"


def test_a_412_after_an_attempt_of_ours_counts_as_already_there(shipper, s3):
    item = _sealed(shipper.spool.dir, shipper.spool, 8)
    shipper.spool.note_attempt(item)  # a previous run started this upload; its answer was lost
    s3.client().put_object(Bucket=BUCKET, Key=item.part.data_key, Body=item.data.read_bytes())
    assert shipper._ship(item) is not None
    assert sorted(p.name for p in shipper.spool.dir.iterdir()) == [STAMP_FILE]


def test_a_crashed_upload_worker_ends_the_drain_at_once(shipper):
    item = _sealed(shipper.spool.dir, shipper.spool, 9)

    def broken(_item):
        raise RuntimeError("a bug in the upload path")

    shipper._ship = broken

    async def run() -> tuple[bool, float]:
        shipper.start()
        shipper.add(item)
        loop = asyncio.get_running_loop()
        started = loop.time()
        drained = await shipper.drain(30)
        return drained, loop.time() - started

    drained, took = asyncio.run(run())
    assert drained is False
    assert took < 5, "a dead worker ships nothing: waiting out the shutdown timeout helps no one"


def test_sealing_goes_on_while_the_default_thread_pool_is_saturated(tmp_path):
    """Sealing has threads of its own: DNS lookups or disk scans stuck in asyncio's default pool (or uploads
    waiting on S3, which have theirs too) never hold up a rotation."""
    service = _service(tmp_path)
    (symbol,) = service.symbols
    release = threading.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        stuck = loop.run_in_executor(None, release.wait)
        try:
            symbol.on_trade(trade(1))
            service._close_all_files()
            async with asyncio.timeout(10):
                await asyncio.wait(service._sealing)
        finally:
            release.set()
            await stuck

    asyncio.run(run())
    ((lines, doc),) = _object_and_manifest(tmp_path)
    assert len(lines) == doc["payload"]["record_count"] == 1
