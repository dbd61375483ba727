"""The systemd unit: valid for systemd, hardened to an exposure score of 2.0 or lower, wired to the collector."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import userdata
from collector.config import MAX_SYMBOLS, S3_CONNECT_TIMEOUT_SECONDS, S3_READ_TIMEOUT_SECONDS, SHUTDOWN_TIMEOUT
from tests.cdk_support import require_tool

MAX_EXPOSURE = 2.0
ROOT = Path(__file__).resolve().parent.parent


def _directives(unit: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.fixture
def unit_path(tmp_path: Path) -> Path:
    """The unit as rendered, except ExecStart: `verify` needs a binary that exists on this machine."""
    unit = userdata.render_unit()
    venv_python = f"{userdata.VENV_DIR}/bin/python"
    assert f"ExecStart={venv_python} -m collector" in unit
    path = tmp_path / userdata.UNIT_NAME
    path.write_text(unit.replace(venv_python, sys.executable))
    return path


def test_systemd_analyze_verify_is_silent(unit_path: Path) -> None:
    # verify exits 0 even for unknown keys and typos, so any output at all counts as a failure.
    result = subprocess.run([require_tool("systemd-analyze"), "verify", unit_path.name], cwd=unit_path.parent,
                            capture_output=True, text=True, check=False, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_analyze_security_scores_at_most_2(unit_path: Path) -> None:
    result = subprocess.run(
        [require_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", unit_path.name],
        cwd=unit_path.parent, capture_output=True, text=True, check=False, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_unit_runs_the_collector_as_an_unprivileged_restarting_service() -> None:
    directives = _directives(userdata.render_unit())
    assert directives["DynamicUser"] == ["yes"]
    assert directives["WorkingDirectory"] == [userdata.APP_DIR]
    assert directives["ExecStart"] == [f"{userdata.VENV_DIR}/bin/python -m collector"]
    assert directives["EnvironmentFile"] == [userdata.ENV_FILE]
    assert directives["Restart"] == ["always"]
    assert directives["RestartSec"] == ["5"]
    assert directives["StartLimitIntervalSec"] == ["0"]
    assert directives["StateDirectory"] == ["collector"]
    assert (directives["RuntimeDirectory"], directives["RuntimeDirectoryPreserve"]) == (["collector"], ["restart"])
    assert directives["KillSignal"] == ["SIGTERM"]
    assert directives["WantedBy"] == ["multi-user.target"]


def test_security_score_is_the_documented_one(unit_path: Path) -> None:
    documented = re.search(r"exposure score of \*\*(\d+\.\d+)\*\*", (ROOT / "docs" / "operations.md").read_text())
    assert documented is not None
    result = subprocess.run(
        [require_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", unit_path.name],
        cwd=unit_path.parent, capture_output=True, text=True, check=False, timeout=60,
    )
    assert f"Overall exposure level for {unit_path.name}: {documented[1]} " in result.stdout, result.stdout


def test_descriptor_limit_covers_the_largest_symbol_list_in_a_handover_of_every_symbol() -> None:
    (limit,) = _directives(userdata.render_unit())["LimitNOFILE"]
    assert int(limit) == userdata.FDS_PER_SYMBOL * MAX_SYMBOLS + userdata.FDS_BASE
    assert userdata.FDS_PER_SYMBOL >= 3, "two sockets and a spool file per symbol"


def test_stop_timeout_leaves_the_collector_time_to_ship_its_spool() -> None:
    (timeout,) = _directives(userdata.render_unit())["TimeoutStopSec"]
    assert int(timeout) >= math.ceil(SHUTDOWN_TIMEOUT) + S3_CONNECT_TIMEOUT_SECONDS + S3_READ_TIMEOUT_SECONDS
