"""pipeline.progress: the latest state of every (agent, task) and the tokens it used so far."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from conftest import counted, events, none, snapshot, usage

from pipeline.progress import PROGRESS_COLUMNS, fold_progress, progress_view, spent_per_task


def test_progress_folds_the_latest_value_of_each_field() -> None:
    progress = events(
        "task_progress",
        {"task": "GM-004", "ts": "2025-08-28T14:00:00Z", "status": "started", "progress": 0,
         "name": "Dashboard", "remaining": ["a", "b"], "tokens_used": {"total": 0}},
        {"task": "GM-004", "ts": "2025-08-29T13:00:00Z", "status": "in_progress",
         "progress": 60, "remaining": ["b"], "tokens_used": {"total": 2500}},
        {"task": "GM-004", "ts": "2025-08-29T12:00:00Z", "status": "blocked"},  # older
        {"task": "CL-1", "ts": "2025-08-29T12:00:00Z", "status": "completed",
         "deliverables": ["x.js"]},
    )
    cells = counted(none("agent_token_usage"), progress, ["agent", "task"])
    view = progress_view(progress, cells).collect().to_dicts()
    assert [(r["task"], r["status"]) for r in view] == [("CL-1", "completed"),
                                                       ("GM-004", "in_progress")]
    gm = view[1]
    assert (gm["name"], gm["progress"], gm["remaining"], gm["tokens"], gm["snapshots"]) == (
        "Dashboard", 60.0, ["b"], 2500, 3)
    assert view[0]["deliverables"] == ["x.js"] and view[0]["tokens"] == 0
    only = progress_view(progress, cells, statuses=["completed"]).collect()
    assert only["task"].to_list() == ["CL-1"]
    assert progress_view(progress, cells, agents=["gemini"]).collect().height == 0


def test_a_partial_latest_snapshot_keeps_the_earlier_fields() -> None:
    progress = events(
        "task_progress",
        {"task": "T", "ts": "2025-08-29T10:00:00Z", "status": "in_progress", "progress": 40,
         "name": "Lake", "remaining": ["a", "b"], "components_completed": ["x"]},
        {"task": "T", "ts": "2025-08-29T12:00:00Z", "status": "completed"},  # status only
        # older, arriving last; an empty list is a value: nothing remains
        {"task": "T", "ts": "2025-08-29T11:00:00Z", "progress": 90, "remaining": []},
    )
    assert fold_progress(progress).collect().to_dicts() == [{
        "agent": "claude", "task": "T", "name": "Lake", "status": "completed",
        "progress": 90.0, "deliverables": None, "components_completed": ["x"],
        "remaining": [], "last_update": datetime(2025, 8, 29, 12, tzinfo=UTC),
        "snapshots": 3}]


def test_spent_per_task_sums_a_task_over_models_and_leaves_unpriced_cost_null() -> None:
    rows = events("agent_token_usage", usage(task="T"), usage(task="T", model="local-llama"),
                  usage(input_tokens=7),  # no task: not any task's
                  {**usage(task="T", model="local-llama"), "agent": "gemini"})
    spent = spent_per_task(counted(rows, none("task_progress"), ["agent", "task"]))
    found = spent.sort("agent").collect()
    assert found.select("agent", "task", "tokens").rows() == [("claude", "T", 220),
                                                             ("gemini", "T", 110)]
    assert found["cost_usd"].to_list() == [pytest.approx((100 * 3 + 10 * 15) / 1e6), None]


def test_the_agent_filter_keeps_each_task_whole_and_statuses_are_the_latest() -> None:
    progress = events(
        "task_progress",
        snapshot("2025-08-29T10:00:00Z", task="T", total=100),
        {**snapshot("2025-08-29T09:00:00Z", task="T", total=40), "agent": "gemini",
         "status": "completed"},
        {**snapshot("2025-08-29T11:00:00Z", task="T"), "agent": "gemini"},  # reopened
        {**snapshot("2025-08-29T08:00:00Z", task="U", total=5), "agent": "gemini",
         "status": "completed"},
    )
    cells = counted(none("agent_token_usage"), progress, ["agent", "task"])
    everyone = progress_view(progress, cells).collect()
    gemini = progress_view(progress, cells, agents=["gemini"]).collect()
    assert gemini.columns == list(PROGRESS_COLUMNS)
    assert gemini.to_dicts() == everyone.filter(pl.col("agent") == "gemini").to_dicts()
    assert gemini.select("task", "status", "snapshots", "tokens").rows() == [
        ("T", "in_progress", 2, 40), ("U", "completed", 1, 5)]
    # A completion later reopened is no longer completed.
    done = progress_view(progress, cells, statuses=["completed"]).collect()
    assert done.select("agent", "task").rows() == [("gemini", "U")]
    both = progress_view(progress, cells, agents=["claude", "gemini"], statuses=["in_progress"])
    assert both.collect().select("agent", "task", "tokens").rows() == [
        ("claude", "T", 100), ("gemini", "T", 40)]
