import jsonschema
import msgspec

from collector import manifest
from collector.keys import Part
from collector.stats import FileStats


def test_manifest_matches_the_schema_and_the_documented_example(manifest_schema):
    stats = FileStats(record_count=1234, uncompressed_bytes=215000, min_event_time=1764433201000,
                      max_event_time=1764433205990, min_trade_time=1764433200999, max_trade_time=1764433205989,
                      first_trade_id=5400000001, last_trade_id=5400001234, malformed_messages=2,
                      trade_id_gaps=1, missing_trade_ids=3, reconnects=1)
    part = Part("BTCUSDT", "i-0abc", 1764433201123)
    doc = manifest.build(part=part, stats=stats, bucket="raw-bucket", compressed_bytes=41000,
                         sha256="a" * 64, created_at_ms=1764433206123)
    jsonschema.validate(doc, manifest_schema)
    assert doc["payload"]["key"] == part.data_key
    assert doc["created_at"] == "2025-11-29T16:20:06.123Z"
    assert doc["quality"] == {"malformed_messages": 2, "trade_id_gaps": 1, "missing_trade_ids": 3, "reconnects": 1}
    assert msgspec.json.decode(manifest.encode(doc)) == doc
    assert msgspec.json.decode(manifest.encode(doc))["payload"]["first_trade_id"] == 5400000001  # 64-bit survives
