"""Burn rates, projections and 5-hour blocks (pipeline.rates)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.rates import BURN_MIN_MINUTES, Burn, burn_rate, current_block
from pipeline.totals import Spend

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def minute(at: datetime) -> int:
    return int(at.timestamp() // 60)


def usage(*entries: tuple[datetime, int, float]) -> dict[int, Spend]:
    found: dict[int, Spend] = {}
    for at, tokens, usd in entries:
        found.setdefault(minute(at), Spend()).add(tokens, round(usd * 1e9))
    return found


def test_the_burn_rate_runs_from_the_first_active_minute_in_the_window() -> None:
    """Twenty minutes of work at 1,000 tokens a minute burn 1,000/min, not a third of it."""
    minutes = usage(*((NOW - timedelta(minutes=n), 1000, 0.01) for n in range(20)))
    burn = burn_rate(minutes, NOW)
    assert burn.tokens_per_minute == 1000
    assert abs(burn.cost_per_hour - 0.6) < 1e-9


def test_one_burst_is_spread_over_the_shortest_span() -> None:
    """A single request of 15,000 tokens is not a pace of 15,000 a minute."""
    burn = burn_rate(usage((NOW, 15_000, 0.0)), NOW)
    assert burn.tokens_per_minute == 15_000 / BURN_MIN_MINUTES


def test_usage_older_than_the_window_does_not_burn() -> None:
    assert burn_rate(usage((NOW - timedelta(hours=2), 10**6, 1.0)), NOW) == Burn(0.0, 0.0)


def test_projection_and_time_left() -> None:
    burn = Burn(tokens_per_minute=100.0, cost_per_minute=0.5)
    end = NOW + timedelta(hours=1)
    assert burn.projected(1000, "tokens", end, NOW) == 7000
    assert burn.projected(2.0, "cost", end, NOW) == 32.0
    assert burn.time_left(1000, 2000, "tokens") == timedelta(minutes=10)
    assert burn.time_left(3000, 2000, "tokens") == timedelta(0)
    assert Burn(0.0, 0.0).time_left(1, 2, "tokens") is None


def test_a_block_starts_at_the_hour_of_its_first_entry_and_lasts_five_hours() -> None:
    first = NOW - timedelta(hours=2, minutes=20)  # 09:40
    block = current_block(usage((first, 100, 0.1), (NOW - timedelta(minutes=1), 300, 0.3)),
                          NOW)
    assert block is not None
    assert block.start == datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    assert block.end == datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
    assert (block.tokens, round(block.cost_usd, 6), block.active) == (400, 0.4, True)
    assert block.projected_tokens > 400


def test_a_gap_of_five_hours_starts_a_new_block() -> None:
    minutes = usage((NOW - timedelta(hours=9), 5000, 1.0), (NOW - timedelta(minutes=30), 10, 0))
    block = current_block(minutes, NOW)
    assert block is not None and block.tokens == 10
    assert block.start == datetime(2026, 12, 2, 11, 0, tzinfo=UTC)


def test_a_block_past_its_end_is_not_active_and_projects_nothing_more() -> None:
    block = current_block(usage((NOW - timedelta(hours=7), 50, 0.05)), NOW)
    assert block is not None and not block.active
    assert block.projected_tokens == 50


def test_no_usage_no_block() -> None:
    assert current_block({}, NOW) is None
