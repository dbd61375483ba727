"""The user-data script and the collector archive: determinism, the sha256 pin, size limit, shellcheck, and what
the script does when run (with the system commands stubbed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

import userdata
from tests.cdk_support import REPO_ROOT, require_tool
from userdata.archive import COLLECTOR_DIR, collector_archive, collector_files
from userdata.lock import COLLECTOR, DAILY_JOB, TARGETS, Target, pins

# Worst case once CloudFormation resolves the tokens: the longest legal bucket and stack names and logical id.
WORST_CASE = {"bucket": "b" * 63, "region": "ap-southeast-5x", "stack": "s" * 128, "resource": "l" * 255,
              "symbols": "BTCUSDT", "ws_url": "wss://stream.binance.com:9443", "log_group": "g" * 512,
              "namespace": "BinanceTradeCollector"}
# EC2 refuses more than 16,384 bytes; failing here first leaves room for the next change to the collector.
SIZE_BUDGET = 15_000


def _render(archive: bytes | None = None, **overrides: str) -> str:
    return userdata.render_user_data(archive=collector_archive() if archive is None else archive,
                                     **{**WORST_CASE, **overrides})


def _pinned_sha256(script: str) -> str:
    (match,) = re.findall(rf"^sha256sum --check --strict <<<'([0-9a-f]{{64}})  {userdata.ARCHIVE_PATH}'$", script,
                          re.MULTILINE)
    return match


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
    expected = sorted([*(p.name for p in COLLECTOR_DIR.glob("*.py")), "requirements.lock", "requirements.txt"])
    assert names == ["collector", *(f"collector/{name}" for name in expected)]
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}
    assert gzip.decompress(collector_archive())  # and the gzip header carries no timestamp:
    assert collector_archive()[4:8] == b"\0\0\0\0"


def test_script_pins_the_sha256_of_the_current_collector_archive() -> None:
    assert _pinned_sha256(_render()) == hashlib.sha256(collector_archive()).hexdigest()


def test_a_code_change_changes_the_script(tmp_path: Path) -> None:
    copy = tmp_path / "collector"
    copy.mkdir()
    for path in collector_files():
        (copy / path.name).write_bytes(path.read_bytes())
    assert _render(collector_archive(copy)) == _render()
    with (copy / "config.py").open("a") as config:
        config.write("# a change\n")
    assert _render(collector_archive(copy)) != _render()


def test_same_inputs_render_byte_identical_scripts() -> None:
    assert _render().encode() == _render().encode()


def test_user_data_stays_well_under_the_ec2_limit() -> None:
    size = len(_render().encode())
    assert size < SIZE_BUDGET < userdata.USER_DATA_LIMIT, (
        f"worst-case user-data is {size} bytes; budget {SIZE_BUDGET}, EC2 limit {userdata.USER_DATA_LIMIT}"
    )


def test_rendering_refuses_user_data_over_the_limit() -> None:
    with pytest.raises(ValueError, match="16384-byte limit"):
        _render(symbols=",".join(["BTCUSDT"] * 2000))


def test_shellcheck_accepts_the_rendered_script(tmp_path: Path) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text(_render(bucket="example-bucket", region="ap-northeast-1"))
    result = subprocess.run([require_tool("shellcheck"), "--shell=bash", "--severity=style", str(script)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_script_is_strict_and_wires_everything_together() -> None:
    script = _render(bucket="example-bucket", region="ap-northeast-1", stack="Stack", resource="Collector0",
                     symbols="BTCUSDT,ETHUSDT", log_group="/tradecollector/Stack", namespace="Stack")
    assert script.startswith(f"{userdata.SHEBANG}\n")
    assert "\nset -euo pipefail\n" in script
    assert f"dnf install -y {userdata.PYTHON} aws-cfn-bootstrap" in script
    cfn_target = "--stack 'Stack' --resource 'Collector0' --region 'ap-northeast-1'"
    assert f"/opt/aws/bin/cfn-init -v {cfn_target} --configsets default\n" in script
    assert f"/opt/aws/bin/cfn-signal --exit-code \"$1\" {cfn_target}\n" in script
    # cfn-init writes the archive, the pinned sha256 is checked, and only then is it unpacked.
    assert script.index("cfn-init -v") < script.index("sha256sum --check") < script.index(
        f"tar -xzf {userdata.ARCHIVE_PATH} -C {userdata.APP_DIR}")
    assert f"{userdata.PYTHON} -m venv {userdata.VENV_DIR}" in script
    assert f"--require-hashes -r {userdata.APP_DIR}/collector/requirements.lock" in script
    env_file = re.search(rf"cat > {userdata.ENV_FILE} <<'ENV'\n(.*?)\nENV\n", script, re.DOTALL)
    assert env_file is not None
    assert env_file[1].splitlines() == [
        "COLLECTOR_BUCKET=example-bucket",
        "COLLECTOR_SYMBOLS=BTCUSDT,ETHUSDT",
        "COLLECTOR_WS_URL=wss://stream.binance.com:9443",
        "AWS_REGION=ap-northeast-1",
        "AWS_DEFAULT_REGION=ap-northeast-1",
        "COLLECTOR_LOG_GROUP=/tradecollector/Stack",
        "COLLECTOR_METRICS_NAMESPACE=Stack",
    ]
    assert f'echo "COLLECTOR_INSTANCE_ID=${{instance_id}}" >> {userdata.ENV_FILE}' in script
    assert "X-aws-ec2-metadata-token-ttl-seconds" in script  # IMDSv2: token first
    assert userdata.render_unit().rstrip("\n") in script
    assert f"systemctl enable --now --no-block {userdata.UNIT_NAME}" in script
    assert script.endswith("\nretry signal 0\n")
    assert not re.search(r"@[A-Z_]+@", script)


def _stub(path: Path, log: Path, output: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\n{output}')
    path.chmod(0o755)


def _rooted(text: str, tmp_path: Path) -> str:
    """The script's absolute paths moved under tmp_path: the system's into root/, cfn-init & co. into bin/."""
    for path in (userdata.APP_DIR, userdata.VENV_DIR, userdata.ENV_DIR, userdata.ARCHIVE_PATH, "/etc/systemd/system/",
                 "/var/log/"):
        text = text.replace(path, f"{tmp_path / 'root'}{path}")
    return text.replace("/opt/aws/bin/", f"{tmp_path / 'bin'}/")


def _run_stubbed(
    tmp_path: Path, delivered: bytes, restarts: int = 0
) -> tuple[subprocess.CompletedProcess[str], Path, list[str]]:
    """Runs the real script with dnf/curl/systemctl/python/cfn-* stubbed and its target paths under a temp dir.

    The cfn-init stub writes `delivered` where the real one writes the archive from the init metadata;
    `systemctl show` reports `restarts` restarts of the unit.
    """
    root = tmp_path / "root"
    bin_dir = tmp_path / "bin"

    def rooted(text: str) -> str:
        return _rooted(text, tmp_path)

    script = rooted(_render(bucket="example-bucket", region="ap-northeast-1", stack="Stack", resource="Collector0"))
    script = script.replace("sleep ", "true ")
    log = tmp_path / "calls.log"
    for command in ("dnf", userdata.PYTHON, "cfn-signal"):
        _stub(bin_dir / command, log)
    _stub(bin_dir / "systemctl", log, output=f"echo {restarts}\n")  # `systemctl show --property=NRestarts --value`
    _stub(bin_dir / "curl", log, output="echo i-0123456789abcdef0\n")
    # The boot log the script ships: the aws stub keeps the events file it is given.
    _stub(bin_dir / "aws", log, output=f'for a in "$@"; do case "$a" in file://*) cp "${{a#file://}}" '
          f'{tmp_path / "boot-events.json"};; esac; done\n')
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/cfn-init.log").write_text("cfn-init says hello\n")
    (tmp_path / "delivered.tar.gz").write_bytes(delivered)
    _stub(bin_dir / "cfn-init", log, output=f"cp {tmp_path / 'delivered.tar.gz'} {rooted(userdata.ARCHIVE_PATH)}\n")
    for command in ("pip", "python"):
        _stub(root / userdata.VENV_DIR.lstrip("/") / "bin" / command, log)
    (root / "etc/systemd/system").mkdir(parents=True)
    Path(rooted(userdata.ARCHIVE_PATH)).parent.mkdir(parents=True, exist_ok=True)

    result = subprocess.run(["bash", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                            capture_output=True, text=True, check=False, timeout=60)
    return result, root, log.read_text().splitlines()


def test_script_runs_to_the_end_with_stubbed_system_commands(tmp_path: Path) -> None:
    result, root, calls = _run_stubbed(tmp_path, collector_archive())

    assert result.returncode == 0, result.stderr
    env = (root / userdata.ENV_FILE.lstrip("/")).read_text()
    assert env.endswith(
        "COLLECTOR_METRICS_NAMESPACE=BinanceTradeCollector\nCOLLECTOR_INSTANCE_ID=i-0123456789abcdef0\n")
    assert (root / "etc/systemd/system" / userdata.UNIT_NAME).read_text() == _rooted(userdata.render_unit(), tmp_path)
    for path in collector_files():
        assert (root / userdata.APP_DIR.lstrip("/") / "collector" / path.name).read_bytes() == path.read_bytes()
    cfn_target = "--stack Stack --resource Collector0 --region ap-northeast-1"
    assert f"cfn-init -v {cfn_target} --configsets default" in calls
    assert any(call.startswith("pip install") for call in calls)
    assert calls.index(f"systemctl enable --now --no-block {userdata.UNIT_NAME}") < len(calls) - 1
    assert calls[-1] == f"cfn-signal --exit-code 0 {cfn_target}"  # success only at the very end
    _assert_boot_log_shipped(tmp_path, calls)


def _assert_boot_log_shipped(tmp_path: Path, calls: list[str]) -> None:
    """Right before the signal: into the instance's stream of the stack's log group."""
    target = (f"--region ap-northeast-1 --log-group-name {'g' * 512} --log-stream-name i-0123456789abcdef0 "
              "--cli-connect-timeout 5 --cli-read-timeout 10")
    assert calls[-3:-1] == [f"aws logs create-log-stream {target}",
                            f"aws logs put-log-events {target} --log-events {calls[-2].rsplit(' ', 1)[1]}"]
    events = json.loads((tmp_path / "boot-events.json").read_text())
    assert f"{tmp_path / 'root'}/var/log/cfn-init.log: cfn-init says hello" in [e["message"] for e in events]


def test_script_refuses_an_archive_that_does_not_match_its_sha256_and_signals_failure(tmp_path: Path) -> None:
    tampered = gzip.compress(b"not the collector", mtime=0)
    result, root, calls = _run_stubbed(tmp_path, tampered)

    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
    assert not (root / userdata.APP_DIR.lstrip("/") / "collector").exists()
    assert calls[-1].startswith("cfn-signal --exit-code 1 ")
    assert not any(call.startswith("systemctl") for call in calls)
    _assert_boot_log_shipped(tmp_path, calls)


def test_script_signals_failure_when_the_unit_keeps_restarting(tmp_path: Path) -> None:
    result, _, calls = _run_stubbed(tmp_path, collector_archive(), restarts=2)

    assert result.returncode != 0
    assert f"{userdata.UNIT_NAME} is not running steadily (restarts: 2)" in result.stderr
    assert calls[-1].startswith("cfn-signal --exit-code 1 ")
    assert not any(call.startswith("cfn-signal --exit-code 0") for call in calls)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.lock.name)
def test_the_hash_lock_pins_exactly_the_runtime_requirements(target: Target) -> None:
    """The instances install requirements.lock, the daily job's layer lambda-requirements.lock; neither may drift
    from its requirements file (`make lock`)."""
    lock_text = target.lock.read_text()
    assert pins(lock_text) == pins(target.requirements.read_text())
    hashed = re.findall(r"^([a-z0-9-]+)==\S+ \\\n(?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+", lock_text, re.M)
    assert sorted(hashed) == sorted(pins(lock_text)), "every pin carries at least one sha256"


def test_the_daily_job_runs_the_versions_the_tests_run() -> None:
    """The layer's pins are the developer venv's (requirements-dev.txt and the collector's), so what runs on
    Lambda is what `make test` tested."""
    dev = pins((REPO_ROOT / "requirements-dev.txt").read_text()) | pins(COLLECTOR.requirements.read_text())
    job = pins(DAILY_JOB.requirements.read_text())
    assert {name: dev.get(name) for name in job} == job
