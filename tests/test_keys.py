from datetime import date

import pytest

from collector.keys import (
    Part,
    curated_bars_key,
    curated_table_folder,
    curated_trades_parquet_key,
    hour_folder,
    timestamp,
)


def test_keys_follow_the_design_layout():
    part = Part("BTCUSDT", "i-0abc", 1764433201123)  # 2025-11-29T16:20:01.123Z
    assert part.data_key == (
        "raw/exchange=binance/stream=trade/symbol=BTCUSDT/date=2025-11-29/hour=16/"
        "part-i-0abc-20251129T162001123Z.jsonl.gz"
    )
    assert part.manifest_key == (
        "manifests/exchange=binance/stream=trade/symbol=BTCUSDT/date=2025-11-29/hour=16/"
        "part-i-0abc-20251129T162001123Z.manifest.json"
    )


def test_timestamp_is_cut_to_milliseconds_and_zero_padded():
    assert timestamp(1764433201005) == "20251129T162001005Z"
    assert timestamp(0) == "19700101T000000000Z"


def test_spool_names_round_trip_even_with_dashes_in_the_instance_id():
    part = Part("ETHUSDT", "i-0abc-def", 1764433201999)
    assert Part.from_stem(part.stem) == part
    with pytest.raises(ValueError):
        Part.from_stem("notes")


def test_each_curated_table_has_a_folder_of_its_own_and_athena_templates_share_the_layout():
    day, sha = date(2026, 11, 28), "0123456789abcdef" + "0" * 48
    assert curated_trades_parquet_key("BTCUSDT", day, sha) == (
        "curated/exchange=binance/symbol=BTCUSDT/date=2026-11-28/trades/trades-0123456789abcdef.parquet")
    assert curated_bars_key("BTCUSDT", day, "1s", sha) == (
        "curated/exchange=binance/symbol=BTCUSDT/date=2026-11-28/bars-1s/bars-1s-0123456789abcdef.parquet")
    assert curated_table_folder("${symbol}", "${day}", "trades") == (
        "curated/exchange=binance/symbol=${symbol}/date=${day}/trades/")
    assert Part("BTCUSDT", "i-0abc", 1764433201123).data_key.startswith(
        hour_folder("raw/", "BTCUSDT", "2025-11-29", "16"))
