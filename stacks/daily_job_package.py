"""The daily job's two assets, built without Docker from a clone and the venv `make` installs: `python -m
stacks.daily_job_package` (`make daily-job-package`), or on demand at synth.

- The layer: the wheels of `audit/lambda-requirements.lock` for CPython 3.12 on Linux aarch64, installed by pip
  with `--require-hashes --only-binary=:all:` for that platform (whatever machine builds it), as a zip whose
  bytes depend only on the lock and the wheels (entries sorted, timestamps and permissions fixed, no console
  scripts, no bytecode). It is cached under `build/` by the lock's hash: pip runs once per lock, not per synth.
- The code: `audit/` and `collector/` as they are in the clone, copied afresh at every synth (a few hundred KB).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from userdata.lock import DAILY_JOB

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO_ROOT / "build" / "daily-job"
PACKAGES = ("audit", "collector")  # what `audit.daily` imports from the clone
CODE_SUFFIXES = (".py", ".json")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say
_LAYER_ROOT = "python"  # Lambda puts /opt/python on sys.path


def layer_zip() -> Path:
    """The layer's zip for the current lock, built if this clone has not built it yet."""
    lock = DAILY_JOB.lock
    path = BUILD_DIR / f"layer-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}.zip"
    if path.exists():
        return path
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD_DIR) as tmp:
        site = Path(tmp) / _LAYER_ROOT
        (architecture,) = DAILY_JOB.architectures
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--no-compile", "--require-hashes", *DAILY_JOB.pip_platform_args(architecture),
             "--target", str(site), "-r", str(lock)],
            check=True,
        )
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts: shebangs naming this machine's python
        partial = Path(tmp) / path.name
        deterministic_zip(Path(tmp), [site], partial)
        partial.replace(path)
    for stale in BUILD_DIR.glob("layer-*.zip"):
        if stale != path:
            stale.unlink()
    return path


def deterministic_zip(root: Path, folders: list[Path], into: Path) -> None:
    """Every file under `folders`, named relative to `root`, in sorted order with fixed metadata."""
    files = sorted(p for folder in folders for p in folder.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    with zipfile.ZipFile(into, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for file in files:
            info = zipfile.ZipInfo(file.relative_to(root).as_posix(), date_time=_ZIP_TIME)
            info.external_attr = (0o755 if os.access(file, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())


def code_dir() -> Path:
    """`audit/` and `collector/` (sources and JSON schemas only) in a folder of their own, for the function."""
    target = BUILD_DIR / "code"
    shutil.rmtree(target, ignore_errors=True)
    for package in PACKAGES:
        for source in sorted((REPO_ROOT / package).iterdir()):
            if source.is_file() and source.suffix in CODE_SUFFIXES:
                (target / package).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target / package / source.name)
    return target


def main() -> None:
    path = layer_zip()
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB), {code_dir()}")


if __name__ == "__main__":
    main()
