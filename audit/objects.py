"""Re-checking one data object against its manifest, and reading which ids it holds. No I/O.

Whatever an object holds, checking it takes bounded memory: the body is read no further than the manifest's
size (`bucket.read`), and it is inflated in a stream that stops one byte past the manifest's uncompressed size,
never past `MAX_OBJECT_BYTES`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

from isal import igzip, isal_zlib

from audit.entries import MAX_OBJECT_BYTES, Entry
from audit.ranges import Span
from collector.frames import Trade, parse_message

_INFLATE_CHUNK = 1 << 20

Line = tuple[int, int, int, bytes]  # trade id, T, E, the line


class TooLarge(ValueError):
    """The stream inflates to more bytes than allowed."""


class NotGzip(ValueError):
    """The body is not a whole gzip stream (not gzip, truncated, corrupt)."""


def inflate(body: bytes, limit: int) -> bytes:
    """The gzip stream `body` inflated, chunk by chunk; TooLarge as soon as it passes `limit` bytes, so that a
    gzip bomb costs at most `limit` plus a chunk. NotGzip when it is not a (whole) gzip stream."""
    out = bytearray()
    try:
        with igzip.IGzipFile(fileobj=io.BytesIO(body)) as stream:
            while chunk := stream.read(min(_INFLATE_CHUNK, limit + 1 - len(out))):
                out += chunk
                if len(out) > limit:
                    raise TooLarge(f"more than {limit} bytes uncompressed")
    except (OSError, EOFError, isal_zlib.error) as exc:
        raise NotGzip(str(exc)) from None
    return bytes(out)


@dataclass
class ObjectCheck:
    problems: list[str] = field(default_factory=list)
    trades: list[Line] = field(default_factory=list)  # every line, parsed, while no problem stops the reading
    spans: list[Span] = field(default_factory=list)  # the ids it holds, with their trade times

    @property
    def lines(self) -> list[bytes]:
        return [trade[3] for trade in self.trades]


def check_object(entry: Entry, body: bytes, symbol: str) -> ObjectCheck:
    """sha256, sizes, record count, first/last ids and id order of `body` against `entry`'s manifest; every
    line must be a `symbol` trade event as the collector accepts it (`collector.frames.parse_message`)."""
    result = ObjectCheck()
    problems = result.problems
    if hashlib.sha256(body).hexdigest() != entry.sha256:
        problems.append("sha256 differs from the manifest")
    if len(body) != entry.compressed_bytes:
        stored = f"more than {entry.compressed_bytes}" if len(body) > entry.compressed_bytes else str(len(body))
        problems.append(f"{stored} bytes stored, manifest says {entry.compressed_bytes}")
    limit = min(entry.uncompressed_bytes, MAX_OBJECT_BYTES)
    try:
        raw = inflate(body, limit)
    except TooLarge:
        problems.append(f"more than {limit} bytes uncompressed, manifest says {entry.uncompressed_bytes}")
        return result
    except NotGzip as exc:
        problems.append(f"not a readable gzip stream ({exc})")
        return result
    if len(raw) != entry.uncompressed_bytes:
        problems.append(f"{len(raw)} bytes uncompressed, manifest says {entry.uncompressed_bytes}")
    lines = raw.split(b"\n")
    if lines[-1]:
        problems.append("last line not newline-terminated")
    lines = lines[:-1]
    if len(lines) != entry.record_count:
        problems.append(f"{len(lines)} lines, manifest says {entry.record_count}")
    spans, trades = result.spans, result.trades
    previous, previous_time = -1, 0
    run: tuple[int, int] | None = None  # first id and time of the run of consecutive ids being read
    for number, line in enumerate(lines, 1):
        trade = parse_message(line, True, symbol)
        if type(trade) is not Trade:
            problems.append(f"line {number} is not a trade event")
            return result
        trade_id, trade_time = trade.trade_id, trade.trade_time
        if trade_id <= previous:
            problems.append(f"line {number}: trade id {trade_id} after {previous}")
            return result
        trades.append((trade_id, trade_time, trade.event_time, line))
        if run is not None and trade_id != previous + 1:
            spans.append(Span(run[0], previous, run[1], previous_time))
            run = None
        if run is None:
            run = trade_id, trade_time
        previous, previous_time = trade_id, trade_time
    if run is not None:
        spans.append(Span(run[0], previous, run[1], previous_time))
    if spans and (spans[0].first, spans[-1].last) != (entry.first_trade_id, entry.last_trade_id):
        problems.append(f"ids {spans[0].first}..{spans[-1].last}, manifest says "
                        f"{entry.first_trade_id}..{entry.last_trade_id}")
    return result
