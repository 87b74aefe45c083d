"""pipeline.recovery: a damaged stage file is set aside and its events staged again from
the logs, exactly, or reported lost when the logs no longer hold them."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl
import pytest
from conftest import event_line, make_home

from pipeline.checkpoint import load_checkpoint
from pipeline.config import Home
from pipeline.events import Validator
from pipeline.journal import JOURNAL_DIR
from pipeline.recovery import DAMAGED_DIR, restage
from pipeline.stage import staged_files
from pipeline.tailer import Tailer

USAGE = "agent_token_usage"


def tool_line(n: int) -> bytes:
    return orjson.dumps({"event_type": "tool_call", "ts": "2025-03-01T12:00:00Z", "agent": "a",
                         "event_id": f"tool-{n}", "tool": "grep"}) + b"\n"


@pytest.fixture
def staged(tmp_path: Path) -> Home:
    """A home with two logs read in three batches of usage and tool calls, not compacted."""
    home = make_home(tmp_path / "home", "[tailer]\nbatch_lines = 6\n")
    for name in ("a.jsonl", "b.jsonl"):
        lines = [event_line() if n % 3 else tool_line(n) for n in range(8)]
        lines.insert(4, event_line(agent=None))  # one reject in the quarantine
        (home.logs / name).write_bytes(b"".join(lines))
    with Tailer(home) as tailer:
        tailer.poll()
    return home


def stage_file(home: Home, event_type: str, index: int = 0) -> Path:
    return staged_files(home.stage, event_type, load_checkpoint(home.state).watermark)[index][1]


def damage(path: Path) -> bytes:
    body = path.read_bytes()
    path.write_bytes(body[: len(body) // 3])
    return body


def test_a_damaged_stage_file_is_staged_again_exactly(staged: Home) -> None:
    path = stage_file(staged, USAGE, 1)
    before = pl.read_ipc(path)
    damage(path)
    result = restage(staged, path, Validator())
    assert result.lost is None and result.events == before.height
    assert result.set_aside.parent == staged.quarantine / DAMAGED_DIR / USAGE
    assert result.set_aside.stat().st_size < len(before.write_ipc(None).getvalue())
    again = pl.read_ipc(path)
    assert again.sort("_source", "_offset").equals(before.sort("_source", "_offset"))


def test_only_the_damaged_type_is_staged_again(staged: Home) -> None:
    tools = stage_file(staged, "tool_call")
    tools_before = tools.read_bytes()
    path = stage_file(staged, USAGE)
    damage(path)
    restage(staged, path, Validator())
    assert tools.read_bytes() == tools_before
    assert set(pl.read_ipc(path)["event_type"]) == {USAGE}


def test_a_deleted_log_is_reported_lost_with_its_range(staged: Home) -> None:
    path = stage_file(staged, USAGE)
    sources = set(pl.read_ipc(path)["_source"])
    damage(path)
    for source in sources:
        (staged.logs / source).unlink()
    result = restage(staged, path, Validator())
    assert result.lost is not None and "no log holds it any more" in result.lost
    assert "bytes 0-" in result.lost and result.events == 0
    assert not path.exists() and result.set_aside.exists()  # nothing deleted


def test_a_log_rewritten_with_the_same_first_line_is_not_used(staged: Home) -> None:
    path = stage_file(staged, USAGE)
    damage(path)
    for log in staged.logs.iterdir():
        lines = log.read_bytes().splitlines(keepends=True)
        log.write_bytes(lines[0] + b"".join(event_line() for _ in lines[1:]))
    result = restage(staged, path, Validator())
    assert result.lost is not None and result.events == 0


def test_a_batch_missing_from_the_journal_is_reported(staged: Home) -> None:
    path = stage_file(staged, USAGE)
    damage(path)
    for segment in (staged.state / JOURNAL_DIR).iterdir():
        segment.unlink()
    result = restage(staged, path, Validator())
    assert result.lost is not None and "not in the journal" in result.lost


def test_a_source_s_stage_file_is_translated_again_from_its_state(tmp_path: Path) -> None:
    """A Codex rollout read in several batches: the damaged batch's lines are counted as
    deltas of the running total the batch began with (the journal keeps that state)."""
    from agentlogs import scenario

    from pipeline.imports import import_source
    from pipeline.sources import CODEX, Source

    scenario("codex", tmp_path / "user", ["multi_day"])
    home = make_home(tmp_path / "home", "[tailer]\nbatch_lines = 10\n")
    import_source(home, Source(CODEX, str(tmp_path / "user" / ".codex")))
    files = staged_files(home.stage, USAGE, load_checkpoint(home.state).watermark)
    assert len(files) >= 3
    path = files[-1][1]  # a later batch: its deltas need the total so far
    before = pl.read_ipc(path)
    damage(path)
    result = restage(home, path, Validator())
    assert result.lost is None and result.events == before.height > 0
    assert pl.read_ipc(path).sort("_offset").equals(before.sort("_offset"))
