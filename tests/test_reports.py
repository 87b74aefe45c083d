"""pipeline.reports: each counting rule of DESIGN.md on small frames, as the reports, the daily
summary, the usage windows and the context summary show it."""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
import pytest
from conftest import compiled, counted, events, none, snapshot, usage

from pipeline.counting import context_estimates, with_local_date
from pipeline.dedupe import dedupe
from pipeline.query import REPORT_COLUMNS, ReportQuery
from pipeline.reports import (
    DailySummary,
    cell_keys,
    context_summary,
    daily_totals,
    summarize,
    unpriced_models,
    usage_windows,
)


def report(usage_rows: pl.LazyFrame | None = None, progress: pl.LazyFrame | None = None,
           query: ReportQuery | None = None) -> list[dict[str, Any]]:
    """The report rows the CLI would print, as dicts."""
    query = query or ReportQuery()
    cells = counted(usage_rows if usage_rows is not None else none("agent_token_usage"),
                    progress if progress is not None else none("task_progress"),
                    cell_keys(query.by), query)
    return summarize(cells, query.by).collect().to_dicts()


# ---------------------------------------------------------------- agent_token_usage deltas


def test_usage_rows_are_summed() -> None:
    rows = report(events("agent_token_usage",
                         usage(input_tokens=5000, output_tokens=1200, cache_read_tokens=3000,
                               cache_write_tokens=800),
                         usage(input_tokens=1, output_tokens=2)))
    assert rows == [{
        "agent": "claude", "day": "2025-08-29", "events": 2, "input_tokens": 5001,
        "output_tokens": 1202, "cache_read_tokens": 3000, "cache_write_tokens": 800,
        "other_tokens": 0, "total_tokens": 10003,
        "cost_usd": pytest.approx((5001 * 3 + 1202 * 15 + 3000 * 0.3 + 800 * 3.75) / 1e6),
        "unpriced_events": 0,
    }]
    assert tuple(rows[0])[2:] == REPORT_COLUMNS


def test_missing_buckets_count_as_zero() -> None:
    rows = report(events("agent_token_usage", {"model": "gpt-5", "output_tokens": 7}))
    assert rows[0]["input_tokens"] == 0 and rows[0]["total_tokens"] == 7


def test_duplicate_event_ids_count_once_keeping_the_largest() -> None:
    frame = events("agent_token_usage", usage(event_id="dup", input_tokens=10),
                   usage(event_id="dup", input_tokens=2400), usage(event_id="other"))
    rows = report(dedupe(frame, "agent_token_usage"))
    assert rows[0]["events"] == 2
    assert rows[0]["input_tokens"] == 2400 + 100


# ---------------------------------------------------------------- task_progress snapshots


def test_snapshot_increments_count_on_the_day_of_the_later_snapshot() -> None:
    # gemini GM-004 in sample_logs: 950 on 08-28, 2,500 on 08-29.
    rows = report(progress=events("task_progress",
                                  snapshot("2025-08-28T17:30:00Z", total=950),
                                  snapshot("2025-08-29T13:00:00Z", total=2500)))
    assert [(r["day"], r["total_tokens"], r["events"]) for r in rows] == [
        ("2025-08-28", 950, 1), ("2025-08-29", 1550, 1)]


def test_snapshots_count_only_for_tasks_without_usage_rows() -> None:
    usage_rows = events("agent_token_usage", usage(task="CL-101", input_tokens=9000,
                                                   output_tokens=0))
    progress = events("task_progress",
                      # echoes the usage rows: must not count a second time
                      snapshot("2025-08-29T13:00:00Z", task="CL-101", total=9000),
                      snapshot("2025-08-29T13:00:00Z", task="CL-102", total=5000),
                      # the same task name under another agent is another pair
                      {**snapshot("2025-08-29T13:00:00Z", task="CL-101", total=10),
                       "agent": "gemini"})
    rows = report(usage_rows, progress, ReportQuery(by=("agent", "task")))
    assert [(r["agent"], r["task"], r["total_tokens"]) for r in rows] == [
        ("claude", "CL-101", 9000), ("claude", "CL-102", 5000), ("gemini", "CL-101", 10)]


def test_usage_rows_on_another_day_still_take_precedence() -> None:
    usage_rows = events("agent_token_usage", usage(task="T-1", ts="2025-08-01T00:00:00Z"))
    progress = events("task_progress", snapshot("2025-08-29T13:00:00Z", total=5000))
    query = ReportQuery(since=date(2025, 8, 29))
    assert report(usage_rows, progress, query) == []


# ---------------------------------------------------------------- days, time zones, filters


def test_time_zone_moves_day_boundaries() -> None:
    late = events("agent_token_usage", usage(ts="2025-08-28T23:30:00Z"))
    assert report(late)[0]["day"] == "2025-08-28"
    assert report(late, query=ReportQuery(tz="Asia/Tokyo"))[0]["day"] == "2025-08-29"
    assert report(late, query=ReportQuery(tz="America/New_York"))[0]["day"] == "2025-08-28"


def test_since_and_until_are_inclusive_days_in_the_time_zone() -> None:
    frame = events("agent_token_usage", usage(ts="2025-08-28T23:30:00Z"),
                   usage(ts="2025-08-29T12:00:00Z"), usage(ts="2025-08-30T16:00:00Z"))
    utc = report(frame, query=ReportQuery(since=date(2025, 8, 29), until=date(2025, 8, 29)))
    assert [r["events"] for r in utc] == [1]
    tokyo = report(frame, query=ReportQuery(since=date(2025, 8, 29), until=date(2025, 8, 29),
                                            tz="Asia/Tokyo"))
    assert [r["events"] for r in tokyo] == [2]


def test_week_and_month_keys() -> None:
    frame = events("agent_token_usage", usage(ts="2025-08-31T12:00:00Z"),
                   usage(ts="2025-09-01T12:00:00Z"), usage(ts="2024-12-30T12:00:00Z"))
    weeks = report(frame, query=ReportQuery(by=("week",)))
    assert [(r["week"], r["events"]) for r in weeks] == [
        ("2025-W01", 1), ("2025-W35", 1), ("2025-W36", 1)]
    months = report(frame, query=ReportQuery(by=("month", "agent")))
    assert [r["month"] for r in months] == ["2024-12", "2025-08", "2025-09"]


def test_role_and_phase_with_numeric_phases_first() -> None:
    frame = events("agent_token_usage", usage(role="dev", phase=10), usage(role="dev", phase=2),
                   usage(role="dev", phase="planning"), usage(role="qa", phase=1),
                   usage(role="dev"))
    rows = report(frame, query=ReportQuery(by=("role", "phase")))
    assert [(r["role"], r["phase"]) for r in rows] == [
        ("dev", "2"), ("dev", "10"), ("dev", "planning"), ("dev", None), ("qa", "1")]


def test_every_group_key() -> None:
    frame = events("agent_token_usage", usage(session_id="s1", task="T", role="dev", phase=1))
    keys = ("agent", "role", "phase", "day", "week", "month", "model", "task", "session")
    row = report(frame, query=ReportQuery(by=keys))[0]
    assert [row[k] for k in keys] == ["claude", "dev", "1", "2025-08-29", "2025-W35", "2025-08",
                                      "claude-sonnet-4-5", "T", "s1"]


def test_filters_by_agent_role_phase_and_model() -> None:
    frame = events("agent_token_usage",
                   usage(role="dev", phase=1, model="claude-sonnet-4-5-20250929"),
                   usage(role="qa", phase=1), {**usage(role="dev", phase=2), "agent": "codex"})
    by_agent = ReportQuery(by=("agent",))
    assert len(report(frame, query=ReportQuery(by=("agent",), agents=("codex",)))) == 1
    assert report(frame, query=ReportQuery(by=("role",), roles=("qa",)))[0]["role"] == "qa"
    assert report(frame, query=ReportQuery(by=("phase",), phases=("2",)))[0]["phase"] == "2"
    matched = report(frame, query=ReportQuery(by=("model",), models=("claude-sonnet-4-5",)))
    assert sum(r["events"] for r in matched) == 3
    exact = report(frame, query=ReportQuery(by=("model",),
                                            models=("claude-sonnet-4-5-20250929",)))
    assert [r["events"] for r in exact] == [1]
    assert len(report(frame, query=by_agent)) == 2


# ---------------------------------------------------------------- cost


def test_unpriced_models_get_null_cost_and_are_counted() -> None:
    frame = events("agent_token_usage", usage(model="local-llama-3-8b"), usage(model=None))
    rows = report(frame)
    assert rows[0]["cost_usd"] is None and rows[0]["unpriced_events"] == 2
    cells = counted(frame, none("task_progress"), ["agent"])
    assert unpriced_models(cells).collect()["model"].to_list() == [
        "(no model)", "local-llama-3-8b"]


def test_a_group_with_some_priced_rows_costs_what_is_priced() -> None:
    frame = events("agent_token_usage", usage(model="local-llama-3-8b"),
                   usage(model="gpt-5", input_tokens=1_000_000, output_tokens=0))
    row = report(frame)[0]
    assert row["cost_usd"] == pytest.approx(1.25) and row["unpriced_events"] == 1


def test_cost_modes() -> None:
    frame = events("agent_token_usage", usage(model="gpt-5", cost_usd=0.5,
                                              input_tokens=1_000_000, output_tokens=0),
                   usage(model="local-llama-3-8b", cost_usd=0.25))
    auto = report(frame, query=ReportQuery(cost_mode="auto"))[0]
    assert auto["cost_usd"] == pytest.approx(0.75) and auto["unpriced_events"] == 0
    calc = report(frame, query=ReportQuery(cost_mode="calculate"))[0]
    assert calc["cost_usd"] == pytest.approx(1.25) and calc["unpriced_events"] == 1


def test_one_hour_cache_writes_in_a_report() -> None:
    frame = events("agent_token_usage", usage(input_tokens=0, output_tokens=0,
                                              cache_write_tokens=1000,
                                              cache_write_1h_tokens=400))
    row = report(frame)[0]
    assert row["cache_write_tokens"] == 1000 and row["total_tokens"] == 1000
    assert row["cost_usd"] == pytest.approx((600 * 3.75 + 400 * 6.0) / 1e6)


def test_snapshot_increments_are_priced_by_their_model() -> None:
    progress = events("task_progress", snapshot("2025-08-29T13:00:00Z", prompt=2000,
                                                completion=3000, total=5000, model="gpt-4"))
    assert report(progress=progress)[0]["cost_usd"] == pytest.approx(
        (2000 * 30 + 3000 * 60) / 1e6)


# ---------------------------------------------------------------- daily summary, usage


def test_daily_summary_tasks_and_completions() -> None:
    usage_rows = events("agent_token_usage", usage(task="A", input_tokens=3000, output_tokens=0),
                        usage(task="B", input_tokens=1000, output_tokens=0))
    progress = events(
        "task_progress",
        {"task": "A", "status": "completed", "ts": "2025-08-29T10:00:00Z"},
        {"task": "B", "status": "completed", "ts": "2025-08-29T10:00:00Z"},
        {"task": "B", "status": "in_progress", "ts": "2025-08-29T11:00:00Z"},  # reopened
        {"task": "C", "status": "completed", "ts": "2025-08-28T10:00:00Z"},  # another day
        {"task": "D", "status": "started", "ts": "2025-08-29T09:00:00Z"},
    )
    per_agent = daily_totals(counted(usage_rows, progress, ["agent", "_date", "task"]),
                             with_local_date(progress, "UTC"), date(2025, 8, 29)).collect()
    summary = DailySummary(day=date(2025, 8, 29), agents=per_agent)
    shape = summary.seed_shape()
    assert shape["date"] == "2025-08-29"
    claude = shape["agents"]["claude"]
    assert (claude["tasks"], claude["tasks_completed"], claude["tokens"]) == (3, 1, 4000)
    assert claude["cost"] == "$0.01"
    assert shape["total"] == {"tasks_completed": 1, "tokens_used": 4000, "cost": "$0.01",
                              "avg_tokens_per_task": 4000, "unpriced_events": 0}


def test_daily_summary_without_completions_has_no_average() -> None:
    usage_rows = events("agent_token_usage", usage(model="local-llama-3-8b"))
    progress = none("task_progress")
    per_agent = daily_totals(counted(usage_rows, progress, ["agent", "_date", "task"]),
                             with_local_date(progress, "UTC"), date(2025, 8, 29)).collect()
    total = DailySummary(day=date(2025, 8, 29), agents=per_agent).seed_shape()["total"]
    assert total["avg_tokens_per_task"] is None and total["cost"] is None


def test_usage_windows_today_week_and_all_time() -> None:
    frame = events("agent_token_usage",
                   usage(ts="2025-08-29T12:00:00Z", input_tokens=1, output_tokens=0),
                   usage(ts="2025-08-25T12:00:00Z", input_tokens=10, output_tokens=0),  # Monday
                   usage(ts="2025-08-24T12:00:00Z", input_tokens=100, output_tokens=0),
                   {**usage(model="local-llama-3-8b"), "agent": "cursor"})
    cells = counted(frame, none("task_progress"), ["agent", "_date"])
    rows = usage_windows(cells, date(2025, 8, 29)).collect()
    claude, cursor = rows.to_dicts()
    assert (claude["today_tokens"], claude["week_tokens"], claude["total_tokens"]) == (
        1, 11, 111)
    assert claude["today_cost_usd"] == pytest.approx(3 / 1e6)
    assert cursor["today_cost_usd"] is None and cursor["unpriced_events"] == 1


# ---------------------------------------------------------------- context cache estimates


def test_context_summary_per_role() -> None:
    frame = events("context_compiled",
                   compiled("h1", "2025-08-29T10:00:00Z"), compiled("h1", "2025-08-29T10:01:00Z"),
                   compiled("h1", "2025-08-29T10:02:00Z"), compiled("x", "2025-08-29T10:03:00Z",
                                                                   role=None))
    rows = context_summary(context_estimates(frame)).collect().to_dicts()
    assert rows[0] == {"role": "claude", "compilations": 1, "input_tokens_estimate": 1200,
                       "cache_read_tokens_estimate": 0, "cache_write_tokens_estimate": 1000,
                       "cache_hits": 0, "cache_hit_ratio": 0.0}
    assert rows[1]["role"] == "dev" and rows[1]["cache_hits"] == 2
    assert rows[1]["cache_hit_ratio"] == pytest.approx(2 / 3)
