"""pipeline.alerts: the alert log says which alerts were raised, each crossing is written once
with its deterministic id and put in the outbox first, the text people read, and the outbox."""

from __future__ import annotations

import os
from datetime import date, timedelta
from typing import Any

import orjson
import pytest

from pipeline.alerts import (
    alert_log,
    alert_text,
    alerted_ids,
    outbox_dir,
    outbox_path,
    pending_alerts,
    put_in_outbox,
    raise_alerts,
)
from pipeline.budgets import Budget, Crossing, DayUsage, budgets_of, crossings
from pipeline.config import Home
from pipeline.errors import StorageError
from pipeline.events import Event, Validator
from pipeline.settings import BudgetSettings

TODAY = date(2025, 8, 29)  # a Friday: its week started on Monday the 25th
TOKENS = BudgetSettings(daily_tokens=1000, weekly_tokens=0, daily_cost_usd=0, warning_ratio=0.8)


def day(tokens: int, agent: str = "claude", on: date = TODAY, cost_usd: float = 0.0) -> DayUsage:
    return DayUsage(agent, on, tokens, round(cost_usd * 1e9))


def log_lines(home: Home) -> list[dict[str, Any]]:
    raw = alert_log(home).read_bytes()
    assert raw.endswith(b"\n")
    return [orjson.loads(line) for line in raw.splitlines()]


def alert_event(event_id: str = "tally-budget:all:daily:2025-08-29:TOKEN_BUDGET_WARNING",
                **fields: Any) -> dict[str, Any]:
    return {"event_type": "budget_alert", "event_id": event_id, "ts": "2025-08-29T12:00:00Z",
            "agent": "tally", "alert": "TOKEN_BUDGET_WARNING", "period": "daily",
            "period_start": "2025-08-29", "scope": "all", "usage": 850, "budget": 1000,
            "percentage": 85.0, **fields}


# ---------------------------------------------------------------- alerted_ids


def test_alerted_ids_without_a_log_is_empty(home: Home) -> None:
    assert not alert_log(home).exists()
    assert alerted_ids(home) == set()


def test_alerted_ids_skips_torn_and_foreign_lines(home: Home) -> None:
    path = alert_log(home)
    path.parent.mkdir(parents=True)
    lines = [orjson.dumps(alert_event("id-1")),
             orjson.dumps({"event_type": "agent_token_usage", "event_id": "not-an-alert"}),
             b"[1, 2, 3]", b"", b"not json at all",
             orjson.dumps(alert_event("id-2")),
             orjson.dumps(alert_event("id-torn"))[:40]]  # a crash mid-append: no newline
    path.write_bytes(b"\n".join(lines))
    assert alerted_ids(home) == {"id-1", "id-2"}


# ---------------------------------------------------------------- raise_alerts


def test_raise_alerts_writes_one_valid_line_per_crossing_with_its_id(home: Home) -> None:
    settings = BudgetSettings(daily_tokens=1000, weekly_tokens=2000, daily_cost_usd=5.0,
                              warning_ratio=0.8)
    usage = [day(900, cost_usd=6.5), day(200, agent="codex", on=TODAY - timedelta(days=3))]
    found = crossings(budgets_of(settings), usage, TODAY, set())
    assert {c.event_id for c in found} == {
        "tally-budget:all:daily:2025-08-29:TOKEN_BUDGET_WARNING",
        "tally-budget:all:daily:2025-08-29:COST_BUDGET_EXCEEDED",
    }  # weekly tokens: 1100 of 2000 is under 80 %
    alerted: set[str] = set()
    written = raise_alerts(home, found, alerted)
    lines = log_lines(home)
    assert lines == written
    assert [line["event_id"] for line in lines] == [c.event_id for c in found]
    assert alerted == {c.event_id for c in found}
    assert alerted_ids(home) == alerted
    validator = Validator()
    for line in lines:
        assert isinstance(validator.validate(orjson.dumps(line)), Event), line
    cost = next(line for line in lines if line["alert"] == "COST_BUDGET_EXCEEDED")
    assert (cost["usage"], cost["budget"], cost["percentage"]) == (6.5, 5.0, 130.0)
    tokens = next(line for line in lines if line["alert"] == "TOKEN_BUDGET_WARNING")
    assert (tokens["usage"], tokens["budget"], tokens["percentage"]) == (900, 1000, 90.0)
    assert tokens["scope"] == "all" and tokens["period_start"] == "2025-08-29"


def test_raise_alerts_puts_the_alert_in_the_outbox(home: Home) -> None:
    found = crossings(budgets_of(TOKENS), [day(1200)], TODAY, set())
    [event] = raise_alerts(home, found, set())
    [(path, entry)] = pending_alerts(home)
    assert path == outbox_path(home, event["event_id"])
    assert entry == {"event": event, "attempts": 0, "due": 0.0}  # no `left`: every receiver


def test_raise_alerts_puts_in_the_outbox_before_the_log(home: Home) -> None:
    """A log that cannot be written leaves the alert in the outbox and out of the log's ids:
    the next run raises it again, and the outbox already holds it for delivery."""
    alert_log(home).mkdir(parents=True)  # a directory where the log file should be
    found = crossings(budgets_of(TOKENS), [day(900)], TODAY, set())
    alerted: set[str] = set()
    with pytest.raises(StorageError, match="cannot append to the log"):
        raise_alerts(home, found, alerted)
    assert alerted == set()
    assert [entry["event"]["event_id"] for _, entry in pending_alerts(home)] == \
        [found[0].event_id]


def test_an_alert_raised_once_is_not_raised_again(home: Home) -> None:
    budgets = budgets_of(TOKENS)
    first = raise_alerts(home, crossings(budgets, [day(850)], TODAY, set()), set())
    assert [e["alert"] for e in first] == ["TOKEN_BUDGET_WARNING"]
    # a restart: the ids come from the log alone
    assert crossings(budgets, [day(850), day(100)], TODAY, alerted_ids(home)) == []
    # past the budget: EXCEEDED, once
    later = crossings(budgets, [day(1100)], TODAY, alerted_ids(home))
    assert [c.kind for c in later] == ["TOKEN_BUDGET_EXCEEDED"]
    raise_alerts(home, later, set())
    assert crossings(budgets, [day(5000)], TODAY, alerted_ids(home)) == []
    assert [line["alert"] for line in log_lines(home)] == \
        ["TOKEN_BUDGET_WARNING", "TOKEN_BUDGET_EXCEEDED"]
    # the next day is a new period
    tomorrow = TODAY + timedelta(days=1)
    [next_day] = crossings(budgets, [day(900, on=tomorrow)], tomorrow, alerted_ids(home))
    assert next_day.event_id == "tally-budget:all:daily:2025-08-30:TOKEN_BUDGET_WARNING"


def test_usage_first_seen_past_the_budget_alerts_exceeded_alone(home: Home) -> None:
    budgets = budgets_of(TOKENS)
    raise_alerts(home, crossings(budgets, [day(2000)], TODAY, set()), set())
    assert [line["alert"] for line in log_lines(home)] == ["TOKEN_BUDGET_EXCEEDED"]
    assert crossings(budgets, [day(2000)], TODAY, alerted_ids(home)) == []


def test_agent_budgets_alert_with_their_own_scope(home: Home) -> None:
    settings = BudgetSettings(daily_tokens=10_000, weekly_tokens=0, daily_cost_usd=0,
                              agents={"codex": {"daily_tokens": 100}})
    found = crossings(budgets_of(settings), [day(150, agent="codex"), day(5000)], TODAY, set())
    [event] = raise_alerts(home, found, set())
    assert event["scope"] == "codex" and event["alert"] == "TOKEN_BUDGET_EXCEEDED"
    assert event["event_id"] == "tally-budget:codex:daily:2025-08-29:TOKEN_BUDGET_EXCEEDED"
    assert isinstance(Validator().validate(orjson.dumps(log_lines(home)[0])), Event)


def test_an_alert_written_after_a_torn_line_is_not_raised_again(home: Home) -> None:
    """A crash mid-append leaves a line without its newline; the next alert must still
    count as raised, or the run after raises it a second time."""
    path = alert_log(home)
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps(alert_event("id-torn"))[:40])
    budgets = budgets_of(TOKENS)
    raise_alerts(home, crossings(budgets, [day(900)], TODAY, set()), set())
    assert crossings(budgets, [day(900)], TODAY, alerted_ids(home)) == []


# ---------------------------------------------------------------- alert_text


def test_alert_text_of_a_token_alert() -> None:
    crossing = Crossing(Budget("all", "weekly", "tokens", 1_000_000, 0.8), date(2025, 8, 25),
                        1, 850_123)
    assert alert_text(crossing.event("2025-08-29T12:00:00Z")) == (
        "TOKEN_BUDGET_WARNING: all weekly budget (2025-08-25) at 85.0 %: "
        "850,123 tokens of 1,000,000 tokens")


def test_alert_text_of_a_cost_alert() -> None:
    crossing = Crossing(Budget("claude", "daily", "cost", 10.0, 0.8), TODAY, 2, 1234.5678)
    assert alert_text(crossing.event("2025-08-29T12:00:00Z")) == (
        "COST_BUDGET_EXCEEDED: claude daily budget (2025-08-29) at 12345.7 %: "
        "$1,234.57 of $10.00")


# ---------------------------------------------------------------- the outbox


def test_outbox_round_trip(home: Home) -> None:
    first, second = alert_event("tally-budget:a:daily:2025-08-29:X"), alert_event("id/2")
    put_in_outbox(home, first)
    put_in_outbox(home, second, attempts=3, due=123.5, left=["webhook"])
    os.utime(outbox_path(home, "id/2"), (1, 1))  # the older of the two
    entries = pending_alerts(home)
    assert [entry for _, entry in entries] == [
        {"event": second, "attempts": 3, "due": 123.5, "left": ["webhook"]},
        {"event": first, "attempts": 0, "due": 0.0}]
    assert all(path.parent == outbox_dir(home) for path, _ in entries)
    # Named by a hash: no path separator, and scopes that differ only in odd characters
    # ("claude code", "claude_code") get files of their own.
    assert "/" not in outbox_path(home, "id/2").name
    assert outbox_path(home, "a:claude code") != outbox_path(home, "a:claude_code")
    assert len(outbox_path(home, "x" * 1000).name) < 255
    # putting again replaces the entry
    put_in_outbox(home, second, attempts=4, due=9.0, left=[])
    assert pending_alerts(home)[-1][1]["attempts"] == 4
    assert len(list(outbox_dir(home).iterdir())) == 2  # no temporary file left behind


def test_unreadable_outbox_entries_are_skipped(home: Home) -> None:
    put_in_outbox(home, alert_event("good"))
    directory = outbox_dir(home)
    (directory / "torn.json").write_bytes(b'{"event": {"event_id": "x"')
    (directory / "no-event.json").write_bytes(b'{"attempts": 1}')
    (directory / "list.json").write_bytes(b"[1]")
    (directory / "dir.json").mkdir()
    (directory / "other.txt").write_bytes(orjson.dumps({"event": alert_event("txt")}))
    assert [entry["event"]["event_id"] for _, entry in pending_alerts(home)] == ["good"]


def test_no_outbox_directory_means_nothing_pending(home: Home) -> None:
    assert not outbox_dir(home).exists()
    assert pending_alerts(home) == []
