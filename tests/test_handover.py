import random

from collector.frames import Trade
from collector.handover import HANDOVER_SPREAD_SECONDS, Handover, planned_lifetime


def t(trade_id: int) -> Trade:
    return Trade(b"%d" % trade_id, trade_id, 0, 0)


def ids(trades):
    return [x.trade_id for x in trades]


def test_new_stream_joining_behind_the_old_drops_the_overlap():
    h = Handover(last_id=10)
    assert h.from_old(t(11))
    assert ids(h.from_new(t(9))) == []  # already delivered by the old stream
    assert h.joined
    assert ids(h.from_new(t(12))) == [12]
    assert not h.from_old(t(12))  # the old stream is now redundant


def test_new_stream_ahead_of_the_old_is_held_until_the_old_catches_up():
    h = Handover(last_id=10)
    assert ids(h.from_new(t(13))) == []  # 11 and 12 are still in flight on the old stream
    assert ids(h.from_new(t(14))) == []
    assert h.from_old(t(11)) and h.from_old(t(12))
    assert h.joined
    assert ids(h.from_new(t(15))) == [13, 14, 15]


def test_giving_up_releases_what_was_held_and_leaves_the_gap_visible():
    h = Handover(last_id=10)
    h.from_new(t(20))
    assert ids(h.release()) == [20]
    assert h.last_id == 20


def test_nothing_delivered_yet_joins_at_once():
    h = Handover(last_id=None)
    assert ids(h.from_new(t(5))) == [5]


def test_planned_handovers_fall_at_random_in_the_hour_before_the_lifetime():
    rng = random.Random(3)
    lifetimes = [planned_lifetime(84_600, rng) for _ in range(500)]
    assert all(84_600 - HANDOVER_SPREAD_SECONDS <= x <= 84_600 for x in lifetimes)
    assert max(lifetimes) - min(lifetimes) > 0.9 * HANDOVER_SPREAD_SECONDS, "spread over the hour"
    assert len({round(x) for x in lifetimes}) > 400, "connections opened together do not hand over together"
    short = [planned_lifetime(2, rng) for _ in range(100)]
    assert all(1 <= x <= 2 for x in short), "a short test lifetime is spread over its second half"


def test_once_joined_a_trade_of_the_old_stream_passes_only_when_it_is_ahead():
    h = Handover(last_id=10)
    assert ids(h.from_new(t(11))) == [11]
    assert not h.from_old(t(11))
    assert h.from_old(t(12)), "until the switch, the old stream may be ahead of the new one"
    assert ids(h.from_new(t(12))) == []
    assert ids(h.from_new(t(13))) == [13]
