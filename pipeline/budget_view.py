"""`tally budget`: each budget's current period (used, percentage, burn rate, projection,
when it will be exceeded) and, with `since`, its past periods, counted from the lake."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from pipeline.budgets import (
    ALL,
    Budget,
    DayUsage,
    budgets_of,
    local_today,
    period_start,
    period_usage,
)
from pipeline.config import Home
from pipeline.live import LEVEL_NAMES, budget_row
from pipeline.observe import seed_totals
from pipeline.query import ReportQuery
from pipeline.rates import burn_rate
from pipeline.reports import run_report
from pipeline.totals import NANO, minute_totals

BUDGET_COLUMNS = ("scope", "period", "metric", "period_start", "used", "budget", "percentage",
                  "status", "burn_per_hour", "projected", "exceeded_at", "minutes_left")


def budget_rows(home: Home, now: datetime, since: date | None = None,
                agents: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per budget (of `agents`' scopes, or all) and period, newest first within a budget."""
    tz = home.budgets.tz
    budgets = [b for b in budgets_of(home.budgets) if not agents or b.scope in agents]
    totals = seed_totals(home, now)
    today = local_today(now, tz)
    history = _days(home, since, tz) if since is not None else []
    rows = []
    for budget in budgets:
        current = period_start(today, budget.period)
        minutes = minute_totals(totals, None if budget.scope == ALL else budget.scope)
        used = period_usage(budget, current, totals.usage_index())
        rows.append(budget_row(budget, current, used, burn_rate(minutes, now), now, tz))
        for start in _past_starts(budget, since, current):
            rows.append(budget_row(budget, start, period_usage(budget, start, history),
                                   None, now, tz))
    return rows


def worst_level(rows: Sequence[dict[str, Any]]) -> int:
    """0 when every row is ok, 1 when one is at a warning, 2 when one is exceeded."""
    return max((LEVEL_NAMES.index(row["status"]) for row in rows), default=0)


def _past_starts(budget: Budget, since: date | None, current: date) -> list[date]:
    if since is None:
        return []
    step = timedelta(days=1 if budget.period == "daily" else 7)
    starts, start = [], current - step
    while start >= period_start(since, budget.period):
        starts.append(start)
        start -= step
    return starts


def _days(home: Home, since: date, tz: str) -> list[DayUsage]:
    query = ReportQuery(by=("agent", "day"), since=period_start(since, "weekly"), tz=tz)
    return [DayUsage(row["agent"], date.fromisoformat(row["day"]), row["total_tokens"],
                     round((row["cost_usd"] or 0) * NANO))
            for row in run_report(home, query).rows.iter_rows(named=True)]
