from collector.frames import Trade
from collector.rotator import Rotator


def trade(trade_id: int, *, event_time: int = 1000, trade_time: int = 999, size: int = 100) -> Trade:
    raw = b'{"t":%d,' % trade_id
    return Trade(raw + b"x" * (size - len(raw) - 1) + b"}", trade_id, event_time, trade_time)


def rotator(rotate_bytes: int = 1000, rotate_seconds: float = 5) -> Rotator:
    return Rotator(symbol="BTCUSDT", instance_id="i-1", rotate_bytes=rotate_bytes, rotate_seconds=rotate_seconds)


def test_size_rotation_keeps_every_file_under_the_limit():
    rot = rotator(rotate_bytes=1000)
    sealed = []
    for n in range(25):  # 101 bytes a line: 9 lines fit in 1000 bytes, the 10th would not
        placement = rot.place(trade(n), now_ms=0)
        if placement.closes:
            sealed.append(placement.closes)
    assert [f.stats.record_count for f in sealed] == [9, 9]
    assert all(f.stats.uncompressed_bytes <= 1000 for f in sealed)
    assert rot.current is not None and rot.current.stats.record_count == 7


def test_time_rotation_by_age_whichever_comes_first():
    rot = rotator(rotate_bytes=10_000, rotate_seconds=5)
    rot.place(trade(1), now_ms=1_000)
    assert rot.expire(5_999) is None
    expired = rot.expire(6_000)
    assert expired is not None and expired.stats.record_count == 1
    assert rot.current is None and rot.expire(60_000) is None  # nothing open, nothing to seal


def test_an_old_file_is_sealed_before_the_next_trade_even_without_a_tick():
    rot = rotator(rotate_seconds=5)
    rot.place(trade(1), now_ms=0)
    placement = rot.place(trade(2), now_ms=5_000)
    assert placement.closes is not None and placement.closes.stats.last_trade_id == 1
    assert rot.current.stats.first_trade_id == 2


def test_no_empty_files_and_names_strictly_increase():
    rot = rotator(rotate_bytes=150)
    parts = []
    for n in range(3):  # one line per file, all in the same millisecond
        rot.place(trade(n), now_ms=42)
        parts.append(rot.current.part)
    assert [p.opened_at_ms for p in parts] == [42, 43, 44]
    assert rot.detach() is not None and rot.detach() is None


def test_statistics_min_max_and_first_last_in_file_order():
    rot = rotator(rotate_bytes=10_000)
    rot.place(trade(10, event_time=5, trade_time=4), now_ms=0)
    rot.place(trade(11, event_time=3, trade_time=9), now_ms=0)
    rot.place(trade(12, event_time=7, trade_time=2), now_ms=0)
    stats = rot.current.stats
    assert (stats.min_event_time, stats.max_event_time) == (3, 7)
    assert (stats.min_trade_time, stats.max_trade_time) == (2, 9)
    assert (stats.first_trade_id, stats.last_trade_id, stats.record_count) == (10, 12, 3)
    assert stats.uncompressed_bytes == 3 * 101


def test_gaps_are_counted_inside_a_file_and_across_files_of_a_run():
    rot = rotator(rotate_bytes=250)  # two lines per file
    gaps = [rot.place(trade(n), now_ms=0).gap for n in (1, 2, 5, 6, 7, 100)]
    assert [(g.first, g.last, g.missing) if g else None for g in gaps] == [
        None, None, (3, 4, 2), None, None, (8, 99, 92)]
    # the gap 3..4 belongs to the file holding 5 and 6; the gap 8..99 to the one holding 7 and 100
    assert rot.current.stats.trade_id_gaps == 1 and rot.current.stats.missing_trade_ids == 92


def test_a_trade_id_that_goes_back_starts_a_new_file():
    rot = rotator(rotate_bytes=10_000)
    placements = [rot.place(trade(n), now_ms=0) for n in (7, 8, 9, 8, 9, 10, 10, 3)]
    assert [p.replayed_after for p in placements] == [None, None, None, 9, None, None, 10, 10]
    seals = [p.closes for p in placements]
    assert [s.stats.first_trade_id if s else None for s in seals] == [None, None, None, 7, None, None, 8, 10]
    sealed = [s for s in seals if s] + [rot.detach()]
    assert [(f.stats.first_trade_id, f.stats.last_trade_id, f.stats.record_count) for f in sealed] == [
        (7, 9, 3), (8, 10, 3), (10, 10, 1), (3, 3, 1)]
    assert all(f.stats.trade_id_gaps == 0 for f in sealed)
    # a replay that starts a file after a time rotation is reported too
    rot.place(trade(20), now_ms=0)
    assert rot.expire(60_000) is not None
    assert rot.place(trade(15), now_ms=60_000) == (None, None, 20)


def test_after_a_replay_from_further_back_the_next_new_trade_is_not_a_gap():
    rot = rotator(rotate_bytes=10_000)
    gaps = [rot.place(trade(n), now_ms=0).gap for n in (1, 2, 3, 4, 5, 2, 3, 6, 8)]
    assert [(g.first, g.last) if g else None for g in gaps] == [None] * 8 + [(7, 7)]
    assert rot.detach().stats.missing_trade_ids == 1  # the file holding 2, 3, 6, 8


def test_rejections_and_reconnects_go_to_the_open_or_next_file():
    rot = rotator()
    rot.note_malformed()
    rot.note_reconnect()
    rot.place(trade(1), now_ms=0)
    rot.note_malformed()
    stats = rot.current.stats
    assert (stats.malformed_messages, stats.reconnects) == (2, 1)
