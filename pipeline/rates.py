"""Burn rates, projections and ccusage's 5-hour blocks, from per-minute usage. Pure Python.

A burn rate is the usage of the last BURN_WINDOW_MINUTES divided by the minutes from
the first active one in that window to the current one, and by BURN_MIN_MINUTES at
least: an agent that started twenty minutes ago burns at its twenty-minute pace, not a
third of it, and one burst is not taken for a pace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline.totals import NANO, Spend

BURN_WINDOW_MINUTES = 60
BURN_MIN_MINUTES = 15
BLOCK_HOURS = 5  # ccusage's session block: Claude's 5-hour usage window


@dataclass(frozen=True)
class Burn:
    """Usage per minute over the recent window."""

    tokens_per_minute: float
    cost_per_minute: float  # USD

    @property
    def cost_per_hour(self) -> float:
        """USD per hour at this rate."""
        return self.cost_per_minute * 60

    def projected(self, used: float, metric: str, until: datetime, now: datetime) -> float:
        """`used` plus this rate of `metric` (tokens or cost) until `until`."""
        minutes = max(0.0, (until - now).total_seconds() / 60)
        rate = self.tokens_per_minute if metric == "tokens" else self.cost_per_minute
        return used + rate * minutes

    def time_left(self, used: float, limit: float, metric: str) -> timedelta | None:
        """How long until `limit` is reached at this rate: zero past it, None at no rate."""
        if used >= limit:
            return timedelta(0)
        rate = self.tokens_per_minute if metric == "tokens" else self.cost_per_minute
        return timedelta(minutes=(limit - used) / rate) if rate > 0 else None


def burn_rate(minutes: Mapping[int, Spend], now: datetime) -> Burn:
    """The burn rate as of `now`, from usage per epoch minute."""
    current = int(now.timestamp() // 60)
    recent = [m for m in minutes if current - BURN_WINDOW_MINUTES < m <= current]
    if not recent:
        return Burn(0.0, 0.0)
    elapsed = max(BURN_MIN_MINUTES, current - min(recent) + 1)  # the current one included
    tokens = sum(minutes[m].tokens for m in recent)
    cost = sum(minutes[m].cost_nano for m in recent) / NANO
    return Burn(tokens / elapsed, cost / elapsed)


@dataclass(frozen=True)
class Block:
    """A 5-hour block: when it started and ends, what it used, and where it is heading."""

    start: datetime
    end: datetime
    tokens: int
    cost_usd: float
    active: bool
    projected_tokens: int
    projected_cost_usd: float

    def as_dict(self) -> dict[str, object]:
        """JSON-ready fields, times in RFC 3339."""
        return {"start": _iso(self.start), "end": _iso(self.end), "tokens": self.tokens,
                "cost_usd": round(self.cost_usd, 6), "active": self.active,
                "projected_tokens": self.projected_tokens,
                "projected_cost_usd": round(self.projected_cost_usd, 6)}


def current_block(minutes: Mapping[int, Spend], now: datetime) -> Block | None:
    """The latest 5-hour block as ccusage draws them, None without usage.

    A block starts at the hour of its first entry and lasts BLOCK_HOURS; an entry after
    the block's end, or after a gap of BLOCK_HOURS, starts a new one. The projection
    continues the block's rate (usage over the time from its first to last entry) to
    its end.
    """
    span = timedelta(hours=BLOCK_HOURS)
    start: datetime | None = None
    first = last = None
    entries: list[tuple[datetime, Spend]] = []
    for minute in sorted(minutes):
        at = datetime.fromtimestamp(minute * 60, UTC)
        if start is None or at - start >= span or (last is not None and at - last >= span):
            start, first, entries = at.replace(minute=0), at, []
        entries.append((at, minutes[minute]))
        last = at
    if start is None or first is None or last is None:
        return None
    end = start + span
    tokens = sum(spend.tokens for _, spend in entries)
    cost = sum(spend.cost_nano for _, spend in entries) / NANO
    active = now < end and now - last < span
    duration = max(1.0, (last - first).total_seconds() / 60 + 1)
    remaining = max(0.0, (end - now).total_seconds() / 60) if active else 0.0
    return Block(start, end, tokens, cost, active,
                 round(tokens + tokens / duration * remaining),
                 cost + cost / duration * remaining)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
