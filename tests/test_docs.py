"""Facts the docs state about the Parquet tables, the query tool and Athena, checked against the code."""

from __future__ import annotations

import re

from audit import query
from audit.bars import BARS_SCHEMA, INTERVALS
from audit.parquet_day import PRICE, QUOTE, ROW_GROUP_ROWS, TRADES_SCHEMA
from collector.keys import ATHENA_RESULTS_PREFIX
from stacks.analytics import BYTES_SCANNED_CUTOFF, FIRST_DAY, NAMED_QUERIES, RAW_TABLE, RESULTS_EXPIRE_DAYS
from stacks.application import STACK_NAME
from tests.conftest import ROOT

DATA = (ROOT / "docs" / "data.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def _section(text: str, heading: str) -> str:
    """From `heading` to the next heading of its level or above."""
    start = text.index(heading)
    level = len(heading.split()[0])
    following = re.search(rf"\n#{{1,{level}}} ", text[start + len(heading):])
    return text[start:start + len(heading) + following.start()] if following else text[start:]


def test_data_md_states_the_tables_columns_types_and_row_groups() -> None:
    sql = _section(DATA, "## SQL over the trades")
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)`", sql, re.MULTILINE))
    assert list(rows) == TRADES_SCHEMA.names
    assert rows["price"] == rows["quantity"] == f"DECIMAL({PRICE.precision},{PRICE.scale})"
    assert rows["quote_quantity"] == f"DECIMAL({QUOTE.precision},{QUOTE.scale})"
    assert f"row groups of {ROW_GROUP_ROWS:,} trades" in sql
    assert ", ".join(f"`{name}`" for name in BARS_SCHEMA.names) in sql.replace("\n", " ")
    assert ", ".join(f"`bars_{i}`" for i in INTERVALS) in sql
    assert f"(at most {query.MAX_DAYS} days)" in sql.replace("\n", " ")
    assert "~/.cache/tradecollector/<bucket>/" in sql and query.default_cache().name == "tradecollector"


def test_operations_md_states_the_workgroups_settings_and_the_named_queries() -> None:
    athena = _section(OPERATIONS, "### Athena")
    assert f"more than **{BYTES_SCANNED_CUTOFF // 1024**3} GiB** is cancelled" in athena
    assert f"under `{ATHENA_RESULTS_PREFIX}`" in athena and f"after {RESULTS_EXPIRE_DAYS} days" in athena
    assert f"`{STACK_NAME.lower()}`" in athena and f"from {FIRST_DAY} to today" in athena
    assert f"`{RAW_TABLE}`" in athena
    assert all(f"`{name}`" in athena for name in NAMED_QUERIES)
