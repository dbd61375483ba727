"""Re-checking one data object against its manifest, and reading which ids it holds. No I/O."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass, field

from audit.entries import Entry
from audit.ranges import Span
from collector.frames import Trade, parse_message


@dataclass
class ObjectCheck:
    problems: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)  # the ids it holds, with their trade times


def check_object(entry: Entry, body: bytes, symbol: str) -> ObjectCheck:
    """sha256, sizes, record count, first/last ids and id order of `body` against `entry`'s manifest; every
    line must be a `symbol` trade event as the collector accepts it (`collector.frames.parse_message`)."""
    result = ObjectCheck()
    problems = result.problems
    if hashlib.sha256(body).hexdigest() != entry.sha256:
        problems.append("sha256 differs from the manifest")
    if len(body) != entry.compressed_bytes:
        problems.append(f"{len(body)} bytes stored, manifest says {entry.compressed_bytes}")
    try:
        raw = gzip.decompress(body)
    except (OSError, EOFError, zlib.error) as exc:
        problems.append(f"not a readable gzip stream ({exc})")
        return result
    if len(raw) != entry.uncompressed_bytes:
        problems.append(f"{len(raw)} bytes uncompressed, manifest says {entry.uncompressed_bytes}")
    lines = raw.split(b"\n")
    if lines[-1]:
        problems.append("last line not newline-terminated")
    result.lines = lines = lines[:-1]
    if len(lines) != entry.record_count:
        problems.append(f"{len(lines)} lines, manifest says {entry.record_count}")
    spans = result.spans
    previous = -1
    for number, line in enumerate(lines, 1):
        trade = parse_message(line, True, symbol)
        if type(trade) is not Trade:
            problems.append(f"line {number} is not a trade event")
            return result
        trade_id, trade_time = trade.trade_id, trade.trade_time
        if trade_id <= previous:
            problems.append(f"line {number}: trade id {trade_id} after {previous}")
            return result
        if spans and trade_id == previous + 1:
            spans[-1] = spans[-1]._replace(last=trade_id, last_time=trade_time)
        else:
            spans.append(Span(trade_id, trade_id, trade_time, trade_time))
        previous = trade_id
    if spans and (spans[0].first, spans[-1].last) != (entry.first_trade_id, entry.last_trade_id):
        problems.append(f"ids {spans[0].first}..{spans[-1].last}, manifest says "
                        f"{entry.first_trade_id}..{entry.last_trade_id}")
    return result
