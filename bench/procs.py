"""Child processes of the benchmark: started here, watched line by line, stopped by their own PID only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import Sample, status_kib

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Exit:
    status: int
    cpu: float  # user + system seconds over the whole life of the process, all threads
    # VmHWM last read before the exit. Not wait4's ru_maxrss: Linux carries that across exec, so it
    # would report the forked copy of this (much larger) benchmark process.
    peak_rss_kib: int


class Child:
    """`python -m <module>` with stdout and stderr merged into one line stream kept in memory."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None,
                 on_line: Callable[[Child, str], None] | None = None) -> None:
        self.name = name
        self.on_line = on_line
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
        self.pid = self.proc.pid
        self.exit: Exit | None = None
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self.on_line is not None:
                self.on_line(self, line)
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 30.0) -> list[str]:
        """The first `count` lines containing `text`; raises if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for _, line in self.lines if text in line]
                if len(found) >= count:
                    return found[:count]
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(f"{self.name} exited before printing {text!r}:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: no {text!r} (x{count}) after {timeout:g} s:\n{self.tail()}")
                self._changed.wait(0.1)

    def tail(self, n: int = 30) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def sample(self) -> Sample:
        return Sample.take(self.pid, time.monotonic())

    def stop(self, timeout: float = 90.0) -> Exit:
        """SIGTERM, then reap with wait4: the kernel's own account of CPU, shutdown included."""
        if self.exit is not None:
            return self.exit
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        peak = 0
        while True:
            with contextlib.suppress(OSError, KeyError):
                peak = max(peak, status_kib(self.pid, "VmHWM"))  # gone once it is a zombie
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(self.pid, 0)
                break
            time.sleep(0.02)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._reader.join(timeout=5)
        self.exit = Exit(self.proc.returncode, usage.ru_utime + usage.ru_stime, peak)
        return self.exit

    def cleanup(self) -> None:
        """For the exit path of the benchmark: this child, and only it, is gone afterwards."""
        if self.exit is None:
            self.stop(timeout=10.0)


def python_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env
