from collector.frames import MAX_MESSAGE_BYTES, Notice, Rejected, Trade, parse_message

TRADE = (b'{"e":"trade","E":1764433201000,"s":"BTCUSDT","t":5400000001,"p":"43250.1","q":"0.001",'
         b'"T":1764433200999,"m":true,"M":true}')


def test_trade_keeps_the_exact_bytes_and_64_bit_ids():
    parsed = parse_message(TRADE, text=True, symbol="BTCUSDT")
    assert parsed == Trade(TRADE, 5400000001, 1764433201000, 1764433200999)
    assert parsed.raw is TRADE


def test_server_shutdown_is_a_notice():
    assert parse_message(b'{"e":"serverShutdown","E":1}', text=True, symbol="BTCUSDT") is Notice.SERVER_SHUTDOWN


def test_bad_input_is_rejected_with_a_reason():
    cases = {
        b"not json": "not JSON",
        b"[1,2]": "JSON that is not an object",
        b'{"result":null,"id":1}': "subscription reply",
        TRADE.replace(b'"t":5400000001,', b""): "trade without 64-bit integer t/E/T",
        TRADE.replace(b'"E":1764433201000', b'"E":"1764433201000"'): "trade without 64-bit integer t/E/T",
        TRADE.replace(b'"t":5400000001', b'"t":true'): "trade without 64-bit integer t/E/T",
        TRADE.replace(b"BTCUSDT", b"ETHUSDT"): "trade for symbol 'ETHUSDT' on the BTCUSDT stream",
        b'{"e":"aggTrade"}': "event type 'aggTrade' is not a trade",
        b"\xff\xfe": "not JSON",
        TRADE.replace(b"5400000001", b"%d" % 2**63): "trade without 64-bit integer t/E/T",
        TRADE.replace(b'"p":"43250.1"', b'"p":[1,}'): "not JSON",
        TRADE.replace(b'"m":true', b'"m":tru'): "not JSON",
        TRADE.replace(b'"E":1764433201000', b'"E":1764433201000.0'): "trade without 64-bit integer t/E/T",
        TRADE.replace(b'"t":5400000001', b'"t":-1'): "negative trade id",
        TRADE.replace(b'"p":"43250.1"', b'"p":"\xff"'): "not JSON",  # invalid UTF-8 in a field not read
        TRADE.replace(b'"p":"43250.1"', b'"p":"\xed\xa0\x80"'): "not JSON",  # a UTF-8-encoded surrogate
        TRADE.replace(b'"p":"43250.1"', b'"p":' + b"[" * 5000 + b"]" * 5000): "JSON nested too deeply",
        TRADE.replace(b'"t":5400000001', b'"t":true,"t":5400000001'): "trade with a field given twice",
        TRADE.replace(b'"s":"BTCUSDT"', b'"s":7'): "trade for symbol 7 on the BTCUSDT stream",
    }
    for data, reason in cases.items():
        assert parse_message(data, text=True, symbol="BTCUSDT") == Rejected(reason), data


def test_utf8_beyond_ascii_is_kept():
    trade = TRADE.replace(b'"p":"43250.1"', '"p":"43250.1","note":"\u00e9\u20ac"'.encode())
    assert parse_message(trade, text=True, symbol="BTCUSDT") == Trade(trade, 5400000001, 1764433201000, 1764433200999)


def test_binary_frames_and_oversized_messages_are_rejected():
    assert parse_message(TRADE, text=False, symbol="BTCUSDT") == Rejected("binary frame")
    big = TRADE[:-1] + b',"x":"' + b"a" * MAX_MESSAGE_BYTES + b'"}'
    parsed = parse_message(big, text=True, symbol="BTCUSDT")
    assert isinstance(parsed, Rejected) and "exceeds" in parsed.reason


def test_a_trade_with_a_raw_line_break_would_split_a_jsonl_line():
    spread = TRADE.replace(b',"p"', b',\n"p"')
    assert parse_message(spread, text=True, symbol="BTCUSDT") == Rejected("trade with a raw line break")
