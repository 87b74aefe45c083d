"""Running totals (pipeline.totals): counting rows once, snapshots, forgetting old days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pipeline.totals import CountedRow, LiveTotals, Snapshot, Spend, minute_totals

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def row(event_id: str | None, tokens: int, cost: int | None = 0, agent: str = "claude",
        session: str | None = "s1", at: datetime = NOW) -> CountedRow:
    return CountedRow(event_id, at, agent, session, at.date(), tokens, cost)


def test_rows_add_up_per_agent_day_session_and_minute() -> None:
    totals = LiveTotals()
    added = totals.add_rows([row("a", 100, 5), row("b", 50, None),
                             row("c", 7, 1, agent="codex", session=None)])
    assert (added["claude"].tokens, added["claude"].cost_nano, added["claude"].unpriced) == \
        (150, 5, 1)
    assert totals.days["claude", NOW.date()].tokens == 150
    assert totals.sessions["claude", "s1"].tokens == 150
    assert ("codex", "") not in totals.sessions
    assert minute_totals(totals)[int(NOW.timestamp() // 60)].tokens == 157
    assert minute_totals(totals, "codex")[int(NOW.timestamp() // 60)].tokens == 7


def test_a_repeated_event_id_counts_only_its_growth() -> None:
    """DESIGN.md: the copy with the largest total wins; a smaller copy adds nothing."""
    totals = LiveTotals()
    totals.add_rows([row("a", 100, 10)])
    assert totals.add_rows([row("a", 100, 10)]) == {}
    assert totals.add_rows([row("a", 60, 6)]) == {}
    grown = totals.add_rows([row("a", 130, 13)])
    assert (grown["claude"].tokens, grown["claude"].cost_nano) == (30, 3)
    assert totals.days["claude", NOW.date()].tokens == 130


def test_rows_of_days_before_the_kept_ones_are_ignored() -> None:
    """An old log read late changes no current period."""
    totals = LiveTotals(first_day=NOW.date() - timedelta(days=7))
    assert totals.add_rows([row("old", 10**6, at=NOW - timedelta(days=30))]) == {}
    assert totals.days == {}


def test_forget_before_drops_what_no_current_period_needs() -> None:
    totals = LiveTotals()
    totals.add_rows([row("old", 5, at=NOW - timedelta(days=9)), row("new", 7)])
    totals.forget_before(NOW)
    assert list(totals.days) == [("claude", NOW.date())]
    assert all(m >= int(NOW.timestamp() // 60) - 24 * 60 for m in totals.minutes)
    assert totals.first_day == date(2026, 11, 25)
    assert totals.add_rows([row("older", 1, at=NOW - timedelta(days=8))]) == {}


def test_snapshots_count_their_growth_and_a_restart_counts_whole() -> None:
    totals = LiveTotals()
    key = ("asb", "t1")
    assert totals.advance(key, Snapshot(NOW, 100, 10, 0, 110)) == (100, 10, 0)
    assert totals.advance(key, Snapshot(NOW + timedelta(1), 150, 10, 5, 165)) == (50, 0, 5)
    assert totals.advance(key, Snapshot(NOW + timedelta(2), 20, 2, 0, 22)) == (20, 2, 0)
    # An older snapshot arriving late is left to the next seed.
    assert totals.advance(key, Snapshot(NOW, 999, 0, 0, 999)) is None
    assert totals.snapshots[key].total == 22


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 1000)), max_size=60))
def test_totals_equal_the_largest_copy_of_each_event(copies: list[tuple[str, int]]) -> None:
    """Differential: however copies arrive, the total is the sum of each id's largest."""
    totals = LiveTotals()
    for event_id, tokens in copies:
        totals.add_rows([row(event_id, tokens)])
    largest: dict[str, int] = {}
    for event_id, tokens in copies:
        largest[event_id] = max(tokens, largest.get(event_id, 0))
    counted = totals.days.get(("claude", NOW.date()))
    assert (counted.tokens if counted else 0) == sum(largest.values())


def test_set_days_replaces_the_counted_days_and_keeps_earlier_ones() -> None:
    totals = LiveTotals()
    totals.add_rows([row("a", 100), row("b", 5, agent="ghost"),
                     row("c", 9, at=NOW - timedelta(days=3))])
    totals.set_days(NOW.date(), {("claude", NOW.date()): Spend(60, 0)})
    assert {k: s.tokens for k, s in totals.days.items()} == {
        ("claude", NOW.date()): 60, ("claude", (NOW - timedelta(days=3)).date()): 9}
