"""Helpers shared by the infrastructure tests (synth, user-data, unit file)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def cdk_context(**overrides: Any) -> dict[str, Any]:
    """cdk.json's context (feature flags included, as the CLI applies them) plus overrides."""
    context = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]
    return {**context, **overrides}


def require_tool(name: str) -> str:
    """Path of a command-line tool: the venv's own first, then PATH.

    Missing tools skip the test on a developer's machine (e.g. no systemd on macOS) but fail it in CI.
    """
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.is_file() else shutil.which(name)
    if found is None:
        message = f"{name} is not installed; this check runs in CI (CI=true)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found
