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
    sealed: list[SpoolFile] = []
    expected, rejected, now = [], 0, 0
    for data, text, advance in frames:
        now += advance
        parsed = parse_message(data, text=text, symbol=SYMBOL)
        if isinstance(parsed, Trade):
            expected.append(data)
            placement = rotator.place(parsed, now)
            if placement.seal is not None:
                sealed.append(placement.seal)
            files.setdefault(rotator.current.part.stem, bytearray()).extend(parsed.raw + b"\n")
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
