"""Budgets as rules: which (scope, period, metric) has which limit, the periods in the
budget time zone, and which alerts a period's usage calls for. Pure Python: no Polars,
so the statusline can use it.

A scope is `all` (every agent together) or one agent with its own `[budgets.agents.NAME]`
table, whose missing keys take the global value. A budget of 0 is off.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:  # the statusline imports this module: keep it light
    from pipeline.settings import BudgetSettings


ALL = "all"
MAX_ID_LENGTH = 128  # the envelope schema's limit on event_id
PERIODS = ("daily", "weekly")
METRICS = ("tokens", "cost")
LEVELS = ("WARNING", "EXCEEDED")  # in rising order: a higher level implies the lower ones
ALERT_PREFIX = {"tokens": "TOKEN", "cost": "COST"}
_LIMIT_KEYS = {("daily", "tokens"): "daily_tokens", ("weekly", "tokens"): "weekly_tokens",
               ("daily", "cost"): "daily_cost_usd", ("weekly", "cost"): "weekly_cost_usd"}


@dataclass(frozen=True)
class Budget:
    """One limit: `scope`'s usage of `metric` (tokens, or cost in USD) per `period`."""

    scope: str
    period: str
    metric: str
    limit: float
    warning_ratio: float

    def level(self, used: float) -> int:
        """How many levels `used` has reached: 0 (ok), 1 (warning), 2 (exceeded)."""
        if used >= self.limit:
            return 2
        return 1 if used >= self.limit * self.warning_ratio else 0

    def percentage(self, used: float) -> float:
        """`used` as a percentage of the limit."""
        return used / self.limit * 100.0


def budgets_of(settings: BudgetSettings) -> list[Budget]:
    """Every budget that is on: the global ones, then each agent's."""
    scopes: list[tuple[str, Mapping[str, float]]] = [(ALL, {})]
    scopes += sorted(settings.agents.items())
    budgets = []
    for scope, overrides in scopes:
        ratio = float(overrides.get("warning_ratio", settings.warning_ratio))
        for (period, metric), key in _LIMIT_KEYS.items():
            limit = float(overrides.get(key, getattr(settings, key)))
            if limit > 0:
                budgets.append(Budget(scope, period, metric, limit, ratio))
    return budgets


def alert_kind(metric: str, level: int) -> str:
    """TOKEN_BUDGET_WARNING and the like, for a metric and a level of 1 or 2."""
    return f"{ALERT_PREFIX[metric]}_BUDGET_{LEVELS[level - 1]}"


def alert_id(scope: str, period: str, start: date, kind: str) -> str:
    """The event_id of the one alert of a kind per scope and period: the same every run
    (a scope too long for the schema's 128 characters is shortened with its hash)."""
    name = f"tally-budget:{scope}:{period}:{start.isoformat()}:{kind}"
    if len(name) <= MAX_ID_LENGTH:
        return name
    digest = hashlib.sha256(scope.encode()).hexdigest()[:16]
    return alert_id(f"{scope[:32]}~{digest}", period, start, kind)


# ---------------------------------------------------------------- periods


def local_today(now: datetime, tz: str) -> date:
    """The calendar day of `now` in `tz`."""
    return now.astimezone(ZoneInfo(tz)).date()


def period_start(day: date, period: str) -> date:
    """The first day of the period that holds `day`: itself, or its week's Monday."""
    return day if period == "daily" else day - timedelta(days=day.weekday())


def period_days(start: date, period: str) -> list[date]:
    """The days of the period that starts on `start`."""
    return [start + timedelta(days=n) for n in range(1 if period == "daily" else 7)]


def period_end(start: date, period: str, tz: str) -> datetime:
    """The instant the period that starts on `start` ends, in `tz` (DST-aware)."""
    last = period_days(start, period)[-1] + timedelta(days=1)
    return datetime.combine(last, time(), ZoneInfo(tz))


def period_begin(start: date, tz: str) -> datetime:
    """The instant a period that starts on `start` begins, in `tz`."""
    return datetime.combine(start, time(), ZoneInfo(tz))


# ---------------------------------------------------------------- usage per budget


@dataclass(frozen=True)
class DayUsage:
    """What one agent used on one local day: tokens, and cost in nano-USD."""

    agent: str
    day: date
    tokens: int
    cost_nano: int


class UsageIndex:
    """Usage per (agent, day) and per day, so that a budget's period is a few lookups
    whatever the number of agents and days."""

    def __init__(self, days: Iterable[DayUsage]) -> None:
        self.by_agent: dict[tuple[str, date], tuple[int, int]] = {}
        self.by_day: dict[date, tuple[int, int]] = {}
        for usage in days:
            key = (usage.agent, usage.day)
            tokens, cost = self.by_agent.get(key, (0, 0))
            self.by_agent[key] = (tokens + usage.tokens, cost + usage.cost_nano)
            tokens, cost = self.by_day.get(usage.day, (0, 0))
            self.by_day[usage.day] = (tokens + usage.tokens, cost + usage.cost_nano)

    def used(self, budget: Budget, start: date) -> float:
        """The budget's metric summed over its scope and the period starting on `start`."""
        column = 0 if budget.metric == "tokens" else 1
        total = sum((self.by_day.get(day, (0, 0)) if budget.scope == ALL
                     else self.by_agent.get((budget.scope, day), (0, 0)))[column]
                    for day in period_days(start, budget.period))
        return total if budget.metric == "tokens" else total / 1e9


def period_usage(budget: Budget, start: date, days: Iterable[DayUsage] | UsageIndex) -> float:
    """The budget's metric summed over its scope and the period that starts on `start`."""
    index = days if isinstance(days, UsageIndex) else UsageIndex(days)
    return index.used(budget, start)


@dataclass(frozen=True)
class Crossing:
    """A budget's usage at or past a level in one period: what an alert reports."""

    budget: Budget
    start: date
    level: int
    used: float

    @property
    def kind(self) -> str:
        """TOKEN_BUDGET_WARNING and the like."""
        return alert_kind(self.budget.metric, self.level)

    @property
    def event_id(self) -> str:
        """The alert's one event_id (see `alert_id`)."""
        return alert_id(self.budget.scope, self.budget.period, self.start, self.kind)

    def event(self, ts: str) -> dict[str, object]:
        """The budget_alert event of this crossing, written at `ts`."""
        budget = self.budget
        used = self.used if budget.metric == "cost" else int(self.used)
        return {
            "event_type": "budget_alert", "event_id": self.event_id, "ts": ts,
            "agent": "tally", "alert": self.kind, "period": budget.period,
            "period_start": self.start.isoformat(), "scope": budget.scope,
            "usage": round(used, 6) if budget.metric == "cost" else used,
            "budget": budget.limit if budget.metric == "cost" else int(budget.limit),
            "percentage": round(budget.percentage(self.used), 2),
        }


def crossings(budgets: Iterable[Budget], days: Iterable[DayUsage] | UsageIndex, today: date,
              alerted: set[str]) -> list[Crossing]:
    """The alerts the current periods call for that are not in `alerted` (event ids).

    One per (scope, period, metric) at most: its highest level reached, unless that
    level or a higher one was alerted already. Usage first seen past the budget alerts
    EXCEEDED alone, and a later run does not add the WARNING it skipped.
    """
    index = days if isinstance(days, UsageIndex) else UsageIndex(days)
    found = []
    for budget in budgets:
        start = period_start(today, budget.period)
        used = index.used(budget, start)
        level = budget.level(used)
        done = [alert_id(budget.scope, budget.period, start, alert_kind(budget.metric, n))
                for n in range(level, len(LEVELS) + 1)]
        if level and not alerted.intersection(done):
            found.append(Crossing(budget, start, level, used))
    return found
