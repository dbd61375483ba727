"""The docs state facts the code could contradict (defaults, keys, limits, sizes); these tests hold them to the
code, and hold the repository to itself: every link resolves inside it, nothing points outside it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

import userdata
from audit import daily, query
from audit.bars import BARS_SCHEMA, INTERVALS
from audit.corroborate import DEFAULT_MODE, DISAGREEMENTS_LISTED, Mode
from audit.entries import MANIFEST_MAX_BYTES, MAX_OBJECT_BYTES
from audit.parquet_day import PRICE, QUOTE, ROW_GROUP_ROWS, TRADES_SCHEMA
from collector import config, keys
from collector.backoff import RECONNECT_CAP_SECONDS, Backoff
from collector.connect_budget import burst, pace_seconds, startup_seconds
from collector.connection_policy import HANDOVER_TIMEOUT_SECONDS
from collector.frames import MAX_MESSAGE_BYTES
from collector.handover import HANDOVER_SPREAD_SECONDS
from collector.keys import ATHENA_RESULTS_PREFIX
from collector.ws_client import CLOSE_TIMEOUT_SECONDS, PROTOCOL_MAX_SIZE
from stacks import daily_job
from stacks.analytics import BYTES_SCANNED_CUTOFF, FIRST_DAY, NAMED_QUERIES, RAW_TABLE, RESULTS_EXPIRE_DAYS
from stacks.application import STACK_NAME
from stacks.settings import CONTEXT_KEYS
from tests.cdk_support import REPO_ROOT, cdk_context
from userdata.archive import collector_archive

DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [REPO_ROOT / "README.md", *DOCS]
OPERATIONS = " ".join((REPO_ROOT / "docs" / "operations.md").read_text().split())
GUARANTEES = " ".join((REPO_ROOT / "docs" / "guarantees.md").read_text().split())
# Defaults that depend on the machine the collector runs on; the docs say where they come from instead.
_MACHINE_DEFAULTS = {"instance_id", "spool_dir", "connect_state"}


def _table(page: Path, first_column: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header starts with `first_column`, by first cell (backticks gone)."""
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in page.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_column:
            in_table = True
        elif in_table and line.startswith("|"):
            if not set(cells[0]) <= {"-"}:
                rows[cells[0].strip("`")] = [cell.strip("`") for cell in cells[1:]]
        elif in_table:
            break
    return rows


def test_the_readme_links_one_page_per_reader_and_every_page_exists():
    readme = (REPO_ROOT / "README.md").read_text()
    for page in ("operations", "data", "guarantees", "performance"):
        assert f"(docs/{page}.md)" in readme
        assert (REPO_ROOT / "docs" / f"{page}.md").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_repository(page: Path):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(REPO_ROOT), f"{page.name} links outside the repository: {target}"
        assert resolved.exists(), f"{page.name} links to a missing file: {target}"


def test_nothing_in_the_repository_reads_or_cites_files_beside_it():
    outside = re.compile(r"\.\./" + "shared|DESIGN" + r"\.md")
    offenders = []
    for path in REPO_ROOT.rglob("*"):
        parts = path.relative_to(REPO_ROOT).parts
        if not path.is_file() or parts[0] in {".git", ".venv", "node_modules", "cdk.out"} or "__pycache__" in parts:
            continue
        if path.suffix in {".py", ".md", ".json", ".sh", ".service", ".txt", ".toml"} or path.name == "Makefile":
            offenders += [f"{path.relative_to(REPO_ROOT)}:{n}" for n, line in
                          enumerate(path.read_text(errors="replace").splitlines(), 1) if outside.search(line)]
    assert offenders == []


def test_the_collector_settings_table_is_every_setting_with_its_default():
    rows = _table(REPO_ROOT / "docs" / "operations.md", "variable")
    options = config._options({})
    assert set(rows) == {opt.env for opt in options}
    for opt in options:
        flag, default = rows[opt.env][0], rows[opt.env][1]
        assert flag == opt.flag
        if opt.field in _MACHINE_DEFAULTS:
            continue
        if opt.default is None:
            assert default == "required"
        elif opt.default == "":
            assert default.startswith("empty")
        else:
            assert opt.parse(default) == opt.parse(opt.default), opt.env
    assert f"at least {MAX_MESSAGE_BYTES + 1}" in rows["COLLECTOR_ROTATE_BYTES"][2]


def test_the_cdk_context_table_is_every_key_with_cdk_json_s_default():
    rows = _table(REPO_ROOT / "docs" / "operations.md", "key")
    context = cdk_context()
    assert set(rows) == set(CONTEXT_KEYS)
    for key in CONTEXT_KEYS:
        value = context[key]
        if value == "":
            assert rows[key][0].startswith("empty"), key
        else:
            assert rows[key][0] == (str(value).lower() if isinstance(value, bool) else str(value)), key


def test_the_documented_key_layout_is_the_one_the_code_writes():
    data = (REPO_ROOT / "docs" / "data.md").read_text()
    opened = datetime(2026, 11, 29, 16, 20, 1, 123000, tzinfo=UTC)
    part = keys.Part("BTCUSDT", "<instance>", int(opened.timestamp() * 1000))
    stamp = keys.timestamp(part.opened_at_ms)
    assert stamp == "20261129T162001123Z" and f"`{stamp}`" in data
    for key in (part.data_key, part.manifest_key):
        assert key.replace(stamp, "<ts>") in data
    curated = keys.curated_data_key("S", opened.date(), "0" * 64)
    assert curated.replace("2026-11-29", "D").replace("0" * 16, "<first 16 hex of its sha256>") in data
    assert keys.curated_manifest_key("S", opened.date()).replace("2026-11-29", "D") in data


def test_the_stated_archive_size_is_the_archive_s():
    stated = re.search(r"deterministic tar\.gz \(~(\d+) KB", (REPO_ROOT / "docs" / "operations.md").read_text())
    assert stated is not None
    # "~N KB" is an order of size, not a checksum: within 15% of the archive this code makes.
    assert abs(len(collector_archive()) / 1000 - int(stated[1])) <= 0.15 * len(collector_archive()) / 1000


# Connections: the budget, start-up, handovers, descriptors

MINUS, TIMES = "\N{MINUS SIGN}", "\N{MULTIPLICATION SIGN}"


class _Jitter:
    """Backoff's random source pinned to one point of each jitter range."""

    def __init__(self, at: float) -> None:
        self.at = at

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.at


def _flapping_attempts(at: float) -> int:
    """Attempts in the first 5 minutes of a link that fails every time (the densest window)."""
    backoff = Backoff(first=config.RECONNECT_DELAY, cap=RECONNECT_CAP_SECONDS, rng=_Jitter(at))  # type: ignore[arg-type]
    attempts, t = 0, 0.0
    while t <= 300:
        attempts, t = attempts + 1, t + backoff.next()
    return attempts


def test_a_flapping_links_attempts_per_five_minutes():
    assert f"makes {_flapping_attempts(1.0)} to {_flapping_attempts(0.0)} attempts per 5 minutes" in GUARANTEES


def test_the_connection_budget_settings_are_documented_with_their_defaults():
    assert f"| `COLLECTOR_CONNECT_BUDGET` | `--connect-budget` | `{config.CONNECT_BUDGET}` |" in OPERATIONS
    assert f"| `COLLECTOR_CONNECT_WINDOW` | `--connect-window` | `{config.CONNECT_WINDOW:g}` |" in OPERATIONS
    assert f"2 to {config.BINANCE_CONNECT_LIMIT} (Binance allows {config.BINANCE_CONNECT_LIMIT} per IP)" in OPERATIONS
    assert f"`$RUNTIME_DIRECTORY/{config.CONNECT_STATE_FILE}`" in OPERATIONS
    assert f"no 5-minute window holds more than {config.CONNECT_BUDGET} attempts" in GUARANTEES


def test_the_pace_and_burst_are_the_codes():
    limit, window = config.CONNECT_BUDGET, config.CONNECT_WINDOW
    assert f"A fifth of it ({burst(limit)}) may go at once" in OPERATIONS
    assert f"one every {pace_seconds(limit, window):g} s ({window:g} s / {limit - burst(limit)})" in OPERATIONS
    pace = pace_seconds(limit, window)
    assert f"N symbols are all connected after (N {MINUS} {burst(limit)}) {TIMES} {pace:g} s" in OPERATIONS


@pytest.mark.parametrize("symbols", [100, 250, 500])
def test_the_start_up_table_is_the_budgets(symbols):
    seconds = startup_seconds(symbols, config.CONNECT_BUDGET, config.CONNECT_WINDOW)
    assert re.search(rf"\| {symbols} \| {seconds:.0f} s[ |(]", OPERATIONS), (symbols, seconds)
    assert startup_seconds(burst(config.CONNECT_BUDGET), config.CONNECT_BUDGET, config.CONNECT_WINDOW) == 0
    assert f"| up to {burst(config.CONNECT_BUDGET)} | at once |" in OPERATIONS


def test_the_largest_symbol_list_and_the_descriptor_limit():
    assert f"One instance serves at most **{config.MAX_SYMBOLS}** symbols" in OPERATIONS
    assert f"`LimitNOFILE={userdata.LIMIT_NOFILE}`" in OPERATIONS
    assert f"{userdata.FDS_PER_SYMBOL} {TIMES} {config.MAX_SYMBOLS} + {userdata.FDS_BASE}" in OPERATIONS


def test_the_planned_handover_hour():
    latest = config.CONNECTION_LIFETIME / 3600
    earliest = (config.CONNECTION_LIFETIME - HANDOVER_SPREAD_SECONDS) / 3600
    assert f"between {earliest:g} h and {latest:g} h" in OPERATIONS
    assert f"between {earliest:g} h and {latest:g} h of a connection's life" in GUARANTEES


def test_the_close_deadline_the_protocol_limit_and_the_overlap_wait_are_the_codes():
    assert f"over the protocol's {PROTOCOL_MAX_SIZE >> 20} MiB limit" in GUARANTEES
    assert f"the server has {CLOSE_TIMEOUT_SECONDS:g} s to end the connection" in GUARANTEES
    assert f"do not overlap within {HANDOVER_TIMEOUT_SECONDS:g} s" in GUARANTEES


# The audit's limits and the trust model


def _text(page: str) -> str:
    return " ".join((REPO_ROOT / "docs" / page).read_text().split())


def test_the_audit_s_caps_are_the_ones_the_docs_state() -> None:
    for page in ("data.md", "guarantees.md"):
        text = _text(page)
        assert f"{MANIFEST_MAX_BYTES // 1024} KiB" in text and f"{MAX_OBJECT_BYTES >> 20} MiB" in text, page
    assert f"the first {DISAGREEMENTS_LISTED:,}" in _text("data.md")
    assert f"the first {DISAGREEMENTS_LISTED:,} listed" in _text("guarantees.md")


def test_the_corroboration_modes_and_default_are_the_ones_the_docs_state() -> None:
    for page in ("data.md", "guarantees.md"):
        text = _text(page)
        assert re.findall(r"`(\w+)` \(the default", text) == [str(DEFAULT_MODE)], page
        assert all(f"`{mode}`" in text for mode in Mode), page


# SQL: the Parquet tables, the query tool, Athena

DATA = (REPO_ROOT / "docs" / "data.md").read_text()
OPERATIONS_MD = (REPO_ROOT / "docs" / "operations.md").read_text()


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
    athena = _section(OPERATIONS_MD, "### Athena")
    assert f"more than **{BYTES_SCANNED_CUTOFF // 1024**3} GiB** is cancelled" in athena
    assert f"under `{ATHENA_RESULTS_PREFIX}`" in athena and f"after {RESULTS_EXPIRE_DAYS} days" in athena
    assert f"`{STACK_NAME.lower()}`" in athena and f"from {FIRST_DAY} to today" in athena
    assert f"`{RAW_TABLE}`" in athena
    assert all(f"`{name}`" in athena for name in NAMED_QUERIES)


def test_the_daily_job_s_documented_schedule_sizing_and_metrics_are_the_codes() -> None:
    page = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = " ".join(page.split("### The daily job", 1)[1].split("\n### ", 1)[0].split())
    assert f"**every hour at minute {daily_job.SCHEDULE_MINUTE}, UTC**" in section
    assert f"first attempt is at 00:{daily_job.SCHEDULE_MINUTE} UTC" in section
    assert f"**{daily_job.MEMORY_MB} MB**" in section
    assert f"**{daily_job.TIMEOUT.to_minutes():.0f}-minute** timeout" in section
    assert "kept as long as theirs (`logRetentionDays`)" in section
    assert f"`{STACK_NAME}-<symbol>-daily-not-certified`" in section
    assert daily.CERTIFIED_BY.total_seconds() == 3 * 3600 and "by **03:00 UTC**" in section
    assert f"namespace `{STACK_NAME}/DailyJob` with the dimension `{daily.SYMBOL_DIMENSION}`" in section
    for metric in (daily.CERTIFIED, daily.HOLES_REMAINING, daily.RUNTIME, daily.OVERDUE):
        assert f"`{metric}`" in section
    assert "Python 3.12 on arm64" in section and daily_job.RUNTIME.name == "python3.12"
    data = (REPO_ROOT / "docs" / "data.md").read_text()
    assert f"from 00:{daily_job.SCHEDULE_MINUTE} UTC" in data and "by 01:00 UTC" in data
