"""bench.common: a child's own time and peak memory, the limits that stop it, and bytecode
compiled ahead of timed children."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bench.common import ChildStopped, precompile, run_child

TOUCH = "x = bytearray({mb} * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"


def test_peak_rss_is_the_childs_own_not_the_benchmarks() -> None:
    held = bytearray(300 * 2**20)
    held[::4096] = b"\1" * len(held[::4096])  # resident in this process, not just reserved
    small = run_child([sys.executable, "-c", "pass"])
    large = run_child([sys.executable, "-c", TOUCH.format(mb=150)])
    assert small["rss_mb"] < 100
    assert 150 < large["rss_mb"] < 250
    assert large["cpu"] > 0 and large["seconds"] > 0
    del held


def test_output_and_failure() -> None:
    assert run_child([sys.executable, "-c", "print('hello')"])["stdout"] == "hello\n"
    with pytest.raises(RuntimeError, match=r"failed \(4\): broken"):
        run_child([sys.executable, "-c",
                   "import sys; print('broken', file=sys.stderr); sys.exit(4)"])


def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    began = time.perf_counter()
    with pytest.raises(ChildStopped, match=r"still running after 0\.5 s"):
        run_child(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; sleep 60"], timeout=0.5)
    assert time.perf_counter() - began < 5
    background = int(pid_file.read_text())
    for _ in range(50):  # killed at once; init reaps it moments later
        state = Path(f"/proc/{background}/stat")
        if not state.exists() or state.read_text().split(") ")[1][0] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the command's child survived")


def test_memory_limit_kills_the_command() -> None:
    with pytest.raises(ChildStopped, match=r"resident memory .* passed 100 MB"):
        run_child([sys.executable, "-c", TOUCH.format(mb=250) + "import time; time.sleep(5)"],
                  max_rss_mb=100)


def test_precompile_writes_the_bytecode_of_each_module(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text("VALUE = 1\n")
    precompile(package)
    compiled = list((package / "__pycache__").glob("mod.*.pyc"))
    assert len(compiled) == 1
