"""pipeline.query: what a query selects and how counted rows become priced cost cells."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest
from conftest import events, usage

from pipeline.counting import usage_rows, with_local_date
from pipeline.errors import UnknownTimeZone, UsageError
from pipeline.pricing import shipped_pricing
from pipeline.query import (
    ReportQuery,
    check_query,
    check_timezone,
    cost_cells,
    increment_cells,
    needed_envelope,
    parse_by,
    selection,
    tracked_pairs,
    trim,
    untracked_pairs,
    usage_cells,
)

# ---------------------------------------------------------------- checking a query


def test_parse_by() -> None:
    assert parse_by("role, phase,role") == ("role", "phase")
    with pytest.raises(UsageError, match="cannot group by colour"):
        parse_by("agent,colour")
    with pytest.raises(UsageError):
        parse_by(" , ")


def test_bad_time_zone_and_ranges_are_usage_errors() -> None:
    assert check_timezone("Asia/Tokyo") == "Asia/Tokyo"
    with pytest.raises(UnknownTimeZone, match="Mars/Olympus"):
        check_timezone("Mars/Olympus")
    with pytest.raises(UsageError, match="after"):
        check_query(ReportQuery(since=date(2025, 9, 1), until=date(2025, 8, 1)))
    with pytest.raises(UsageError, match="cost mode"):
        check_query(ReportQuery(cost_mode="guess"))


def test_an_offset_is_not_a_time_zone_name() -> None:
    assert check_timezone("Asia/Kathmandu") == "Asia/Kathmandu"
    with pytest.raises(UnknownTimeZone, match=r"\+05:45"):
        check_timezone("+05:45")
    with pytest.raises(UnknownTimeZone):
        check_query(ReportQuery(tz="+05:45"))
    one_day = ReportQuery(since=date(2025, 8, 29), until=date(2025, 8, 29), tz="Asia/Kathmandu")
    assert check_query(one_day) is one_day


# ---------------------------------------------------------------- rows read and selected


def test_trim_drops_only_the_optional_envelope_columns_left_out() -> None:
    frame = events("agent_token_usage", usage(role="dev", phase=1, session_id="s1"))
    columns = set(frame.collect_schema().names())
    assert columns - set(trim(frame, ["role"]).collect_schema().names()) == {
        "phase", "session_id", "project", "branch"}
    assert columns - set(trim(frame, ()).collect_schema().names()) == {
        "role", "phase", "session_id", "project", "branch"}
    assert trim(frame, ["role", "phase", "session_id", "project", "branch"]
                ).collect_schema().names() == list(frame.collect_schema().names())


def test_needed_envelope_follows_the_group_keys_and_filters() -> None:
    assert needed_envelope(ReportQuery(by=("agent", "day", "model", "task"))) == set()
    assert needed_envelope(ReportQuery(by=("session", "week"))) == {"session_id"}
    assert needed_envelope(ReportQuery(roles=("dev",), phases=("1",))) == {"role", "phase"}
    assert needed_envelope(ReportQuery(agents=("claude",), models=("gpt-5",))) == set()
    assert needed_envelope(ReportQuery(), ["agent", "_date", "session_id"]) == {"session_id"}


def test_selection_is_false_not_null_for_rows_without_a_role_or_phase() -> None:
    rows = with_local_date(usage_rows(events(
        "agent_token_usage", usage(role="dev", phase=1), usage(),
        {**usage(role="dev", ts="2025-08-30T01:00:00Z"), "agent": "codex"})), "UTC")

    def selected(**query: object) -> list[bool | None]:
        chosen = rows.with_columns(_selected=selection(ReportQuery(**query))).collect()
        return chosen["_selected"].to_list()

    assert selected() == [True, True, True]
    assert selected(roles=("dev",)) == [True, False, True]
    assert selected(phases=("1",)) == [True, False, False]
    assert selected(agents=("codex",), since=date(2025, 8, 30)) == [False, False, True]
    assert selected(roles=("dev",), until=date(2025, 8, 29)) == [True, False, False]


# ---------------------------------------------------------------- cost cells


def test_prompts_above_a_long_context_threshold_are_priced_apart() -> None:
    # gemini-2.5-pro: 1.25/10 per million, 2.5/15 above 200k. The two 150k prompts add up to
    # more than 200k, but each is priced at the base rate.
    rows = with_local_date(usage_rows(events("agent_token_usage", *(
        usage(model="gemini-2.5-pro", input_tokens=n, output_tokens=1_000)
        for n in (150_000, 250_000, 150_000)))), "UTC")
    cells = cost_cells(rows, ["agent"], shipped_pricing(), "auto").collect()
    assert cells.sort("input_tokens").select("events", "input_tokens", "cost_nano_usd").rows() == [
        (1, 250_000, (250_000 * 2.5 + 1_000 * 15) * 1_000),
        (2, 300_000, (300_000 * 1.25 + 2_000 * 10) * 1_000)]


def test_one_hour_writes_are_capped_per_row_before_summing() -> None:
    # Capped after summing, the first row's 500 one-hour writes would all be priced at 6.0.
    rows = with_local_date(usage_rows(events(
        "agent_token_usage",
        usage(input_tokens=0, output_tokens=0, cache_write_tokens=100, cache_write_1h_tokens=500),
        usage(input_tokens=0, output_tokens=0, cache_write_tokens=1_000))), "UTC")
    cells = cost_cells(rows, ["agent"], shipped_pricing(), "calculate").collect()
    assert cells.select("events", "cache_write_tokens", "cost_nano_usd").rows() == [
        (2, 1_100, (100 * 6.0 + 1_000 * 3.75) * 1_000)]


def test_usage_rows_the_query_leaves_out_still_track_their_task() -> None:
    rows = events("agent_token_usage",
                  usage(task="T1", ts="2025-08-01T12:00:00Z"),  # before --since
                  usage(task="T2"),
                  {**usage(task="T1"), "agent": "codex"},  # not --agent
                  usage(task="T9"))  # no snapshots: never tracked
    query = ReportQuery(since=date(2025, 8, 29), agents=("claude",))
    cells = usage_cells(rows, pl.Series(["T1", "T2"]), query, ["agent"], shipped_pricing())
    found = cells.collect().sort("agent", "_task", nulls_last=True)
    assert found.select("agent", "_task", "_in", "events").rows() == [
        ("claude", "T1", False, 1), ("claude", "T2", True, 1), ("claude", None, True, 1),
        ("codex", "T1", False, 1)]
    assert sorted(tracked_pairs(cells).collect().rows()) == [
        ("claude", "T1"), ("claude", "T2"), ("codex", "T1")]


def test_only_the_increments_of_pairs_without_usage_rows_count() -> None:
    increments = pl.LazyFrame({
        "ts": [datetime(2025, 8, 29, 10, tzinfo=UTC)] * 4,
        "agent": ["claude", "claude", "codex", None], "task": ["T1", "T2", "T1", "T1"],
        "role": None, "phase": None, "session_id": None, "model": "gpt-5",
        "input_tokens": [1, 10, 100, 1000], "output_tokens": 0, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "other_tokens": 0, "cache_write_1h_tokens": 0,
        "cost_usd": None}, schema_overrides={"role": pl.String, "phase": pl.String,
                                             "session_id": pl.String, "cost_usd": pl.Float64})
    tracked = pl.LazyFrame({"agent": ["claude", "gemini"], "task": ["T1", "T1"]})
    untracked = untracked_pairs(increments, tracked).collect()
    assert sorted(untracked.rows(), key=str) == [("claude", "T2"), ("codex", "T1"),
                                                 (None, "T1")]
    cells = increment_cells(increments, untracked, ReportQuery(), ["agent"],
                            shipped_pricing()).collect()
    assert sorted(cells.select("agent", "input_tokens").rows(), key=str) == [
        ("claude", 10), ("codex", 100), (None, 1000)]
