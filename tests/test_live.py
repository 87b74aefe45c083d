"""What live readers see (pipeline.live): the summary, budget rows, and the feed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

import pipeline.live as live
from pipeline.budgets import ALL, Budget
from pipeline.live import (
    FEED_FILE,
    FeedReader,
    budget_row,
    feed_line,
    feed_path,
    read_live,
    summary,
    write_live,
)
from pipeline.rates import Burn
from pipeline.totals import CountedRow, LiveTotals
from tests.conftest import make_home

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # Wednesday noon


def totals_with(*rows: tuple[str, str, int, int, datetime]) -> LiveTotals:
    totals = LiveTotals()
    totals.add_rows(CountedRow(None, at, agent, session, at.date(), tokens, cost)
                    for agent, session, tokens, cost, at in rows)
    return totals


def test_the_summary_holds_today_the_week_sessions_and_budgets() -> None:
    totals = totals_with(("claude", "s1", 1000, 10**9, NOW - timedelta(minutes=5)),
                         ("claude", "s1", 500, 0, NOW - timedelta(days=1)),
                         ("codex", "s2", 300, 0, NOW - timedelta(minutes=1)),
                         ("codex", "old", 5, 0, NOW - timedelta(days=3)))
    totals.tasks["codex", "T-1"] = {"ts": NOW, "status": "in_progress", "progress": 40}
    budgets = [Budget(ALL, "daily", "tokens", 1000, 0.8), Budget("codex", "weekly", "cost", 2, .8)]
    content = summary(totals, budgets, NOW, "s/3")
    assert content["today"] == "2026-12-02" and content["week_start"] == "2026-11-30"
    assert content["all"]["today"] == {"tokens": 1300, "cost_usd": 1.0}
    assert content["agents"]["claude"]["week"]["tokens"] == 1500
    assert set(content["sessions"]) == {"s1", "s2"}  # "old" was idle for 48 hours
    assert content["sessions"]["s1"] == {"agent": "claude", "tokens": 1500, "cost_usd": 1.0}
    daily = content["budgets"][0]
    assert (daily["used"], daily["percentage"], daily["status"]) == (1300, 130.0, "exceeded")
    assert content["tasks"]["codex"]["task"] == "T-1"
    assert content["block"]["tokens"] == 1300
    assert content["burn"]["tokens_per_minute"] > 0
    orjson.dumps(content)  # JSON as it is


def test_a_budget_row_projects_the_burn_to_the_periods_end() -> None:
    budget = Budget(ALL, "daily", "tokens", 100_000, 0.8)
    row = budget_row(budget, NOW.date(), 40_000, Burn(50.0, 0.0), NOW, "UTC")
    assert row["burn_per_hour"] == 3000
    assert row["projected"] == 40_000 + 50 * 12 * 60  # 76,000 by midnight: never exceeded
    assert row["exceeded_at"] is None
    faster = budget_row(budget, NOW.date(), 40_000, Burn(100.0, 0.0), NOW, "UTC")
    assert faster["exceeded_at"] == "2026-12-02T22:00:00Z"  # 60,000 more in 600 minutes
    past = budget_row(budget, date(2026, 11, 1), 40_000, Burn(200.0, 0.0), NOW, "UTC")
    assert (past["burn_per_hour"], past["projected"]) == (None, None)


def test_feed_lines_follow_across_a_roll_over(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    content = summary(LiveTotals(), [], NOW, None)
    write_live(home, content, [feed_line(content, "s/1", {})])
    reader = FeedReader(feed_path(home))
    assert list(reader.lines()) == []  # a reader starts at the end
    write_live(home, content, [feed_line(content, "s/2", {}), feed_line(content, "s/3", {})])
    assert [orjson.loads(line)["batch"] for line in reader.lines()] == ["s/2", "s/3"]
    with open(feed_path(home), "ab") as handle:
        handle.write(b'{"batch": "torn')  # half a line waits for its newline
    assert list(reader.lines()) == []
    feed_path(home).rename(feed_path(home).with_name(FEED_FILE + ".1"))
    with open(feed_path(home).with_name(FEED_FILE + ".1"), "ab") as handle:
        handle.write(b'"}\n')
    write_live(home, content, [feed_line(content, "s/4", {})])
    assert [orjson.loads(line)["batch"] for line in reader.lines()] == ["torn", "s/4"]
    assert read_live(home) == orjson.loads(orjson.dumps(content))


def test_the_feed_rolls_over_past_its_size(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_home(tmp_path / "home")
    content = summary(LiveTotals(), [], NOW, None)
    monkeypatch.setattr(live, "FEED_MAX_BYTES", 1000)
    for n in range(20):
        write_live(home, content, [feed_line(content, f"s/{n}", {})])
    assert feed_path(home).stat().st_size <= 1000 + len(feed_line(content, "s/x", {}))
    assert feed_path(home).with_name(FEED_FILE + ".1").exists()
