"""The user-data script: deterministic embedding of the collector, size limit, shellcheck, what it writes."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

import userdata
from tests.cdk_support import require_tool
from userdata.archive import COLLECTOR_DIR, collector_archive, collector_files

# Worst case once CloudFormation resolves the tokens: the longest legal bucket name, a long region name.
WORST_CASE = {"bucket": "b" * 63, "region": "ap-southeast-5x", "symbols": "BTCUSDT",
              "ws_url": "wss://stream.binance.com:9443"}
# EC2 refuses more than 16,384 bytes; failing here first leaves room for the next change to the collector.
SIZE_BUDGET = 15_000


def _render(**overrides: str) -> str:
    return userdata.render_user_data(**{**WORST_CASE, **overrides})


def _embedded_archive(script: str) -> bytes:
    match = re.search(r"<<'ARCHIVE'\n(.*?)\nARCHIVE\n", script, re.DOTALL)
    assert match is not None
    return base64.b64decode(match[1])


def test_archive_is_deterministic_and_independent_of_file_metadata(tmp_path: Path) -> None:
    copy = tmp_path / "collector"
    copy.mkdir()
    for path in collector_files():
        target = copy / path.name
        target.write_bytes(path.read_bytes())
        target.chmod(0o600)  # a different umask or owner on another checkout must not matter
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (copy / "notes.md").write_text("not shipped")
    assert collector_archive(copy) == collector_archive(COLLECTOR_DIR) == collector_archive(COLLECTOR_DIR)


def test_archive_holds_exactly_the_modules_and_requirements() -> None:
    with tarfile.open(fileobj=io.BytesIO(collector_archive()), mode="r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    expected = sorted([*(p.name for p in COLLECTOR_DIR.glob("*.py")), "requirements.txt"])
    assert names == ["collector", *(f"collector/{name}" for name in expected)]
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}
    assert gzip.decompress(collector_archive())  # and the gzip header carries no timestamp:
    assert collector_archive()[4:8] == b"\0\0\0\0"


def test_script_embeds_the_current_collector_byte_for_byte() -> None:
    assert _embedded_archive(_render()) == collector_archive()


def test_same_inputs_render_byte_identical_scripts() -> None:
    assert _render().encode() == _render().encode()


def test_user_data_stays_well_under_the_ec2_limit() -> None:
    size = len(_render().encode())
    assert size < SIZE_BUDGET < userdata.USER_DATA_LIMIT, (
        f"worst-case user-data is {size} bytes; budget {SIZE_BUDGET}, EC2 limit {userdata.USER_DATA_LIMIT}"
    )


def test_rendering_refuses_user_data_over_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "collector"
    big.mkdir()
    # Hashes do not compress, so this archive alone exceeds the limit.
    noise = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(700))
    (big / "blob.py").write_text(base64.b64encode(noise).decode())
    with pytest.raises(ValueError, match="16384-byte limit"):
        userdata.render_user_data(**WORST_CASE, collector_dir=big)


def test_shellcheck_accepts_the_rendered_script(tmp_path: Path) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text(_render(bucket="example-bucket", region="ap-northeast-1"))
    result = subprocess.run([require_tool("shellcheck"), "--shell=bash", "--severity=style", str(script)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_script_is_strict_and_wires_everything_together() -> None:
    script = _render(bucket="example-bucket", region="ap-northeast-1", symbols="BTCUSDT,ETHUSDT")
    assert script.startswith("#!/bin/bash\n")
    assert "\nset -euo pipefail\n" in script
    assert f"dnf install -y {userdata.PYTHON}" in script
    assert f"{userdata.PYTHON} -m venv {userdata.VENV_DIR}" in script
    assert f"-r {userdata.APP_DIR}/collector/requirements.txt" in script
    env_file = re.search(rf"cat > {userdata.ENV_FILE} <<'ENV'\n(.*?)\nENV\n", script, re.DOTALL)
    assert env_file is not None
    assert env_file[1].splitlines() == [
        "COLLECTOR_BUCKET=example-bucket",
        "COLLECTOR_SYMBOLS=BTCUSDT,ETHUSDT",
        "COLLECTOR_WS_URL=wss://stream.binance.com:9443",
        "AWS_REGION=ap-northeast-1",
        "AWS_DEFAULT_REGION=ap-northeast-1",
    ]
    assert f'echo "COLLECTOR_INSTANCE_ID=${{instance_id}}" >> {userdata.ENV_FILE}' in script
    assert "X-aws-ec2-metadata-token-ttl-seconds" in script  # IMDSv2: token first
    assert userdata.render_unit().rstrip("\n") in script
    assert f"systemctl enable --now --no-block {userdata.UNIT_NAME}" in script
    assert not re.search(r"@[A-Z_]+@", script)


def _stub(path: Path, log: Path, output: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\n{output}')
    path.chmod(0o755)


def test_script_runs_to_the_end_with_stubbed_system_commands(tmp_path: Path) -> None:
    """Executes the real script with dnf/curl/systemctl/python stubbed and its target paths under a temp dir."""
    root = tmp_path / "root"
    script = _render(bucket="example-bucket", region="ap-northeast-1")
    for path in (userdata.APP_DIR, userdata.VENV_DIR, userdata.ENV_DIR, "/etc/systemd/system/"):
        script = script.replace(path, f"{root}{path}")
    script = script.replace("sleep ", "true ")
    log = tmp_path / "calls.log"
    for command in ("dnf", "systemctl", userdata.PYTHON):
        _stub(tmp_path / "bin" / command, log)
    _stub(tmp_path / "bin" / "curl", log, output="echo i-0123456789abcdef0\n")
    for command in ("pip", "python"):
        _stub(root / userdata.VENV_DIR.lstrip("/") / "bin" / command, log)
    (root / "etc/systemd/system").mkdir(parents=True)

    result = subprocess.run(["bash", "-c", script], env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"},
                            capture_output=True, text=True, check=False, timeout=60)

    assert result.returncode == 0, result.stderr
    env = (root / userdata.ENV_FILE.lstrip("/")).read_text()
    assert env.endswith("AWS_DEFAULT_REGION=ap-northeast-1\nCOLLECTOR_INSTANCE_ID=i-0123456789abcdef0\n")
    assert (root / "etc/systemd/system" / userdata.UNIT_NAME).read_text() == userdata.render_unit()
    for path in collector_files():
        assert (root / userdata.APP_DIR.lstrip("/") / "collector" / path.name).read_bytes() == path.read_bytes()
    calls = log.read_text().splitlines()
    assert calls[-1] == f"systemctl enable --now --no-block {userdata.UNIT_NAME}"
    assert any(call.startswith("pip install") for call in calls)
