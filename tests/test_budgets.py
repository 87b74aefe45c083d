"""Budget rules, periods and crossings (pipeline.budgets)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.budgets import (
    ALL,
    Budget,
    DayUsage,
    alert_id,
    budgets_of,
    crossings,
    local_today,
    period_end,
    period_start,
    period_usage,
)
from pipeline.events import Validator
from pipeline.settings import BudgetSettings

SEED = BudgetSettings()  # the seed's numbers are the defaults
TODAY = date(2026, 12, 2)  # a Wednesday


def test_defaults_are_the_seeds_numbers() -> None:
    """150,000 tokens a day, 1,000,000 a week, $10 a day, a warning at 80 %."""
    found = {(b.scope, b.period, b.metric): b.limit for b in budgets_of(SEED)}
    assert found == {(ALL, "daily", "tokens"): 150_000, (ALL, "weekly", "tokens"): 1_000_000,
                     (ALL, "daily", "cost"): 10.0}
    assert {b.warning_ratio for b in budgets_of(SEED)} == {0.8}


def test_an_agent_scope_takes_its_overrides_and_the_global_rest() -> None:
    """[budgets.agents.claude] daily_tokens = 80000 keeps the weekly and cost budgets."""
    settings = BudgetSettings(weekly_cost_usd=50.0,
                              agents={"claude": {"daily_tokens": 80_000, "warning_ratio": 0.5}})
    claude = {(b.period, b.metric): b for b in budgets_of(settings) if b.scope == "claude"}
    assert claude["daily", "tokens"].limit == 80_000
    assert claude["daily", "tokens"].warning_ratio == 0.5
    assert claude["weekly", "tokens"].limit == 1_000_000
    assert claude["weekly", "cost"].limit == 50.0


def test_a_zero_budget_is_off() -> None:
    settings = BudgetSettings(daily_cost_usd=0, agents={"codex": {"weekly_tokens": 0}})
    kinds = {(b.scope, b.period, b.metric) for b in budgets_of(settings)}
    assert (ALL, "daily", "cost") not in kinds
    assert ("codex", "weekly", "tokens") not in kinds
    assert ("codex", "daily", "tokens") in kinds


@pytest.mark.parametrize(("used", "level"), [(0, 0), (119_999, 0), (120_000, 1),
                                             (149_999, 1), (150_000, 2), (10**9, 2)])
def test_levels(used: int, level: int) -> None:
    """80 % of the budget warns, reaching it is exceeding it."""
    assert Budget(ALL, "daily", "tokens", 150_000, 0.8).level(used) == level


def test_weeks_start_on_monday_in_the_budget_time_zone() -> None:
    assert period_start(TODAY, "weekly") == date(2026, 11, 30)
    assert period_start(date(2026, 11, 30), "weekly") == date(2026, 11, 30)
    assert period_start(date(2026, 12, 6), "weekly") == date(2026, 11, 30)
    # 23:30 UTC on Sunday is already Monday in Tokyo: a new week there.
    sunday_night = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
    assert local_today(sunday_night, "UTC") == date(2026, 12, 6)
    assert local_today(sunday_night, "Asia/Tokyo") == date(2026, 12, 7)
    assert period_start(local_today(sunday_night, "Asia/Tokyo"), "weekly") == date(2026, 12, 7)


def test_a_period_ends_at_local_midnight_across_a_dst_change() -> None:
    """The day DST ends in New York has 25 hours; its end is still local midnight."""
    end = period_end(date(2026, 11, 1), "daily", "America/New_York")
    assert end.astimezone(UTC) == datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
    week_end = period_end(date(2026, 10, 26), "weekly", "America/New_York")
    assert week_end.astimezone(UTC) == datetime(2026, 11, 2, 5, 0, tzinfo=UTC)


def test_period_usage_sums_the_scope_and_the_period() -> None:
    days = [DayUsage("claude", TODAY, 100, 2_000_000_000), DayUsage("codex", TODAY, 50, 0),
            DayUsage("claude", date(2026, 11, 30), 7, 0),
            DayUsage("claude", date(2026, 11, 29), 1000, 0)]  # the week before
    assert period_usage(Budget(ALL, "daily", "tokens", 1, 1), TODAY, days) == 150
    assert period_usage(Budget("claude", "weekly", "tokens", 1, 1),
                        date(2026, 11, 30), days) == 107
    assert period_usage(Budget("claude", "daily", "cost", 1, 1), TODAY, days) == 2.0


def test_one_alert_per_level_and_none_again_once_alerted() -> None:
    budget = Budget(ALL, "daily", "tokens", 150_000, 0.8)
    alerted: set[str] = set()
    steps = []
    for used in range(0, 200_001, 10_000):
        found = crossings([budget], [DayUsage("a", TODAY, used, 0)], TODAY, alerted)
        alerted |= {c.event_id for c in found}
        steps += [(used, c.kind) for c in found]
    assert steps == [(120_000, "TOKEN_BUDGET_WARNING"), (150_000, "TOKEN_BUDGET_EXCEEDED")]


def test_usage_first_seen_past_the_budget_alerts_exceeded_alone() -> None:
    """And a later check does not add the warning it skipped."""
    budget = Budget(ALL, "daily", "tokens", 150_000, 0.8)
    days = [DayUsage("a", TODAY, 400_000, 0)]
    first = crossings([budget], days, TODAY, set())
    assert [c.kind for c in first] == ["TOKEN_BUDGET_EXCEEDED"]
    assert crossings([budget], days, TODAY, {first[0].event_id}) == []


def test_only_the_current_period_alerts() -> None:
    """Months of old usage raise nothing: crossings look at today's periods only."""
    budget = Budget(ALL, "daily", "tokens", 100, 0.8)
    old = [DayUsage("a", date(2026, 6, 1), 10**6, 0)]
    assert crossings([budget], old, TODAY, set()) == []


def test_the_alert_event_is_valid_and_its_id_names_scope_period_and_kind() -> None:
    budget = Budget("claude", "weekly", "cost", 20.0, 0.8)
    [crossing] = crossings([budget], [DayUsage("claude", TODAY, 0, 17_500_000_000)],
                           TODAY, set())
    event = crossing.event("2026-12-02T10:00:00Z")
    assert event["event_id"] == alert_id("claude", "weekly", date(2026, 11, 30),
                                         "COST_BUDGET_WARNING")
    assert (event["usage"], event["budget"], event["percentage"]) == (17.5, 20.0, 87.5)
    checked = Validator().validate_object(event)
    assert not hasattr(checked, "reason"), checked


@given(st.lists(st.integers(min_value=0, max_value=40_000), max_size=40))
def test_any_sequence_of_increments_alerts_each_level_at_most_once(steps: list[int]) -> None:
    """However usage grows, each kind is raised at most once, and EXCEEDED iff reached."""
    budget = Budget(ALL, "daily", "tokens", 150_000, 0.8)
    alerted: set[str] = set()
    raised: list[str] = []
    used = 0
    for step in steps:
        used += step
        found = crossings([budget], [DayUsage("a", TODAY, used, 0)], TODAY, alerted)
        alerted |= {c.event_id for c in found}
        raised += [c.kind for c in found]
    assert len(raised) == len(set(raised))
    assert ("TOKEN_BUDGET_EXCEEDED" in raised) == (used >= 150_000)
    assert ("TOKEN_BUDGET_WARNING" in raised) <= (used >= 120_000)


def test_a_long_scope_still_gives_a_valid_distinct_event_id() -> None:
    """The schema allows 128 characters; a long agent name is shortened with its hash."""
    long_a, long_b = "a" * 200, "a" * 199 + "b"
    first = alert_id(long_a, "weekly", TODAY, "COST_BUDGET_EXCEEDED")
    assert len(first) <= 128
    assert first != alert_id(long_b, "weekly", TODAY, "COST_BUDGET_EXCEEDED")
    [crossing] = crossings([Budget(long_a, "daily", "tokens", 10, 0.8)],
                           [DayUsage(long_a, TODAY, 20, 0)], TODAY, set())
    checked = Validator().validate_object(crossing.event("2026-12-02T10:00:00Z"))
    assert not hasattr(checked, "reason"), checked
