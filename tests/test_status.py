"""pipeline.status: what `tally status` shows, and every disagreement between checkpoint,
stage and lake it reports (exit code 5)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import event_line, make_home

from pipeline.cli import main
from pipeline.compactor import run_compaction
from pipeline.config import Home
from pipeline.stage import staged_files
from pipeline.status import tail_status
from pipeline.tailer import Tailer


def tail(home: Home, lines: int = 10, name: str = "a.jsonl") -> None:
    with open(home.logs / name, "ab") as handle:
        handle.write(b"".join(event_line() for _ in range(lines)))
    with Tailer(home) as tailer:
        tailer.poll()


def status_json(home: Home) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(main, ["status", "--home", str(home.root), "--format", "json"])
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture
def compacted(tmp_path: Path) -> Home:
    home = make_home(tmp_path / "home")
    for _ in range(3):
        tail(home)
        run_compaction(home)
    tail(home)  # ten events still staged
    return home


def test_a_healthy_home_has_no_problems_and_exits_0(compacted: Home) -> None:
    code, shown = status_json(compacted)
    assert code == 0 and shown["problems"] == [] and shown["staged_waiting"] == 10
    assert shown["batch"] == 4 and len(str(shown["stream"])) == 16


def test_a_checkpoint_behind_the_lake_is_a_problem(compacted: Home, tmp_path: Path) -> None:
    backup = tmp_path / "checkpoint.json"
    shutil.copyfile(compacted.state / "checkpoint.json", backup)
    tail(compacted)
    run_compaction(compacted)
    shutil.copyfile(backup, compacted.state / "checkpoint.json")
    code, shown = status_json(compacted)
    assert code == 5
    [problem] = shown["problems"]  # type: ignore[misc]
    assert "behind the lake" in problem and "new stream" in problem


def test_a_damaged_checkpoint_is_a_problem_and_readers_go_on(compacted: Home) -> None:
    (compacted.state / "checkpoint.json").write_text('{"batch": 4, "fil')
    report = tail_status(compacted)
    assert report.staged_waiting == 10  # the batches of the damaged one count
    assert len(report.problems) == 1 and "is damaged" in report.problems[0]


def test_a_damaged_stage_file_is_a_problem(compacted: Home) -> None:
    [(_, path)] = staged_files(compacted.stage, "agent_token_usage", None)
    path.write_bytes(path.read_bytes()[:100])
    report = tail_status(compacted)
    assert len(report.problems) == 1
    assert str(path) in report.problems[0] and "tally compact" in report.problems[0]


def test_lost_lake_commits_are_a_problem(compacted: Home) -> None:
    log = compacted.lake / "agent_token_usage" / "_delta_log"
    newest = max(log.glob("*.json"))
    newest.unlink()
    report = tail_status(compacted)
    assert len(report.problems) == 1 and "commits were lost" in report.problems[0]


def test_leftovers_of_an_interrupted_rebuild_are_a_problem(compacted: Home) -> None:
    (compacted.root / ".rebuild-20260101T000000Z").mkdir()
    report = tail_status(compacted)
    assert len(report.problems) == 1 and "interrupted rebuild" in report.problems[0]


def test_names_that_are_not_utf8_are_shown_escaped(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    tail(home, 3, os.fsdecode(b"bad\xff.jsonl"))
    result = CliRunner().invoke(main, ["status", "--home", str(home.root)])
    assert result.exit_code == 0, result.output
    assert "bad\\xff.jsonl" in result.stdout
