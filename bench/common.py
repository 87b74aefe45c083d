"""What the benchmarks share: a stderr log and a measured child process."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
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


# A child's ru_maxrss starts from the RSS of the process it was forked from, so a child of
# the (large) benchmark process would report at least the benchmark's own peak. This small
# interpreter forks the command, waits for it and writes its figures to argv[1].
MEASURE = r"""
import json, os, sys, time
began = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - began
with open(sys.argv[1], "w") as out:
    json.dump({"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime,
               "rss_kb": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}, out)
"""


def precompile(package: str | Path) -> None:
    """Byte-compile a package, so that timed children do not compile it each run.

    With PYTHONDONTWRITEBYTECODE set a child never writes its .pyc, and every run would pay
    for compiling the source, as an installed package never does.
    """
    import compileall

    compileall.compile_dir(str(package), quiet=1)


def run_child(command: list[str], *, timeout: float | None = None,
              max_rss_mb: float | None = None) -> dict[str, Any]:
    """Run a command as a child: wall seconds, CPU seconds and peak RSS (os.wait4), output.

    The command is started by a small measuring process (see MEASURE), so its figures
    are its own. With `timeout` or `max_rss_mb` it is killed (ChildStopped) once it has
    run that long or its resident memory, sampled every 0.2 s, passes that size.
    """
    with tempfile.TemporaryDirectory() as scratch, \
            open(Path(scratch) / "out", "w+b") as out, open(Path(scratch) / "err", "w+b") as err:
        report = Path(scratch) / "figures.json"
        # A process group of its own, so that a kill reaches the command's children too.
        child = subprocess.Popen([sys.executable, "-S", "-c", MEASURE, str(report), *command],
                                 stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO,
                                 process_group=0)
        guard = _Guard(child, time.perf_counter(), timeout, max_rss_mb)
        try:
            # Exited, but not reaped yet: its group id cannot be reused while the guard runs.
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        except BaseException:
            guard.kill()
            raise
        finally:
            guard.stop()
        child.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
        figures = json.loads(report.read_text()) if report.is_file() else None
    if guard.reason:
        raise ChildStopped(f"{' '.join(command[:4])} killed: {guard.reason}")
    if figures is None or figures["code"] != 0:
        code = "not measured" if figures is None else figures["code"]
        raise RuntimeError(f"{' '.join(command[:4])} failed ({code}): {stderr}")
    return {"seconds": figures["seconds"], "cpu": figures["cpu"],
            "rss_mb": figures["rss_kb"] / 1024, "stdout": stdout, "stderr": stderr}


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

    def kill(self) -> None:
        """The measuring process, the command and whatever the command started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child.pid, signal.SIGKILL)

    def _watch(self) -> None:
        while not self.done.wait(0.2):
            elapsed = time.perf_counter() - self.began
            rss = max((_rss_mb(pid) for pid in _children(self.child.pid)), default=0.0)
            if self.timeout is not None and elapsed > self.timeout:
                self.reason = f"still running after {self.timeout:g} s"
            elif self.max_rss_mb is not None and rss > self.max_rss_mb:
                self.reason = f"resident memory {rss:,.0f} MB passed {self.max_rss_mb:,.0f} MB"
            if self.reason:
                self.kill()
                return


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _rss_mb(pid: int) -> float:
    """Resident memory of a process now (0 once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


Sizes = dict[str, tuple[Any, Any]]  # option -> (full run, --quick)


def sized_parser(prog: str, description: str | None, sizes: Sizes) -> argparse.ArgumentParser:
    """A bench's parser with --quick and one option per size, None until `settle_sizes`."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short run (smoke test)")
    for name, (full, quick) in sizes.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(full), default=None,
                            help=f"[default: {full:,}; --quick: {quick:,}]")
    return parser


def settle_sizes(args: argparse.Namespace, sizes: Sizes) -> argparse.Namespace:
    """Each size not given takes its full or --quick default."""
    for name, defaults in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[args.quick])
    return args
