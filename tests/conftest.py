"""Shared fixtures: a fresh tally home in tmp_path, valid event lines with unique ids, small
frames of staged events and their cost cells, and the tally command run with its stderr on a
terminal."""

from __future__ import annotations

import contextlib
import itertools
import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from pipeline.config import Home, init_home, load_home
from pipeline.counting import snapshot_increments
from pipeline.frames import FrameBuilder, stage_schema
from pipeline.pricing import shipped_pricing
from pipeline.query import ReportQuery, counted_cells
from tests.s3 import MotoServer

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


# ---------------------------------------------------------------- small frames of staged events

_frame_ids = itertools.count(1)


def events(event_type: str, *rows: dict[str, Any]) -> pl.LazyFrame:
    """A typed frame of events as the tailer stages them (defaults: agent claude, one ts)."""
    full = [{"event_type": event_type, "event_id": f"e{next(_frame_ids)}", "agent": "claude",
             "ts": "2025-08-29T12:00:00Z", **row} for row in rows]
    frame = FrameBuilder(event_type).build(full, ["test.jsonl"] * len(full),
                                           list(range(len(full))))
    return frame.lazy()


def none(event_type: str) -> pl.LazyFrame:
    """An empty staged frame of `event_type`."""
    return pl.LazyFrame(schema=stage_schema(event_type))


def usage(**fields: Any) -> dict[str, Any]:
    """An agent_token_usage row for `events`: 100 in, 10 out on claude-sonnet-4-5."""
    return {"model": "claude-sonnet-4-5", "input_tokens": 100, "output_tokens": 10, **fields}


def snapshot(ts: str, task: str = "T-1", **tokens: Any) -> dict[str, Any]:
    """An in_progress task_progress row for `events`; `tokens` become its tokens_used."""
    return {"ts": ts, "task": task, "status": "in_progress", "tokens_used": tokens or None}


def compiled(hash_: str, ts: str, role: str | None = "dev", session: str = "s1",
             **fields: Any) -> dict[str, Any]:
    """A context_compiled row for `events`: a 1000-byte prefix and 200 volatile bytes."""
    return {"prefix_hash": hash_, "ts": ts, "role": role, "session_id": session,
            "prefix_bytes": 1000, "volatile_bytes": 200, **fields}


def counted(usage_rows: pl.LazyFrame, progress: pl.LazyFrame, keys: list[str],
            query: ReportQuery | None = None) -> pl.LazyFrame:
    """The priced cost cells keyed by `keys` of usage rows and snapshots, shipped prices."""
    increments = snapshot_increments(progress).collect()
    return counted_cells(usage_rows, increments, query or ReportQuery(), keys, shipped_pricing())


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


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One S3 emulator (moto, in a child process on 127.0.0.1) for the whole session."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> str:
    """A fresh, empty bucket on the session's emulator: its URI, s3://<unique name>."""
    return moto_server.bucket()


@pytest.fixture
def s3_lake(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A lake URI in a fresh bucket, this process's AWS_* settings pointing at the
    emulator (as a host's environment would), for homes loaded here."""
    for key, value in moto_server.env().items():
        monkeypatch.setenv(key, value)
    return f"{moto_server.bucket()}/tally"


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


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for a disk-full test; the test is skipped where
    mounting needs privileges this run lacks."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of `directory` up to `leave` bytes free; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError:
                break
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


# Root reads any file whatever its mode: without these capabilities, it cannot.
WITHOUT_READ_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                         "--inh-caps=-dac_override,-dac_read_search", "--"]


def run_tally(*args: str, env: dict[str, str] | None = None,
              obey_modes: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the tally console script as a real process; its output as text. `obey_modes`:
    file modes bind it even when the tests run as root."""
    prefix: list[str] = []
    if obey_modes and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes cannot be tested")
        prefix = WITHOUT_READ_OVERRIDE
    return subprocess.run([*prefix, tally_executable(), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def assert_one_line_error(run: subprocess.CompletedProcess[str], code: int,
                          *mentions: str) -> str:
    """The run exited `code` with one `error:` line (and at most a hint) naming `mentions`,
    and no traceback; the error line."""
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "panicked" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith(("error:", "  hint:"))]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    assert len(lines) <= 2, run.stderr
    for mention in mentions:
        assert mention in errors[0], (mention, errors[0])
    return errors[0]
