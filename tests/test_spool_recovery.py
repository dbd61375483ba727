"""Every state a crash can leave in the spool is finished by the next start, never shipped twice."""

import gzip

import msgspec

from collector.config import GZIP_LEVEL
from collector.frames import parse_message
from collector.keys import Part
from collector.rotator import Rotator
from collector.spool import GZ, JSONL, MANIFEST, Spool
from tests.test_frames import TRADE


def spool(tmp_path):
    return Spool(tmp_path, bucket="b-test", gzip_level=GZIP_LEVEL, clock_ms=lambda: 1764433206123)


def trade_line(trade_id: int) -> bytes:
    return TRADE.replace(b"5400000001", b"%d" % trade_id) + b"\n"


def test_a_half_written_file_is_sealed_without_its_torn_last_line(tmp_path):
    s = spool(tmp_path)
    part = Part("BTCUSDT", "i-1", 1764433201123)
    s.path(part, JSONL).write_bytes(trade_line(1) + trade_line(2) + trade_line(4) + trade_line(5)[:40])
    (item,) = s.recover("i-1")
    assert item.part == part and not s.path(part, JSONL).exists()
    assert gzip.decompress(item.data.read_bytes()) == trade_line(1) + trade_line(2) + trade_line(4)
    doc = msgspec.json.decode(item.manifest.read_bytes())
    assert doc["payload"]["record_count"] == 3 and doc["payload"]["key"] == part.data_key
    assert doc["quality"]["malformed_messages"] == 1
    assert (doc["quality"]["trade_id_gaps"], doc["quality"]["missing_trade_ids"]) == (1, 1)


def test_sealed_files_and_lone_manifests_are_shipped_under_their_own_keys(tmp_path):
    s = spool(tmp_path)
    rot = Rotator(symbol="BTCUSDT", instance_id="i-1", rotate_bytes=10_000, rotate_seconds=5)
    rot.place(parse_message(trade_line(1)[:-1], text=True, symbol="BTCUSDT"), 1_000)
    first = rot.current
    s.path(first.part, JSONL).write_bytes(trade_line(1))
    sealed = s.seal(first.part, first.stats)
    assert not s.path(first.part, JSONL).exists()
    lone = Part("BTCUSDT", "i-1", 500)  # its data object went up, the manifest did not
    s.path(lone, MANIFEST).write_bytes(b"{}")
    half = Part("BTCUSDT", "i-1", 2_000)  # crashed between gzip and manifest
    s.path(half, JSONL).write_bytes(trade_line(7))
    s.path(half, GZ).write_bytes(b"partial")
    (tmp_path / "x.jsonl.gz.tmp").write_bytes(b"torn write")

    items = s.recover("i-1")
    assert [i.part for i in items] == [lone, first.part, half]  # oldest first
    assert items[0].data is None and items[1] == sealed
    assert gzip.decompress(items[2].data.read_bytes()) == trade_line(7)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [lone.stem + MANIFEST, first.part.stem + GZ, first.part.stem + MANIFEST, half.stem + GZ, half.stem + MANIFEST])
    assert s.recover("i-1") == items, "a second sweep finds the same work, under the same keys"


def test_a_file_with_no_complete_trade_is_dropped_and_nothing_else_is_touched(tmp_path):
    s = spool(tmp_path)
    part = Part("BTCUSDT", "i-1", 1_000)
    s.path(part, JSONL).write_bytes(trade_line(1)[:30])
    (tmp_path / "README").write_text("operator notes")
    assert s.recover("i-1") == []
    assert [p.name for p in tmp_path.iterdir()] == ["README"]
