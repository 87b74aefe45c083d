"""The reads behind the running totals (pipeline.totals): an exact count of the current
periods from the rollups and the stage, and the counted rows of one committed batch.

Usage is counted as the report's `auto` cost mode counts it: the producer's cost_usd
where given, else the price of the tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from pipeline.cells import tracked_task_pairs
from pipeline.config import Home
from pipeline.counting import BUCKETS, nano_usd, snapshot_totals, usage_rows, with_local_date
from pipeline.lake import open_events, reread_if_vanished
from pipeline.pricing import PriceTable, pricing_for, row_costs
from pipeline.progress import fold_progress
from pipeline.query import ReportQuery
from pipeline.reports import run_report
from pipeline.stage import BatchId, batch_name
from pipeline.totals import (
    NANO,
    SESSION_HOURS,
    CountedRow,
    LiveTotals,
    Snapshot,
    Spend,
    first_kept_day,
)

USAGE, PROGRESS = "agent_token_usage", "task_progress"
TASK_FIELDS = ("name", "status", "progress")
SEEN_SEEDED_MINUTES = 60  # ids of this recent usage are remembered: retries come soon
CLOCK_SKEW = timedelta(minutes=5)  # how far ahead a producer's clock may be and count as now


def counted_usage(usage: pl.LazyFrame, table: PriceTable, tz: str,
                  prices: pl.DataFrame | None = None) -> pl.LazyFrame:
    """Usage events as one counted row each: ids, envelope, local `_date`, `tokens` and
    `cost_nano` (the producer's cost, else computed; null when unpriced). `prices`: the
    `model_prices` of their models, if known."""
    rows = usage_rows(usage, keep=("event_id",))
    return with_local_date(row_costs(rows, table, prices), tz).select(
        "event_id", "ts", "agent", "session_id", "task", "_date",
        tokens=pl.sum_horizontal(*BUCKETS),
        cost_nano=nano_usd(pl.coalesce("cost_usd", "computed_cost_usd")))


def _rows(frame: pl.DataFrame, with_ids: bool = True) -> Iterator[CountedRow]:
    for row in frame.iter_rows(named=True):
        yield CountedRow(row["event_id"] if with_ids else None, row["ts"], row["agent"],
                         row["session_id"], row["_date"], row["tokens"], row["cost_nano"])


# ---------------------------------------------------------------- one batch


def batch_rows(home: Home, batch: BatchId, types: frozenset[str], totals: LiveTotals,
               table: PriceTable) -> list[CountedRow] | None:
    """The counted rows of a committed batch that staged `types`, with task states and
    snapshots folded into `totals`; None when its stage files are gone (compacted
    already: a seed is due)."""
    frames: dict[str, pl.DataFrame | None] = {}
    for event_type in (USAGE, PROGRESS):
        try:
            frames[event_type] = (pl.read_ipc(stage_file(home, event_type, batch))
                                  if event_type in types else None)
        except (OSError, pl.exceptions.PolarsError):
            return None
    rows: list[CountedRow] = []
    usage = frames[USAGE]
    if usage is not None and usage.height:
        prices = table.model_prices(usage["model"].unique().to_list())
        counted = counted_usage(usage.lazy(), table, totals.tz, prices).collect()
        totals.tracked.update((a, t) for a, t in counted.select("agent", "task").iter_rows()
                              if t is not None)
        rows += _rows(counted)
    progress = frames[PROGRESS]
    if progress is not None and progress.height:
        rows += _progress_rows(progress, totals, table)
    return rows


def _progress_rows(progress: pl.DataFrame, totals: LiveTotals,
                   table: PriceTable) -> list[CountedRow]:
    """Fold snapshots into task states and count the increments of untracked pairs."""
    ordered = progress.sort("ts", "_source", "_offset")
    for row in ordered.select("agent", "task", "ts", *TASK_FIELDS).iter_rows(named=True):
        _fold_task(totals, row)
    snapshots = snapshot_totals(ordered.lazy()).collect()
    increments = []
    for row in snapshots.iter_rows(named=True):
        key = (row["agent"], row["task"])
        later = Snapshot(row["ts"], row["input_tokens"], row["output_tokens"],
                         row["other_tokens"], row["_total"])
        grown = totals.advance(key, later)
        if grown and sum(grown) and key not in totals.tracked:
            increments.append({**row, "input_tokens": grown[0], "output_tokens": grown[1],
                               "other_tokens": grown[2]})
    if not increments:
        return []
    frame = pl.DataFrame(increments, schema=snapshots.schema).with_columns(
        cache_read_tokens=pl.lit(0, pl.Int64), cache_write_tokens=pl.lit(0, pl.Int64),
        cache_write_1h_tokens=pl.lit(0, pl.Int64))
    prices = table.model_prices(frame["model"].unique().to_list())
    priced = with_local_date(row_costs(frame.lazy(), table, prices), totals.tz).select(
        pl.lit(None, pl.String).alias("event_id"), "ts", "agent", "session_id", "_date",
        tokens=pl.sum_horizontal(*BUCKETS), cost_nano=nano_usd(pl.col("computed_cost_usd")))
    return list(_rows(priced.collect(), with_ids=False))


def _fold_task(totals: LiveTotals, row: dict[str, Any]) -> None:
    state = totals.tasks.setdefault((row["agent"], row["task"]), {})
    if row["ts"] >= state.get("ts", row["ts"]):
        state["ts"] = row["ts"]
        state.update({k: row[k] for k in TASK_FIELDS if row[k] is not None})


# ---------------------------------------------------------------- the seed


@reread_if_vanished
def seed_totals(home: Home, now: datetime) -> LiveTotals:
    """Exact running totals of the home as of `now`, read from the rollups and from the
    events of the last days only: the kept days per agent, the sessions of the last
    SESSION_HOURS, the last day's minutes, and the tasks of the kept days."""
    tz = home.budgets.tz
    since = first_kept_day(now, tz)
    totals = LiveTotals(tz=tz, first_day=since)
    totals.days.update(exact_days(home, since, tz))
    _seed_sessions(home, totals, now)
    _seed_minutes(home, totals, now)
    _seed_tasks(home, totals, since)
    totals.tracked = {(a, t) for a, t in tracked_task_pairs(home).collect().iter_rows()}
    return totals


@reread_if_vanished
def exact_days(home: Home, since: date, tz: str) -> dict[tuple[str, date], Spend]:
    """What each agent used on each local day from `since` on, as `tally report` counts
    it: from the rollups, plus the stage."""
    report = run_report(home, ReportQuery(by=("agent", "day"), since=since, tz=tz)).rows
    days = {}
    for row in report.iter_rows(named=True):
        days[(row["agent"], date.fromisoformat(row["day"]))] = Spend(
            row["total_tokens"], round((row["cost_usd"] or 0) * NANO), row["unpriced_events"])
    return days


def _seed_sessions(home: Home, totals: LiveTotals, now: datetime) -> None:
    """The sessions of the last SESSION_HOURS (sessions are not in the rollups: their
    days' events are read)."""
    since = (now - timedelta(hours=SESSION_HOURS)).astimezone(ZoneInfo(totals.tz)).date()
    query = ReportQuery(by=("agent", "session"), since=since, tz=totals.tz)
    for row in run_report(home, query).rows.iter_rows(named=True):
        if row["session"] is not None:
            key = (row["agent"], row["session"])
            totals.sessions[key].add(row["total_tokens"], round((row["cost_usd"] or 0) * NANO),
                                     row["unpriced_events"])
            totals.session_last[key] = now


def _seed_minutes(home: Home, totals: LiveTotals, now: datetime) -> None:
    """Minutes of the last day, for burn rates and blocks, and the ids of the last hour.

    Events stamped later than `now` (a producer's clock ahead, generated data) count in
    their days but in no minute: a burn rate is of what has happened.
    """
    start, end = now - timedelta(days=1), now + CLOCK_SKEW
    events = open_events(home, USAGE).all(pl.col("date") >= start.date())
    if events is None:
        return
    window = events.filter(pl.col("ts").is_between(start, end))
    rows = (counted_usage(window, pricing_for(home), totals.tz)
            .select("event_id", "ts", "agent", "tokens", "cost_nano").collect())
    recent = now - timedelta(minutes=SEEN_SEEDED_MINUTES)
    for event_id, ts, agent, tokens, cost in rows.iter_rows():
        minute = totals.minutes.setdefault(int(ts.timestamp() // 60), {})
        minute.setdefault(agent, Spend()).add(tokens, cost or 0)
        if ts >= recent:
            totals.seen[event_id] = (tokens, cost or 0)
    totals.seeded_ids = len(totals.seen)


def _seed_tasks(home: Home, totals: LiveTotals, since: date) -> None:
    """Task states and each task's latest snapshot, from the snapshots of the kept days.

    A task silent for longer counts its next snapshot from zero in the running totals;
    an alert is raised only on an exact count (pipeline.monitor), never on that.
    """
    recent = open_events(home, PROGRESS).all(pl.col("date") >= since - timedelta(days=1))
    if recent is None:
        return
    recent = recent.filter(pl.col("ts").dt.date() >= since)
    latest, folded = pl.collect_all([
        snapshot_totals(recent).sort("ts", "_source", "_offset").group_by("agent", "task")
        .agg(pl.col("ts", "input_tokens", "output_tokens", "other_tokens", "_total").last()),
        fold_progress(recent)])
    for row in latest.iter_rows(named=True):
        totals.snapshots[(row["agent"], row["task"])] = Snapshot(
            row["ts"], row["input_tokens"], row["output_tokens"], row["other_tokens"],
            row["_total"])
    for row in folded.iter_rows(named=True):
        totals.tasks[(row["agent"], row["task"])] = {
            "ts": row["last_update"], **{k: row[k] for k in TASK_FIELDS if row[k] is not None}}


def stage_file(home: Home, event_type: str, batch: BatchId) -> Path:
    """Where a committed batch's events of a type are staged."""
    return home.stage / event_type / batch_name(batch, "arrow")
