"""`tally statusline`: Claude Code's payload and the live.json that `tally tail --once` wrote
give the session's and today's tokens and cost and the daily budget's percentage, the same
numbers `tally report` counts; without live totals a hint; a day-old live.json shows today
as nothing; any payload is tolerated; and the executable answers without click, rich or
Polars."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import make_home, run_tally, tally_executable

from pipeline.budgets import Budget
from pipeline.config import Home
from pipeline.live import live_path, read_live, summary, write_live
from pipeline.statusline import NO_TOTALS, parse_payload, read_summary, statusline
from pipeline.totals import CountedRow, LiveTotals
from pipeline.writer import append_event

SESSION = "0b8a2e4c-5f3d-4e51-9a57-2c1f6b0d9e13"  # Claude Code's session ids are UUIDs
OTHER_SESSION = "7d41f0aa-93be-4c0e-b5a2-6e8f1c2d3b40"


def claude_code_payload(session_id: str = SESSION) -> dict[str, Any]:
    """What Claude Code pipes to a statusLine command (recorded from version 1.0.80)."""
    return {
        "hook_event_name": "Status",
        "session_id": session_id,
        "transcript_path": f"/home/u/.claude/projects/-home-u-proj/{session_id}.jsonl",
        "cwd": "/home/u/proj",
        "model": {"id": "claude-opus-4-1", "display_name": "Opus"},
        "workspace": {"current_dir": "/home/u/proj", "project_dir": "/home/u/proj"},
        "version": "1.0.80",
        "output_style": {"name": "default"},
        "cost": {"total_cost_usd": 0.01},
    }


HEAVY = {"polars", "click", "rich", "pyarrow", "deltalake", "watchdog", "jsonschema"}


def usage(home: Home, agent: str, session: str, input_tokens: int, output_tokens: int) -> None:
    append_event(home.logs / f"{agent}.jsonl", {
        "event_type": "agent_token_usage", "agent": agent, "session_id": session,
        "model": "claude-sonnet-4-5", "input_tokens": input_tokens,
        "output_tokens": output_tokens})


def report(home: Home, by: str) -> list[dict[str, Any]]:
    run = run_tally("report", "--by", by, "--format", "json", "--home", str(home.root))
    assert run.returncode == 0, run.stderr
    rows: list[dict[str, Any]] = json.loads(run.stdout)
    return rows


def tokens_text(count: int) -> str:
    """How the statusline writes a token count of these tests (thousands)."""
    assert 1_000 <= count < 1_000_000
    return f"{count / 1000:.1f}k"


def tail_once(home: Home) -> dict[str, Any]:
    """`tally tail --once` for real; the live.json it left."""
    run = run_tally("tail", "--once", "--home", str(home.root))
    assert run.returncode == 0, run.stderr
    live = read_live(home)
    assert live is not None, "tail --once wrote no live.json"
    return live


def a_tailed_home(root: Path, budgets: str) -> Home:
    """Two sessions of two agents today (77,000 tokens), staged by `tally tail --once`."""
    home = make_home(root, budgets)
    usage(home, "claude", SESSION, 20_000, 3_000)
    usage(home, "claude", SESSION, 20_000, 3_000)
    usage(home, "codex", OTHER_SESSION, 30_000, 1_000)
    tail_once(home)
    return home


TOKENS_FULLEST = ("[budgets]\ndaily_tokens = 100000\ndaily_cost_usd = 5.0\n"
                  "[budgets.agents.claude]\ndaily_tokens = 1000\n")  # an agent's: not shown
COST_FULLEST = "[budgets]\ndaily_tokens = 1000000\ndaily_cost_usd = 0.4\n"


@pytest.mark.parametrize(("budgets", "limit_text"), [(TOKENS_FULLEST, "100.0k"),
                                                     (COST_FULLEST, "$0.40")])
def test_session_today_and_budget_match_the_report(tmp_path: Path, budgets: str,
                                                   limit_text: str) -> None:
    home = a_tailed_home(tmp_path / "home", budgets)
    [session] = [row for row in report(home, "session") if row["session"] == SESSION]
    [today] = report(home, "day")
    assert (session["total_tokens"], today["total_tokens"]) == (46_000, 77_000)  # as logged
    if limit_text.startswith("$"):
        percentage = today["cost_usd"] / 0.4 * 100
    else:
        percentage = today["total_tokens"] / 100_000 * 100
    line = statusline(claude_code_payload(), read_summary(str(home.root)))
    assert line == (f"Opus · session {tokens_text(session['total_tokens'])} tok "
                    f"${session['cost_usd']:.2f} · today {tokens_text(today['total_tokens'])} "
                    f"tok ${today['cost_usd']:.2f} · {percentage:.0f}% of daily {limit_text}")


def test_the_other_session_sees_its_own_tokens(tmp_path: Path) -> None:
    home = a_tailed_home(tmp_path / "home", TOKENS_FULLEST)
    [other] = [row for row in report(home, "session") if row["session"] == OTHER_SESSION]
    line = statusline(claude_code_payload(OTHER_SESSION), read_summary(str(home.root)))
    assert line.startswith(f"Opus · session {tokens_text(other['total_tokens'])} tok "
                           f"${other['cost_usd']:.2f} · today 77.0k tok ")


def test_tail_once_without_budgets_still_feeds_the_statusline(tmp_path: Path) -> None:
    """The hint says `run tally tail`: after it, there must be totals to show."""
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 0\nweekly_tokens = 0\n"
                                        "daily_cost_usd = 0\nweekly_cost_usd = 0\n")
    usage(home, "claude", SESSION, 3_000, 1_000)
    assert run_tally("tail", "--once", "--home", str(home.root)).returncode == 0
    line = statusline(claude_code_payload(), read_summary(str(home.root)))
    assert line.startswith("Opus · session 4.0k tok ")


def test_a_session_shared_by_two_agents_shows_the_report_s_total(tmp_path: Path) -> None:
    """A Claude Code session whose subagent logs under an agent name of its own."""
    home = make_home(tmp_path / "home")
    usage(home, "claude", SESSION, 3_000, 1_000)
    usage(home, "claude-subagent", SESSION, 500, 500)
    tail_once(home)
    [session] = [row for row in report(home, "session") if row["session"] == SESSION]
    assert session["total_tokens"] == 5_000
    line = statusline(claude_code_payload(), read_summary(str(home.root)))
    assert line.startswith("Opus · session 5.0k tok ")


def test_a_session_without_events_shows_only_today(tmp_path: Path) -> None:
    home = a_tailed_home(tmp_path / "home", TOKENS_FULLEST)
    line = statusline(claude_code_payload("not-logged-yet"), read_summary(str(home.root)))
    assert line.startswith("Opus · today 77.0k tok ") and "session" not in line


def test_the_next_tail_updates_the_line(tmp_path: Path) -> None:
    home = a_tailed_home(tmp_path / "home", TOKENS_FULLEST)
    usage(home, "claude", SESSION, 10_000, 0)
    tail_once(home)
    [session] = [row for row in report(home, "session") if row["session"] == SESSION]
    line = statusline(claude_code_payload(), read_summary(str(home.root)))
    assert session["total_tokens"] == 56_000
    assert line.startswith("Opus · session 56.0k tok ") and "· today 87.0k tok " in line
    assert line.endswith("· 87% of daily 100.0k")


def test_without_live_totals_a_hint(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    assert read_summary(str(home.root)) is None  # initialised, never tailed
    assert read_summary(str(tmp_path / "no-such-home")) is None
    assert statusline(claude_code_payload(), None) == NO_TOTALS
    assert "tally run" in NO_TOTALS and "tally tail" in NO_TOTALS


@pytest.mark.parametrize("content", [b"", b'{"updated": "2025-', b"[1, 2]", b"null",
                                     b"\xff\xfe\x00"])
def test_an_unreadable_live_json_is_no_live_totals(tmp_path: Path, content: bytes) -> None:
    home = make_home(tmp_path / "home")
    live_path(home).write_bytes(content)
    assert read_summary(str(home.root)) is None


def test_live_json_from_yesterday_shows_today_as_nothing(tmp_path: Path) -> None:
    home = a_tailed_home(tmp_path / "home", TOKENS_FULLEST)
    [session] = [row for row in report(home, "session") if row["session"] == SESSION]
    [today] = report(home, "day")
    live = read_summary(str(home.root))
    assert live is not None
    written = datetime.fromisoformat(live["updated"].replace("Z", "+00:00"))
    same_day = statusline(claude_code_payload(), live, now=written)
    next_day = statusline(claude_code_payload(), live, now=written + timedelta(days=1))
    assert same_day.endswith(f"· today 77.0k tok ${today['cost_usd']:.2f} · 77% of daily 100.0k")
    # the session's tokens are the session's whatever the day; today's and the daily
    # budget's belong to a day that is over
    assert next_day == (f"Opus · session 46.0k tok ${session['cost_usd']:.2f} · "
                        f"today 0 tok $0.00")


def test_the_day_is_a_day_of_the_budget_time_zone() -> None:
    """live.json's `today` is a day in its `tz`: the statusline compares in that zone."""
    tz = "Pacific/Kiritimati"  # UTC+14: its day starts ten hours before UTC's previous one
    written = datetime(2025, 8, 29, 11, 0, tzinfo=UTC)  # 2025-08-30 01:00 there
    totals = LiveTotals(tz=tz)
    totals.add_rows([CountedRow("e1", written, "claude", SESSION, date(2025, 8, 30), 5_000, 0)])
    live = summary(totals, [Budget("all", "daily", "tokens", 10_000, 0.8)], written, None)
    assert live["today"] == "2025-08-30"
    later_that_day = datetime(2025, 8, 30, 9, 30, tzinfo=UTC)  # 23:30 there
    next_day = datetime(2025, 8, 30, 10, 30, tzinfo=UTC)  # 00:30 on the 31st there, UTC's 30th
    assert statusline({}, live, now=later_that_day) == "today 5.0k tok $0.00 · 50% of daily 10.0k"
    assert statusline({}, live, now=next_day) == "today 0 tok $0.00"


@pytest.mark.parametrize("data", [b"", b"  \n", b"not json", b'{"session_id": "0b8a2e4c',
                                  b"[1, 2]", b'"Opus"', b"null", b"\xff\xfe\x00\x01",
                                  b'{"a": 1}{"b": 2}'])
def test_an_unreadable_payload_is_an_empty_one(tmp_path: Path, data: bytes) -> None:
    assert parse_payload(data) == {}
    home = a_live_home(tmp_path / "home")
    assert statusline(parse_payload(data), read_live(home)) == "today 1.2k tok $0.00"


@pytest.mark.parametrize("payload", [
    {"model": "Opus", "session_id": None},
    {"model": {"display_name": None}, "session_id": 12345},
    {"model": {"id": "claude-opus-4-1"}},  # no display name: no model shown
    {"model": ["Opus"], "session_id": ["a"]},
    {"session_id": {"id": SESSION}},
])
def test_odd_payload_fields_are_tolerated(tmp_path: Path, payload: dict[str, Any]) -> None:
    home = a_live_home(tmp_path / "home")
    assert statusline(payload, read_live(home)) == "today 1.2k tok $0.00"


def test_a_payload_s_fields_are_read_from_recorded_json() -> None:
    payload = parse_payload(orjson.dumps(claude_code_payload()) + b"\n")
    assert payload["session_id"] == SESSION and payload["model"]["display_name"] == "Opus"


def a_live_home(root: Path) -> Home:
    """A home whose live.json (now) holds 1,234 tokens today in no known session."""
    home = make_home(root)
    now = datetime.now(UTC)
    totals = LiveTotals()
    totals.add_rows([CountedRow("e1", now, "claude", "elsewhere", now.date(), 1_234, 0)])
    write_live(home, summary(totals, [], now, None), [])
    return home


# ---------------------------------------------------------------- the executable


def run_statusline(home: Path | str, payload: bytes, *python_flags: str) -> \
        subprocess.CompletedProcess[bytes]:
    run = subprocess.run([sys.executable, *python_flags, tally_executable(), "statusline",
                          "--home", str(home)], input=payload, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    return run


def test_the_executable_prints_the_line_without_heavy_imports(tmp_path: Path) -> None:
    home = a_tailed_home(tmp_path / "home", TOKENS_FULLEST)
    expected = statusline(claude_code_payload(), read_summary(str(home.root)))
    run = run_statusline(home.root, orjson.dumps(claude_code_payload()), "-X", "importtime")
    assert run.stdout.decode() == expected + "\n"
    imported = {line.rsplit("|", 1)[1].strip() for line in run.stderr.decode().splitlines()
                if line.startswith("import time:") and "|" in line}
    assert {"pipeline.entry", "pipeline.statusline", "orjson"} <= imported  # the list is read
    assert not {name.split(".")[0] for name in imported} & HEAVY, sorted(imported)


def test_only_the_fast_path_avoids_click(tmp_path: Path) -> None:
    """The modules loaded after main() returns: none heavy for a statusline, click for a
    `statusline --help` (which the fast path leaves to click)."""
    home = a_live_home(tmp_path / "home")
    code = ("import json, sys\n"
            "sys.argv = ['tally', *sys.argv[1:]]\n"
            "from pipeline.entry import main\n"
            "try:\n"
            "    main()\n"
            "finally:\n"
            "    sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n")

    def modules(*args: str) -> tuple[str, set[str]]:
        run = subprocess.run([sys.executable, "-c", code, *args], input=b"{}",
                             capture_output=True, timeout=60)
        listed = run.stderr.decode().rsplit("\nMODULES ", 1)[1]
        return run.stdout.decode(), {name.split(".")[0] for name in json.loads(listed)}

    out, loaded = modules("statusline", "--home", str(home.root))
    assert out == "today 1.2k tok $0.00\n"
    assert "pipeline" in loaded and not loaded & HEAVY, sorted(loaded & HEAVY)
    out, loaded = modules("statusline", "--help")
    assert out.startswith("Usage: ") and "click" in loaded


def test_the_executable_on_a_fresh_home_prints_the_hint(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    run = run_statusline(home.root, orjson.dumps(claude_code_payload()))
    assert run.stdout.decode() == NO_TOTALS + "\n" and run.stderr == b""


def test_the_executable_tolerates_a_garbage_payload(tmp_path: Path) -> None:
    home = a_live_home(tmp_path / "home")
    run = run_statusline(home.root, b"\x00\xff{{{ not json")
    assert run.stdout.decode() == "today 1.2k tok $0.00\n" and run.stderr == b""


def test_the_executable_does_not_wait_for_a_terminal(tmp_path: Path) -> None:
    """Run by hand on a terminal, it reads no payload rather than waiting for one."""
    home = a_live_home(tmp_path / "home")
    terminal, attached = pty.openpty()
    try:
        run = subprocess.run([tally_executable(), "statusline", "--home", str(home.root)],
                             stdin=attached, capture_output=True, timeout=30)
    finally:
        os.close(attached)
        with contextlib.suppress(OSError):
            os.close(terminal)
    assert run.returncode == 0 and run.stdout.decode() == "today 1.2k tok $0.00\n"
