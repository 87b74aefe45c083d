"""Shared fixtures: a fresh tally home in tmp_path, valid event lines with unique ids, and
the tally command run with its stderr on a terminal."""

from __future__ import annotations

import contextlib
import itertools
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.config import Home, init_home, load_home

_ids = itertools.count(1)
TS = "2025-03-01T12:00:00Z"
SCALAR_CHARS = 4000  # under the schemas' 4096-character limit of a string in metric `data`


def event(**overrides: Any) -> dict[str, Any]:
    """A valid agent_token_usage event with a unique event_id; `overrides` replace fields
    (an override of None removes the field)."""
    body: dict[str, Any] = {
        "event_type": "agent_token_usage",
        "ts": TS,
        "agent": "claude",
        "input_tokens": 100,
        "output_tokens": 20,
    }
    body.update(overrides)
    body.setdefault("event_id", f"evt-{next(_ids):08d}")  # last: lines differ at their end too
    return {k: v for k, v in body.items() if v is not None}


def sized_event(length: int) -> dict[str, Any]:
    """A valid metric event whose compact JSON is exactly `length` bytes (at least ~110)."""
    data = {"k0": ""}
    body = event(event_type="metric", name="pad", input_tokens=None, output_tokens=None,
                 data=data)
    while (short := length - len(orjson.dumps(body))) != 0:
        last = list(data)[-1]
        if short < 0:  # a new key overshot; k0 is full by then
            data["k0"] = data["k0"][:short]
        elif len(data[last]) + short <= SCALAR_CHARS:
            data[last] += "x" * short
        else:
            data[last] += "x" * (SCALAR_CHARS - len(data[last]))
            data[f"k{len(data)}"] = ""
    return body


def event_line(**overrides: Any) -> bytes:
    """One valid agent_token_usage line, newline included, with a unique event_id."""
    return orjson.dumps(event(**overrides)) + b"\n"


def make_home(root: Path, config: str = "") -> Home:
    """init_home at `root`, optionally replacing config.toml with `config`, then load it."""
    init_home(root)
    if config:
        (root / "config.toml").write_text(config, encoding="utf-8")
    return load_home(root)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """A freshly initialised home with the default configuration."""
    return make_home(tmp_path / "home")


def tally_executable() -> str:
    """The installed tally console script (the test is skipped without one)."""
    candidate = Path(sys.executable).parent / "tally"
    found = str(candidate) if candidate.exists() else shutil.which("tally")
    if found is None:
        pytest.skip("the tally console script is not installed")
    return found


def stderr_on_a_terminal(*args: str) -> tuple[str, str]:
    """Run tally with stderr on a pseudo-terminal; (stdout, what the terminal showed)."""
    terminal, attached = pty.openpty()
    process = subprocess.Popen([tally_executable(), *args], stdout=subprocess.PIPE,
                               stderr=attached)
    os.close(attached)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once tally has exited and closed its end
        while chunk := os.read(terminal, 4096):
            shown += chunk
    os.close(terminal)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0, shown
    return stdout.decode(), shown.decode(errors="replace")


def children(pid: int) -> set[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status
