"""Running totals of the current periods, kept in memory by a following tailer: per agent
and local day, per session, per minute of the last day, and the latest task states.

They start from an exact count of the home (`pipeline.observe.seed_totals`) and then
add each committed batch's rows, so a budget check costs what the batch costs, never a
read of history. A row whose event_id was seen since the seed counts only its growth
(DESIGN.md: the copy with the largest total wins); the next seed settles anything
subtler. Pure Python: no Polars.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from pipeline.budgets import DayUsage, UsageIndex, local_today

NANO = 1_000_000_000
DAYS_KEPT = 8  # a week and the day before: every day a current period can hold
MINUTES_KEPT = 24 * 60  # enough for a 5-hour block that began up to 10 hours ago
SESSION_HOURS = 48  # the sessions live.json shows: those active this recently
SEEN_LIMIT = 500_000  # event ids remembered between seeds; past it, a new seed is due


@dataclass
class Spend:
    """Tokens, cost in nano-USD, and how many events had no price."""

    tokens: int = 0
    cost_nano: int = 0
    unpriced: int = 0

    def add(self, tokens: int, cost_nano: int, unpriced: int = 0) -> None:
        """Add usage to this spend."""
        self.tokens += tokens
        self.cost_nano += cost_nano
        self.unpriced += unpriced

    def as_dict(self) -> dict[str, float | int]:
        """Tokens and cost in USD, for JSON."""
        return {"tokens": self.tokens, "cost_usd": round(self.cost_nano / NANO, 6)}


@dataclass(frozen=True)
class CountedRow:
    """One counted usage: a usage event, or a snapshot's increment (`event_id` None)."""

    event_id: str | None
    ts: datetime
    agent: str
    session: str | None
    day: date  # local day in the budget time zone
    tokens: int
    cost_nano: int | None  # None: no price for its model


@dataclass(frozen=True)
class Snapshot:
    """A task's cumulative tokens as of its latest snapshot: input, output, other, total."""

    ts: datetime
    input: int
    output: int
    other: int
    total: int

    def increment(self, later: Snapshot) -> tuple[int, int, int]:
        """What `later` adds to this one (counting.snapshot_increments' rule)."""
        if later.total < self.total:  # the producer's counter restarted
            return later.input, later.output, later.other
        return (max(0, later.input - self.input), max(0, later.output - self.output),
                max(0, later.other - self.other))


@dataclass
class LiveTotals:
    """The running totals of one home, as of its last committed batch."""

    tz: str = "UTC"
    days: dict[tuple[str, date], Spend] = field(default_factory=lambda: defaultdict(Spend))
    sessions: dict[tuple[str, str], Spend] = field(default_factory=lambda: defaultdict(Spend))
    session_last: dict[tuple[str, str], datetime] = field(default_factory=dict)
    minutes: dict[int, dict[str, Spend]] = field(default_factory=dict)  # epoch minute, agent
    tasks: dict[tuple[str, str], dict[str, object]] = field(default_factory=dict)
    snapshots: dict[tuple[str, str], Snapshot] = field(default_factory=dict)
    tracked: set[tuple[str, str]] = field(default_factory=set)
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    seeded_ids: int = 0  # how many of `seen` the seed put there
    first_day: date = date.min  # rows of earlier days count in no current period

    def add_rows(self, rows: Iterable[CountedRow]) -> dict[str, Spend]:
        """Count rows of the days kept; return what they added per agent."""
        added: dict[str, Spend] = defaultdict(Spend)
        for row in rows:
            if row.day < self.first_day:
                continue  # an old log read late: no current period holds it
            tokens, cost = row.tokens, row.cost_nano or 0
            if row.event_id is not None:
                before = self.seen.get(row.event_id)
                if before is not None:
                    if tokens <= before[0]:
                        continue  # a copy no larger than the one counted
                    self.seen[row.event_id] = (tokens, cost)
                    tokens, cost = tokens - before[0], cost - before[1]
                else:
                    self.seen[row.event_id] = (tokens, cost)
            unpriced = int(row.cost_nano is None)
            self.days[(row.agent, row.day)].add(tokens, cost, unpriced)
            if row.session:
                key = (row.agent, row.session)
                self.sessions[key].add(tokens, cost, unpriced)
                self.session_last[key] = max(row.ts, self.session_last.get(key, row.ts))
            minute = int(row.ts.timestamp() // 60)
            self.minutes.setdefault(minute, {}).setdefault(row.agent, Spend()).add(tokens, cost)
            added[row.agent].add(tokens, cost, unpriced)
        return dict(added)

    def set_days(self, since: date, counted: dict[tuple[str, date], Spend]) -> None:
        """Replace the days from `since` on with an exact count of them."""
        for key in [k for k in self.days if k[1] >= since]:
            del self.days[key]
        self.days.update(counted)

    def advance(self, key: tuple[str, str], later: Snapshot) -> tuple[int, int, int] | None:
        """A task's increment from its previous snapshot to `later`, which becomes the
        latest; None when `later` is older than the latest (the next seed counts it)."""
        before = self.snapshots.get(key)
        if before is not None and later.ts < before.ts:
            return None
        self.snapshots[key] = later
        if before is None:
            return later.input, later.output, later.other  # the first counts from zero
        return before.increment(later)

    def day_usage(self) -> list[DayUsage]:
        """Per agent and local day, what budgets are checked against."""
        return [DayUsage(agent, day, spend.tokens, spend.cost_nano)
                for (agent, day), spend in self.days.items()]

    def usage_index(self) -> UsageIndex:
        """`day_usage` indexed for budgets' lookups."""
        return UsageIndex(self.day_usage())

    def forget_before(self, now: datetime) -> None:
        """Drop days, sessions and minutes no current period or view can need."""
        first = self.first_day = first_kept_day(now, self.tz)
        for day_key in [k for k in self.days if k[1] < first]:
            del self.days[day_key]
        horizon = now - timedelta(days=DAYS_KEPT)
        for key in [k for k, ts in self.session_last.items() if ts < horizon]:
            self.sessions.pop(key, None)
            del self.session_last[key]
        oldest = int(now.timestamp() // 60) - MINUTES_KEPT
        for minute in [m for m in self.minutes if m < oldest]:
            del self.minutes[minute]

    @property
    def needs_seed(self) -> bool:
        """Whether the ids remembered grew by SEEN_LIMIT since the seed."""
        return len(self.seen) - self.seeded_ids > SEEN_LIMIT


def first_kept_day(now: datetime, tz: str) -> date:
    """The first local day whose usage the running totals keep."""
    return local_today(now, tz) - timedelta(days=DAYS_KEPT - 1)


def minute_totals(totals: LiveTotals, agent: str | None = None) -> dict[int, Spend]:
    """Per epoch minute, the usage of one agent or of all."""
    result: dict[int, Spend] = {}
    for minute, per_agent in totals.minutes.items():
        spend = Spend()
        for name, part in per_agent.items():
            if agent is None or name == agent:
                spend.add(part.tokens, part.cost_nano)
        if spend.tokens or spend.cost_nano:
            result[minute] = spend
    return result
