"""pipeline.counting: what each event contributes to the token totals, on small frames."""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
from conftest import compiled, events, snapshot, usage
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.counting import (
    ENVELOPE,
    context_estimates,
    nano_usd,
    snapshot_increments,
    usage_rows,
    with_local_date,
)
from pipeline.query import trim


def increments(*rows: dict[str, Any]) -> list[dict[str, Any]]:
    frame = snapshot_increments(events("task_progress", *rows)).collect()
    return frame.select("ts", "input_tokens", "output_tokens", "other_tokens").with_columns(
        pl.col("ts").dt.strftime("%m-%d %H:%M")).to_dicts()


# ---------------------------------------------------------------- agent_token_usage deltas


def test_usage_rows_fill_missing_buckets_but_keep_a_missing_cost_null() -> None:
    # A null cost_usd is "price it from the table"; 0 would be a producer saying "free".
    rows = usage_rows(events("agent_token_usage", {"model": "gpt-5", "output_tokens": 7},
                             usage(cache_write_tokens=40, cache_write_1h_tokens=10,
                                   cost_usd=0.25))).collect()
    assert rows.columns == [*ENVELOPE, "input_tokens", "output_tokens", "cache_read_tokens",
                            "cache_write_tokens", "other_tokens", "cache_write_1h_tokens",
                            "cost_usd"]
    assert rows.drop(ENVELOPE).rows() == [(0, 7, 0, 0, 0, 0, None), (100, 10, 0, 40, 0, 10, 0.25)]


def test_trimmed_envelope_columns_come_back_as_nulls() -> None:
    full = {"role": "dev", "phase": 1, "session_id": "s1", "task": "T"}
    for rows in (usage_rows(trim(events("agent_token_usage", usage(**full)), ["role"])),
                 snapshot_increments(trim(events("task_progress", {
                     **snapshot("2025-08-29T12:00:00Z", task="T", total=5), **full}),
                     ["role"]))):
        row = rows.collect().select(*ENVELOPE[1:6], "project").row(0)
        assert row == ("claude", "dev", None, None, "T", None)


# ---------------------------------------------------------------- task_progress snapshots


def test_increments_between_snapshots_go_to_the_later_day() -> None:
    # gemini GM-004 in sample_logs: 0 and 950 on 08-28, 2,500 on 08-29.
    found = increments(
        snapshot("2025-08-28T14:00:00Z", prompt=0, completion=0, total=0),
        snapshot("2025-08-28T17:30:00Z", prompt=400, completion=550, total=950),
        snapshot("2025-08-29T13:00:00Z", prompt=1000, completion=1500, total=2500),
    )
    assert found == [
        {"ts": "08-28 17:30", "input_tokens": 400, "output_tokens": 550, "other_tokens": 0},
        {"ts": "08-29 13:00", "input_tokens": 600, "output_tokens": 950, "other_tokens": 0},
    ]


def test_snapshots_are_ordered_by_ts_not_by_arrival() -> None:
    found = increments(snapshot("2025-08-29T13:00:00Z", total=5000),
                       snapshot("2025-08-29T12:00:00Z", total=2200))
    assert [(r["ts"], r["other_tokens"]) for r in found] == [
        ("08-29 12:00", 2200), ("08-29 13:00", 2800)]


def test_first_snapshot_counts_from_zero() -> None:
    found = increments(snapshot("2025-08-29T13:00:00Z", prompt=2000, completion=3000,
                                total=5000))
    assert found == [{"ts": "08-29 13:00", "input_tokens": 2000, "output_tokens": 3000,
                      "other_tokens": 0}]


def test_total_beyond_prompt_and_completion_is_other() -> None:
    # codex RAG_MIGRATION: named counters and a total, no prompt or completion.
    found = increments(snapshot("2025-08-29T13:00:00Z", embedding_generation=15000,
                                code_completion=3000, total=18000))
    assert found[0]["other_tokens"] == 18000 and found[0]["input_tokens"] == 0


def test_without_total_the_named_counters_add_up() -> None:
    found = increments(
        snapshot("2025-08-29T12:00:00Z", prompt=100, completion=50, embedding_generation=1000),
        snapshot("2025-08-29T13:00:00Z", prompt=300, completion=50, embedding_generation=1500,
                 code_completion=20),
    )
    assert [(r["input_tokens"], r["output_tokens"], r["other_tokens"]) for r in found] == [
        (100, 50, 1000), (200, 0, 520)]


def test_a_counter_reset_counts_the_new_value() -> None:
    found = increments(snapshot("2025-08-29T10:00:00Z", prompt=4000, total=5000),
                       snapshot("2025-08-29T11:00:00Z", prompt=600, total=1000),
                       snapshot("2025-08-29T12:00:00Z", prompt=900, total=1500))
    assert [(r["input_tokens"], r["other_tokens"]) for r in found] == [
        (4000, 1000), (600, 400), (300, 200)]


def test_status_only_and_unchanged_snapshots_are_not_usage() -> None:
    found = increments(snapshot("2025-08-29T10:00:00Z"),  # no tokens_used at all
                       snapshot("2025-08-29T11:00:00Z", total=0),
                       snapshot("2025-08-29T12:00:00Z", total=700),
                       snapshot("2025-08-29T13:00:00Z", total=700))
    assert [r["other_tokens"] for r in found] == [700]


def test_each_agent_and_task_has_its_own_counter() -> None:
    found = snapshot_increments(events(
        "task_progress",
        snapshot("2025-08-29T10:00:00Z", task="A", total=100),
        snapshot("2025-08-29T11:00:00Z", task="B", total=100),
        {**snapshot("2025-08-29T12:00:00Z", task="A", total=150), "agent": "gemini"},
        snapshot("2025-08-29T13:00:00Z", task="A", total=400),
    )).collect()
    assert found.select("agent", "task", "other_tokens").sort(pl.all()).rows() == [
        ("claude", "A", 100), ("claude", "A", 300), ("claude", "B", 100), ("gemini", "A", 150)]


def test_snapshot_model_comes_from_tokens_used() -> None:
    found = snapshot_increments(events("task_progress", snapshot(
        "2025-08-29T13:00:00Z", prompt=1000, completion=0, model="gpt-4"))).collect()
    assert found["model"].to_list() == ["gpt-4"]


# Interleaved (agent, task) pairs, a counter reset, and two snapshots with the same ts (the
# later line of the file counts after the earlier one).
SHUFFLED = events(
    "task_progress",
    snapshot("2025-08-29T12:00:00Z", task="A", prompt=300, total=400),
    {**snapshot("2025-08-29T11:30:00Z", task="A", total=200), "agent": "gemini"},
    snapshot("2025-08-29T09:00:00Z", task="B", total=10),
    snapshot("2025-08-29T11:00:00Z", task="A", prompt=50, total=60),  # reset
    snapshot("2025-08-29T09:00:00Z", task="B", total=30),
    {**snapshot("2025-08-29T10:30:00Z", task="A", total=90), "agent": "gemini"},
    snapshot("2025-08-29T10:00:00Z", task="A", prompt=100, total=150),
).collect()


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(SHUFFLED.height)))
def test_increments_do_not_depend_on_the_order_rows_arrive_in(order: list[int]) -> None:
    found = snapshot_increments(SHUFFLED[order].lazy()).collect()
    assert sorted(found.select("agent", "task", "input_tokens", "other_tokens").rows()) == [
        ("claude", "A", 50, 10), ("claude", "A", 100, 50), ("claude", "A", 250, 90),
        ("claude", "B", 0, 10), ("claude", "B", 0, 20), ("gemini", "A", 0, 90),
        ("gemini", "A", 0, 110)]


# ---------------------------------------------------------------- local days, nano-dollars


def test_local_dates_in_quarter_and_half_hour_zones() -> None:
    frame = events("agent_token_usage", usage(ts="2025-08-28T18:14:59Z"),
                   usage(ts="2025-08-29T00:00:00+05:45"),  # 18:15 UTC: midnight in Kathmandu
                   usage(ts="2025-08-29T02:29:59Z"), usage(ts="2025-08-29T02:30:00Z"))

    def days(tz: str) -> list[int]:
        return [d.day for d in with_local_date(frame, tz).collect()["_date"]]

    assert days("UTC") == [28, 28, 29, 29]
    assert days("Asia/Kathmandu") == [28, 29, 29, 29]  # +05:45
    assert days("America/St_Johns") == [28, 28, 28, 29]  # -02:30 in August
    assert with_local_date(frame, "UTC").collect()["_date"][0] == date(2025, 8, 28)


def test_nano_usd_rounds_to_the_nearest_nano_dollar() -> None:
    frame = pl.DataFrame({"usd": [2.9e-9, 0.1 + 0.2, 4e-10, None]}, schema={"usd": pl.Float64})
    assert frame.select(nano_usd(pl.col("usd")))["usd"].to_list() == [
        3, 300_000_000, 0, None]


# ---------------------------------------------------------------- context cache estimates


def test_context_cache_reads_and_writes_are_derived_per_role_and_session() -> None:
    frame = events("context_compiled",
                   compiled("h1", "2025-08-29T10:00:00Z"),
                   compiled("h1", "2025-08-29T10:01:00Z"),  # same prefix: read
                   compiled("h1", "2025-08-29T10:02:00Z", role="qa"),  # qa's first: write
                   compiled("h1", "2025-08-29T10:03:00Z", session="s2"),  # new session: write
                   compiled("h2", "2025-08-29T10:04:00Z"),  # plan changed: write
                   compiled("h2", "2025-08-29T10:05:00Z"))  # read
    found = context_estimates(frame).collect()
    assert found.select("role", "cache_read_tokens_estimate",
                        "cache_write_tokens_estimate").rows() == [
        ("dev", 0, 1000), ("dev", 1000, 0), ("qa", 0, 1000), ("dev", 0, 1000),
        ("dev", 0, 1000), ("dev", 1000, 0)]
    assert found["input_tokens_estimate"].to_list() == [1200] * 6


def test_explicit_estimates_win_and_input_estimate_scales_the_prefix() -> None:
    frame = events("context_compiled",
                   compiled("h1", "2025-08-29T10:00:00Z", cache_read_tokens_estimate=7),
                   compiled("h1", "2025-08-29T10:01:00Z", input_tokens_estimate=600))
    found = context_estimates(frame).collect()
    assert found.select("cache_read_tokens_estimate", "cache_write_tokens_estimate",
                        "input_tokens_estimate", "estimated").rows() == [
        (7, 0, 1200, False), (500, 0, 600, True)]


def test_compilations_without_a_role_are_keyed_by_their_agent() -> None:
    frame = events("context_compiled",
                   compiled("h1", "2025-08-29T10:00:00Z", role=None),
                   {**compiled("h1", "2025-08-29T10:01:00Z", role=None), "agent": "codex"},
                   compiled("h1", "2025-08-29T10:02:00Z", role=None))
    found = context_estimates(frame).collect()
    assert found.select("role", "cache_read_tokens_estimate",
                        "cache_write_tokens_estimate").rows() == [
        ("claude", 0, 1000), ("codex", 0, 1000), ("claude", 1000, 0)]


def test_an_empty_compilation_with_an_input_estimate_has_no_prefix() -> None:
    frame = events("context_compiled", compiled("h1", "2025-08-29T10:00:00Z", prefix_bytes=0,
                                                volatile_bytes=0, input_tokens_estimate=50))
    found = context_estimates(frame).collect()
    assert found.select("input_tokens_estimate", "cache_read_tokens_estimate",
                        "cache_write_tokens_estimate").rows() == [(50, 0, 0)]
