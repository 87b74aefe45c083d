"""What the benchmarks share: a stderr log and a measured child process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Progress on stderr, so stdout keeps only the figures."""
    print(message, file=sys.stderr, flush=True)


def run_child(command: list[str]) -> dict[str, Any]:
    """Run a command as a child: wall seconds, CPU seconds and peak RSS (os.wait4), output."""
    began = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - began
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed ({code}): {stderr}")
    return {"seconds": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "stdout": stdout, "stderr": stderr}
