"""The docs state limits and defaults the code defines: each one is read from the page and checked here."""

from __future__ import annotations

import re

from audit.corroborate import DEFAULT_MODE, DISAGREEMENTS_LISTED, Mode
from audit.entries import MANIFEST_MAX_BYTES, MAX_OBJECT_BYTES
from collector import config
from tests.cdk_support import REPO_ROOT

DOCS = REPO_ROOT / "docs"


def _text(page: str) -> str:
    return " ".join((DOCS / page).read_text().split())


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


def test_the_insecure_feed_setting_is_documented_under_its_one_name() -> None:
    row = next(line for line in (DOCS / "operations.md").read_text().splitlines()
               if line.startswith(f"| `{config.ALLOW_INSECURE_WS_ENV}` |"))
    assert "| `--allow-insecure-ws` | `0` |" in row
