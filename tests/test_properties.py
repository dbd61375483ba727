"""Arbitrary frames through the parsing and rotation path: trades come out byte-identical, counts add up."""

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.frames import Trade, parse_message
from collector.rotator import Rotator, SpoolFile

SYMBOL = "BTCUSDT"

trades = st.builds(
    lambda t, e, p: b'{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,"p":"%s","q":"1","T":%d,"m":true,"M":true}'
    % (e, t, p.encode(), e - 1),
    st.integers(0, 2**63 - 1), st.integers(0, 2**50), st.from_regex(r"[0-9]{1,8}\.[0-9]{1,8}", fullmatch=True),
)
junk = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.builds(lambda t: b'{"e":"trade","s":"BTCUSDT","t":%d}' % t, st.integers(0, 10**12)),  # no E/T
    st.just(b'{"result":null,"id":1}'),
    st.just(b'{"e":"serverShutdown","E":1}'),
)
frames = st.lists(st.tuples(st.one_of(trades, junk), st.booleans(), st.integers(0, 3000)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(frames=frames, rotate_bytes=st.integers(300, 5000))
def test_valid_trades_come_out_byte_identical_and_counts_add_up(frames, rotate_bytes):
    rotator = Rotator(symbol=SYMBOL, instance_id="i-1", rotate_bytes=rotate_bytes, rotate_seconds=1)
    files: dict[str, bytearray] = {}
    ids: dict[str, list[int]] = {}
    sealed: list[SpoolFile] = []
    expected, rejected, now = [], 0, 0
    for data, text, advance in frames:
        now += advance
        parsed = parse_message(data, text=text, symbol=SYMBOL)
        if isinstance(parsed, Trade):
            expected.append(data)
            placement = rotator.place(parsed, now)
            if placement.closes is not None:
                sealed.append(placement.closes)
            files.setdefault(rotator.current.part.stem, bytearray()).extend(parsed.raw + b"\n")
            ids.setdefault(rotator.current.part.stem, []).append(parsed.trade_id)
        else:
            rejected += 1
            rotator.note_malformed()
        expired = rotator.expire(now)
        if expired is not None:
            sealed.append(expired)
    last = rotator.detach()
    if last is not None:
        sealed.append(last)

    assert b"".join(files[f.part.stem] for f in sealed) == b"".join(line + b"\n" for line in expected)
    assert sum(f.stats.record_count for f in sealed) == len(expected)
    assert all(f.stats.record_count >= 1 for f in sealed)
    assert all(f.stats.uncompressed_bytes == len(files[f.part.stem]) for f in sealed)
    assert all(f.stats.uncompressed_bytes <= rotate_bytes or f.stats.record_count == 1 for f in sealed)
    # rejections after the last trade stay pending for a file that never opened
    assert sum(f.stats.malformed_messages for f in sealed) + rotator.pending_malformed == rejected
    assert len({f.part.stem for f in sealed}) == len(sealed)
    # every file's ids strictly increase, so its manifest's first/last ids bound exactly what it holds
    assert all(ids[f.part.stem] == sorted(set(ids[f.part.stem])) for f in sealed)
    assert all((f.stats.first_trade_id, f.stats.last_trade_id) == (ids[f.part.stem][0], ids[f.part.stem][-1])
               for f in sealed)


# (trades as (id step, E, padding), whether the ids just continue, ms since the previous read)
runs = st.lists(
    st.tuples(st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 2**40), st.integers(1, 400)), min_size=1,
                       max_size=40), st.booleans(), st.integers(0, 3000)),
    max_size=60)


@settings(max_examples=200, deadline=None)
@given(batches=runs, rotate_bytes=st.integers(300, 5000))
def test_placing_a_read_at_once_makes_the_same_files_as_trade_by_trade(batches, rotate_bytes):
    """`place_run` (the fast path for one socket read) must cut the same files with the same statistics as
    `place` would, whether it takes the batch or hands it back (gaps, repeats, rotations inside)."""
    one = Rotator(symbol=SYMBOL, instance_id="i-1", rotate_bytes=rotate_bytes, rotate_seconds=1)
    run = Rotator(symbol=SYMBOL, instance_id="i-1", rotate_bytes=rotate_bytes, rotate_seconds=1)
    sealed_one: list[SpoolFile] = []
    sealed_run: list[SpoolFile] = []
    next_id, now = 5_400_000_000, 0
    for batch, continues, advance in batches:
        now += advance
        trades = []
        for step, event_time, pad in batch:
            next_id += 1 if continues else step  # 0 repeats an id, below 0 replays, 2 or more skips some
            raw = b'{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,"p":"%s","T":%d}' % (
                event_time, next_id, b"1" * pad, event_time - 1)
            trades.append(parse_message(raw, text=True, symbol=SYMBOL))
        for trade in trades:
            placement = one.place(trade, now)
            if placement.closes is not None:
                sealed_one.append(placement.closes)
        placement = run.place_run(trades, sum(len(t.raw) + 1 for t in trades), now)
        if placement is None:
            for trade in trades:
                placement = run.place(trade, now)
                if placement.closes is not None:
                    sealed_run.append(placement.closes)
        elif placement.closes is not None:
            sealed_run.append(placement.closes)
    for rotator, sealed in ((one, sealed_one), (run, sealed_run)):
        if rotator.current is not None:
            sealed.append(rotator.detach())
    assert [(f.part, f.stats) for f in sealed_run] == [(f.part, f.stats) for f in sealed_one]
