"""`tally budget` and `tally budget check` through CliRunner: a translator of
pipeline.budget_view, with the exit codes a wrapper script relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from pipeline.cli import main
from pipeline.config import Home
from pipeline.tailer import Tailer
from pipeline.writer import append_event
from tests.conftest import make_home
from tests.test_monitor import usage

CONFIG = ("[budgets]\ndaily_tokens = 10000\nweekly_tokens = 0\ndaily_cost_usd = 0\n"
          "[budgets.agents.claude]\ndaily_tokens = 1000\n"
          "[budgets.agents.codex]\ndaily_tokens = 5000\n")


def home_with(root: Path, *events: dict[str, Any]) -> Home:
    home = make_home(root, CONFIG)
    for event in events:
        append_event(home.logs / "a.jsonl", event)
    with Tailer(home) as tailer:
        tailer.poll()
    return home


def tally(home: Home, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--home", str(home.root)])


def rows(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    found: list[dict[str, Any]] = orjson.loads(result.stdout)
    return found


def test_budget_shows_each_scope_with_usage_percentage_and_status(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home", usage("claude", 900), usage("codex", 1000))
    found = {(r["scope"], r["period"]): r for r in rows(tally(home, "budget", "--format",
                                                              "json"))}
    assert set(found) == {("all", "daily"), ("claude", "daily"), ("codex", "daily")}
    assert (found["all", "daily"]["used"], found["all", "daily"]["percentage"]) == (1900, 19.0)
    assert (found["claude", "daily"]["status"], found["codex", "daily"]["status"]) == (
        "warning", "ok")
    assert found["claude", "daily"]["burn_per_hour"] > 0
    table = tally(home, "budget")
    assert table.exit_code == 0 and "10,000" in table.stdout and "warning" in table.stdout


def test_budget_agent_keeps_that_agents_scope(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home", usage("claude", 10))
    found = rows(tally(home, "budget", "--agent", "codex", "--format", "json"))
    assert {r["scope"] for r in found} == {"codex"}


def test_budget_since_shows_past_periods(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    home = home_with(tmp_path / "home", usage("claude", 2000, now - timedelta(days=3)))
    since = (now - timedelta(days=4)).date().isoformat()
    found = rows(tally(home, "budget", "--since", since, "--format", "json"))
    claude = [r for r in found if r["scope"] == "claude"]
    assert len(claude) == 5  # today and the four days before
    past = next(r for r in claude
                if r["period_start"] == (now - timedelta(days=3)).date().isoformat())
    assert (past["status"], past["projected"]) == ("exceeded", None)


@pytest.mark.parametrize(("events", "agent", "code"), [
    ((), (), 0),
    ((("claude", 850),), (), 1),
    ((("claude", 1500),), (), 2),
    ((("claude", 1500),), ("codex",), 0),  # claude over its own budget; codex is fine
    ((("claude", 1500),), ("claude",), 2),
    ((("codex", 9000),), ("claude",), 1),  # the global budget counts for every agent
])
def test_budget_check_exit_codes(tmp_path: Path, events: tuple[tuple[str, int], ...],
                                 agent: tuple[str, ...], code: int) -> None:
    home = home_with(tmp_path / "home", *(usage(a, n) for a, n in events))
    args = [a for name in agent for a in ("--agent", name)]
    result = tally(home, "budget", "check", *args)
    assert result.exit_code == code, result.output
    assert ("ok: every budget" in result.stdout) == (code == 0)
    assert tally(home, "budget", "check", "--quiet", *args).stdout == ""


def test_no_budgets_says_so(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 0\nweekly_tokens = 0\n"
                     "daily_cost_usd = 0\n")
    result = tally(home, "budget")
    assert result.exit_code == 0
    assert "no budgets are set" in result.stderr


def test_budget_needs_a_home(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["budget", "--home", str(tmp_path / "missing")])
    assert result.exit_code == 3
    assert "error:" in result.stderr and "tally init" in result.stderr


def test_options_before_check_are_refused_not_ignored(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home")
    result = CliRunner().invoke(main, ["budget", "--home", str(home.root), "check"])
    assert result.exit_code == 2
    assert "--home before 'check' would be ignored" in result.stderr
    assert "tally budget check --home" in result.stderr


def test_json_gives_tokens_as_whole_numbers(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home", usage("claude", 900))
    [claude] = [r for r in rows(tally(home, "budget", "--format", "json"))
                if r["scope"] == "claude"]
    assert claude["used"] == 900 and isinstance(claude["used"], int)


def test_an_agent_without_budgets_of_its_own_is_told_how_to_add_them(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home")
    result = tally(home, "budget", "--agent", "gemini")
    assert result.exit_code == 0
    assert "[budgets.agents.gemini]" in result.stderr
