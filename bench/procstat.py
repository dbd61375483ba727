"""What the kernel says about a process (CPU seconds, peak RSS) and about the machine; standard library only.

Everything is read from /proc from outside the measured process, so the bare client and the collector are
measured the same way and neither pays for its own measurement.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of `pid` so far (utime and stime of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses; the fields after the last ')' are fixed.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status, e.g. VmHWM (peak resident set) or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a process: when (monotonic seconds) and how much CPU it had used."""

    at: float
    cpu: float

    @staticmethod
    def take(pid: int, at: float) -> Sample:
        return Sample(at, cpu_seconds(pid))


def cpu_share(first: Sample, last: Sample) -> float:
    """Fraction of one core used between two samples."""
    return (last.cpu - first.cpu) / (last.at - first.at)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "websockets": websockets.__version__,
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
