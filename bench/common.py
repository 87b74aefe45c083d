"""What the benchmarks share: a stderr log and a measured child process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Progress on stderr, so stdout keeps only the figures."""
    print(message, file=sys.stderr, flush=True)


class ChildStopped(RuntimeError):
    """A child killed for running past its time or memory limit."""


def run_child(command: list[str], *, timeout: float | None = None,
              max_rss_mb: float | None = None) -> dict[str, Any]:
    """Run a command as a child: wall seconds, CPU seconds and peak RSS (os.wait4), output.

    With `timeout` or `max_rss_mb`, the child is killed (ChildStopped) once it has run
    that long or its resident memory, sampled every 0.2 s, passes that size.
    """
    began = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 cwd=REPO)
        guard = _Guard(child, began, timeout, max_rss_mb)
        # Exited, but not reaped yet: the guard can never signal a reused pid.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        guard.stop()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - began
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if guard.reason:
        raise ChildStopped(f"{' '.join(command[:4])} killed: {guard.reason}")
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed ({code}): {stderr}")
    return {"seconds": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "stdout": stdout, "stderr": stderr}


class _Guard:
    """Kills a child that runs too long or grows too large (nothing to do without limits)."""

    def __init__(self, child: subprocess.Popen[bytes], began: float, timeout: float | None,
                 max_rss_mb: float | None) -> None:
        self.child, self.began = child, began
        self.timeout, self.max_rss_mb = timeout, max_rss_mb
        self.reason = ""
        self.done = threading.Event()
        self.thread = None
        if timeout is not None or max_rss_mb is not None:
            self.thread = threading.Thread(target=self._watch, daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()

    def _watch(self) -> None:
        while not self.done.wait(0.2):
            elapsed = time.perf_counter() - self.began
            rss = _rss_mb(self.child.pid)
            if self.timeout is not None and elapsed > self.timeout:
                self.reason = f"still running after {self.timeout:g} s"
            elif self.max_rss_mb is not None and rss > self.max_rss_mb:
                self.reason = f"resident memory {rss:,.0f} MB passed {self.max_rss_mb:,.0f} MB"
            if self.reason:
                self.child.kill()
                return


def _rss_mb(pid: int) -> float:
    """Resident memory of a process now (0 once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
