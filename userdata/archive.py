"""The collector package as a reproducible tar.gz, so the same code always yields the same template and user-data."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTOR_DIR = REPO_ROOT / "collector"
REQUIREMENT_FILES = ("requirements.txt", "requirements.lock")


def collector_files(collector_dir: Path = COLLECTOR_DIR) -> list[Path]:
    """What the instances need: the package's modules and its pinned runtime requirements (versions, and the
    hash lock the instances install from), nothing else."""
    files = list(collector_dir.glob("*.py"))
    files += [path for name in REQUIREMENT_FILES if (path := collector_dir / name).is_file()]
    return sorted(files, key=lambda path: path.name)


def _file_info(name: str, size: int, mode: int) -> tarfile.TarInfo:
    # Only name, size and mode survive: the checkout's owner, times and umask must not change the bytes.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def collector_archive(collector_dir: Path = COLLECTOR_DIR) -> bytes:
    """tar.gz holding `collector/<file>` entries, byte-identical for identical file contents."""
    files = collector_files(collector_dir)
    if not files:
        raise FileNotFoundError(f"no collector sources in {collector_dir}")
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        directory = _file_info("collector", 0, 0o755)
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for path in files:
            data = path.read_bytes()
            tar.addfile(_file_info(f"collector/{path.name}", len(data), 0o644), io.BytesIO(data))
    # gzip.compress would stamp the current time into the header; mtime=0 keeps it stable.
    return gzip.compress(tar_bytes.getvalue(), compresslevel=9, mtime=0)
