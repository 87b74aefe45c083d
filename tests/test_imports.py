"""pipeline.imports and `tally import` / `tally sources`, over real transcript files: a
second import reads only what is new, events outlive their transcript, cut lines go to the
quarantine, a following tailer picks up appends within 2 s, and idle transcripts are
closed and reopened."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from agentlogs import ClaudeSession, claude_text, claude_usage, scenario
from click.testing import CliRunner
from conftest import assert_one_line_error, make_home, run_tally, tally_executable

from pipeline.cli import main
from pipeline.config import load_home
from pipeline.imports import chosen_source, import_source, list_sources
from pipeline.sources import CLAUDE, Source

ENVS = ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_DATA_DIR", "OPENCODE_DATA_DIR",
        "XDG_CONFIG_HOME", "TALLY_HOME")
SONNET = "claude-sonnet-4-5-20250929"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of a Claude Code user, none of the CLIs' variables set."""
    home = tmp_path / "user"
    (home / ".claude" / "projects").mkdir(parents=True)
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def _session(name: str) -> ClaudeSession:
    return ClaudeSession(f"sess-{name}", cwd=f"/work/{name}", git_branch="feature-x")


def _reply(session: ClaudeSession, n: int, output: int = 10) -> None:
    session.assistant(T0 + timedelta(minutes=n), model=SONNET,
                      msg_id=f"msg_{session.session_id}_{n}", request_id=f"req_{n}",
                      usage=claude_usage(5, output, cache_read=100), content=[claude_text("ok")])


def _report(home: Path, by: str = "day") -> list[dict[str, Any]]:
    run = CliRunner().invoke(main, ["report", "--by", by, "--format", "json",
                                    "--home", str(home)])
    assert run.exit_code == 0, run.output
    return list(orjson.loads(run.stdout))


def _total(home: Path) -> int:
    return sum(row["total_tokens"] for row in _report(home))


def test_a_second_import_reads_only_what_was_appended(user: Path, tmp_path: Path) -> None:
    home = make_home(tmp_path / "tally")
    session = _session("a")
    for n in range(3):
        _reply(session, n)
    path = session.write(user)
    first = import_source(home, chosen_source(home, CLAUDE))
    assert (first.staged, first.quarantined) == (3, 0)
    assert import_source(home, chosen_source(home, CLAUDE)).staged == 0
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"type":"assistant","message":{"id":"msg_cut","usage":{"input_')
    assert import_source(home, chosen_source(home, CLAUDE)).staged == 0  # a partial line waits
    _reply(session, 3)
    with open(path, "a", encoding="utf-8") as handle:  # the cut line ends, a good one follows
        handle.write("\n" + orjson.dumps(session.lines[-1]).decode() + "\n")
    again = import_source(home, chosen_source(home, CLAUDE))
    assert (again.staged, again.quarantined) == (1, 1)
    [rejected] = [orjson.loads(line) for f in home.quarantine.glob("*.jsonl")
                  for line in f.read_bytes().splitlines()]
    assert rejected["reason"] == "invalid_json" and rejected["source"] == str(path)
    assert _total(home.root) == 4 * 115


def test_events_outlive_a_deleted_transcript(user: Path, tmp_path: Path) -> None:
    home = make_home(tmp_path / "tally")
    session = _session("gone")
    for n in range(4):
        _reply(session, n)
    path = session.write(user)
    import_source(home, chosen_source(home, CLAUDE))
    assert CliRunner().invoke(main, ["compact", "--home", str(home.root)]).exit_code == 0
    before = _report(home.root, "project,branch")
    path.unlink()  # Claude Code's cleanupPeriodDays
    assert import_source(home, chosen_source(home, CLAUDE)).staged == 0
    assert CliRunner().invoke(main, ["compact", "--home", str(home.root)]).exit_code == 0
    assert _report(home.root, "project,branch") == before
    assert [(r["project"], r["branch"], r["events"]) for r in before] == [
        ("/work/gone", "feature-x", 4)]


def test_import_without_logs_names_where_it_looked(user: Path, tmp_path: Path) -> None:
    (user / ".claude" / "projects").rmdir()
    run = run_tally("import", "claude-code", "--home", str(tmp_path / "tally"),
                    env={"HOME": str(user)})
    assert_one_line_error(run, 4, "no claude-code logs here", str(user / ".claude"))
    assert "--path" in run.stderr


def test_import_of_a_given_path_with_an_agent_name(user: Path, tmp_path: Path) -> None:
    scenario("codex", tmp_path / "backup")
    run = run_tally("import", "codex", "--path", str(tmp_path / "backup" / ".codex"),
                    "--agent", "laptop", "--home", str(tmp_path / "tally"))
    assert run.returncode == 0, run.stderr
    assert "import: staged" in run.stdout
    rows = _report(tmp_path / "tally", "agent")
    assert [row["agent"] for row in rows] == ["laptop"] and rows[0]["total_tokens"] > 0


def test_sources_lists_configured_and_found_with_their_lag(user: Path, tmp_path: Path) -> None:
    session = _session("lag")
    _reply(session, 0)
    path = session.write(user)
    scenario("gemini", user)
    home = make_home(tmp_path / "tally", '[[sources]]\nkind = "claude-code"\nagent = "cc"\n')
    listed = {s.source.kind: s for s in list_sources(home)}
    assert listed["claude-code"].configured and listed["claude-code"].source.name == "cc"
    assert not listed["gemini"].configured and listed["gemini"].files > 0
    assert "codex" not in listed
    assert listed["claude-code"].unread_bytes == path.stat().st_size
    import_source(home, listed["claude-code"].source)
    assert {s.source.kind: s for s in list_sources(home)}["claude-code"].unread_bytes == 0
    run = CliRunner().invoke(main, ["sources", "--home", str(home.root)])
    assert run.exit_code == 0 and "cc (claude-code, configured)" in run.output
    assert "gemini (gemini, found, not configured)" in run.output
    as_json = orjson.loads(CliRunner().invoke(main, ["sources", "--format", "json", "--home",
                                                     str(home.root)]).stdout)
    assert {row["kind"]: row["unread_bytes"] for row in as_json}["claude-code"] == 0


def test_a_configured_source_is_read_by_tail_once(user: Path, tmp_path: Path) -> None:
    scenario("gemini", user)
    home = make_home(tmp_path / "tally", '[[sources]]\nkind = "gemini"\n')
    run = CliRunner().invoke(main, ["tail", "--once", "--home", str(home.root)])
    assert run.exit_code == 0, run.output
    assert {row["day"] for row in _report(home.root)} >= {"2025-09-01", "2025-09-02"}


def test_opencode_is_copied_once_and_again_when_a_message_changes(user: Path,
                                                                  tmp_path: Path) -> None:
    import sqlite3

    from agentlogs import opencode_data_dir

    scenario("opencode", user, ["db"])
    home = make_home(tmp_path / "tally")
    source = chosen_source(home, "opencode")
    assert import_source(home, source).staged == 2
    assert import_source(home, source).staged == 0
    db = opencode_data_dir(user) / "opencode.db"
    with sqlite3.connect(db) as connection:
        data = orjson.loads(connection.execute(
            "SELECT data FROM message WHERE id = 'msg_db01b'").fetchone()[0])
        data["tokens"]["output"] = 999
        connection.execute("UPDATE message SET data = ? WHERE id = 'msg_db01b'",
                           (orjson.dumps(data).decode(),))
    assert import_source(home, source).staged == 1
    rows = _report(home.root, "model")
    assert {r["model"]: r["output_tokens"] for r in rows}["gpt-5"] == 999
    assert sum(r["events"] for r in rows) == 2


@pytest.mark.slow
def test_a_following_tailer_sees_appends_and_new_transcripts_within_2s(
        user: Path, tmp_path: Path) -> None:
    old = _session("old")
    for n in range(200):
        _reply(old, n)
    old_path = old.write(user)
    os.utime(old_path, (time.time() - 3600, time.time() - 3600))
    home = make_home(tmp_path / "tally", '[[sources]]\nkind = "claude-code"\n'
                                         "[tailer]\nidle_seconds = 1.0\n")
    env = {**os.environ, "HOME": str(user)}
    follower = subprocess.Popen([tally_executable(), "tail", "--home", str(home.root), "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
    try:
        assert _wait(lambda: _total(home.root) == 200 * 115, 60)
        time.sleep(2.5)  # idle: the transcript is closed, to be opened again on change
        fds = os.listdir(f"/proc/{follower.pid}/fd")
        assert not any(os.readlink(f"/proc/{follower.pid}/fd/{fd}") == str(old_path)
                       for fd in fds if os.path.exists(f"/proc/{follower.pid}/fd/{fd}"))
        for step, target in enumerate((old, _session("new")), 1):
            _reply(target, 1000 + step, output=1000)
            started = time.monotonic()
            if target is old:
                with open(old_path, "a", encoding="utf-8") as handle:
                    handle.write(orjson.dumps(target.lines[-1]).decode() + "\n")
            else:
                target.write(user)
            assert _wait(lambda s=step: _total(home.root) == 200 * 115 + s * 1105, 10)
            assert time.monotonic() - started <= 2.0, "seen later than 2 s after the append"
    finally:
        follower.send_signal(signal.SIGTERM)
        _, stderr = follower.communicate(timeout=60)
    assert follower.returncode == 0, stderr
    assert "Traceback" not in stderr


def _wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_configured_and_given_sources_are_told_apart(tmp_path: Path) -> None:
    home = make_home(tmp_path / "tally", '[[sources]]\nkind = "codex"\nagent = "box"\n')
    assert chosen_source(home, "codex") == Source("codex", None, "box")
    assert chosen_source(home, "codex", "/elsewhere") == Source("codex", "/elsewhere", "")
    assert chosen_source(load_home(home.root), "gemini").name == "gemini"


def test_import_compacts_what_it_read_unless_told_not_to(user: Path, tmp_path: Path) -> None:
    session = _session("lake")
    _reply(session, 0)
    path = session.write(user)
    kept = tmp_path / "staged"
    run = CliRunner().invoke(main, ["import", "claude-code", "--no-compact", "--home", str(kept)])
    assert run.exit_code == 0, run.output
    assert not (kept / "lake" / "agent_token_usage").exists()
    assert list((kept / "stage" / "agent_token_usage").iterdir())
    moved = tmp_path / "moved"
    run = CliRunner().invoke(main, ["import", "claude-code", "--home", str(moved)])
    assert run.exit_code == 0 and "1 events into the lake" in run.output, run.output
    assert (moved / "lake" / "agent_token_usage" / "_delta_log").is_dir()
    assert not list((moved / "stage" / "agent_token_usage").iterdir())
    assert _report(moved) == _report(kept) and path.exists()


def _transcripts(user: Path, count: int) -> None:
    for n in range(count):
        session = _session(f"many{n}")
        _reply(session, n % 50)
        session.write(user)


@pytest.mark.slow
def test_an_import_of_more_transcripts_than_descriptors(user: Path, tmp_path: Path) -> None:
    """Files are opened a chunk at a time and closed once read: 600 transcripts written
    just now are read with a limit of 200 open files."""
    import resource

    _transcripts(user, 600)
    home = tmp_path / "tally"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    run = subprocess.run([tally_executable(), "import", "claude-code", "--no-compact",
                          "--home", str(home)], capture_output=True, text=True,
                         env={**os.environ, "HOME": str(user)}, preexec_fn=low_limit,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert sum(row["events"] for row in _report(home)) == 600


def test_a_sidechain_copy_read_after_its_main_line_counts_once(user: Path,
                                                              tmp_path: Path) -> None:
    home = make_home(tmp_path / "tally")
    session = _session("aside")
    _reply(session, 0, output=100)
    path = session.write(user)
    import_source(home, chosen_source(home, CLAUDE))
    copy = dict(session.lines[-1], isSidechain=True, requestId="req_aside")
    copy["message"] = dict(copy["message"], usage=claude_usage(5, 900, cache_read=100))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(orjson.dumps(copy).decode() + "\n")
    import_source(home, chosen_source(home, CLAUDE))
    assert [(r["events"], r["output_tokens"]) for r in _report(home.root)] == [(1, 100)]


def test_a_new_transcript_sharing_a_read_one_s_first_line_is_read(user: Path,
                                                                  tmp_path: Path) -> None:
    home = make_home(tmp_path / "tally")
    first = _session("same")
    _reply(first, 0)
    path = first.write(user)
    import_source(home, chosen_source(home, CLAUDE))
    other = path.with_name("other.jsonl")
    second = _session("same")  # the same first line, then replies of its own
    _reply(second, 0)
    _reply(second, 7)
    other.write_text(path.read_text() + orjson.dumps(second.lines[-1]).decode() + "\n")
    import_source(home, chosen_source(home, CLAUDE))  # a fresh tailer: `path` rests unopened
    assert sum(row["events"] for row in _report(home.root)) == 2


def test_a_claude_home_whose_name_is_not_utf8(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    odd = os.fsdecode(bytes(tmp_path) + b"/caf\xe9")
    session = _session("odd")
    _reply(session, 0)
    session.write(Path(odd))
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", os.path.join(odd, ".claude"))
    home = make_home(tmp_path / "tally")
    assert import_source(home, chosen_source(home, CLAUDE)).staged == 1
    assert import_source(home, chosen_source(home, CLAUDE)).staged == 0
    assert _total(home.root) == 115


def test_an_opencode_message_dated_past_9999_is_left_out(user: Path, tmp_path: Path) -> None:
    import sqlite3

    from agentlogs import opencode_data_dir

    scenario("opencode", user, ["db"])
    with sqlite3.connect(opencode_data_dir(user) / "opencode.db") as connection:
        data = orjson.loads(connection.execute(
            "SELECT data FROM message WHERE id = 'msg_db01b'").fetchone()[0])
        data["time"]["created"] = 253_402_300_800_000  # year 10000
        connection.execute("UPDATE message SET data = ? WHERE id = 'msg_db01b'",
                           (orjson.dumps(data).decode(),))
    home = make_home(tmp_path / "tally")
    assert import_source(home, chosen_source(home, "opencode")).staged == 1


def test_an_unreadable_transcript_fails_the_import_after_the_rest(user: Path,
                                                                  tmp_path: Path) -> None:
    readable, locked = _session("open"), _session("locked")
    _reply(readable, 0)
    _reply(locked, 1)
    readable.write(user)
    locked.write(user).chmod(0)
    run = run_tally("import", "claude-code", "--home", str(tmp_path / "tally"),
                    env={"HOME": str(user)}, obey_modes=True)
    assert_one_line_error(run, 4, "cannot open (Permission denied)", "everything else was read")
    assert sum(row["events"] for row in _report(tmp_path / "tally")) == 1
