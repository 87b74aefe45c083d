"""Token and cost reports, folded from the lake as DESIGN.md "Counting tokens" and "Cost" say.

What counts is every agent_token_usage row, plus every increase of a task_progress
snapshot's cumulative `tokens_used` for (agent, task) pairs that have no usage rows.
Those rows are summed into priced *cost cells* (a few per group, one per model and
pricing situation), and every report, daily summary and usage window is a sum of cells.
Pure `LazyFrame -> LazyFrame` functions do the counting; the `open_*`/`run_*` functions
at the bottom read the lake and call them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import polars as pl

from pipeline.cells import EVENT_DATE, ReadModel, context_rows, query_cells, utc_window
from pipeline.config import Home
from pipeline.counting import (
    BUCKETS,
    NANO,
    context_estimates,
    snapshot_increments,
    with_local_date,
)
from pipeline.frames import TS_TYPE, stage_schema
from pipeline.lake import reread_if_vanished, scan_events
from pipeline.pricing import (
    pricing_for,
)
from pipeline.query import (
    KEY_COLUMN,
    REPORT_COLUMNS,
    TIME_FORMAT,
    TIME_KEYS,
    Report,
    ReportQuery,
    check_query,
    combine_cells,
    filter_rows,
    increment_cells,
    needed_envelope,
    sums,
    tracked_pairs,
    trim,
    untracked_pairs,
    usage_cells,
)

# ---------------------------------------------------------------- grouping


def cell_keys(by: Sequence[str]) -> list[str]:
    """The cost-cell keys a report grouped by `by` needs: time keys become `_date`."""
    plain = [KEY_COLUMN.get(k, k) for k in by if k not in TIME_KEYS]
    return plain + (["_date"] if any(k in TIME_KEYS for k in by) else [])


def summarize(cells: pl.LazyFrame, by: Sequence[str]) -> pl.LazyFrame:
    """One row per group of `by` with REPORT_COLUMNS, sorted by the keys."""
    timed = [k for k in by if k in TIME_KEYS]
    # Weeks and months are formatted from the (few) cells' days, not from every row.
    cells = cells.with_columns(pl.col("_date").dt.strftime(TIME_FORMAT[k]).alias(k)
                               for k in timed)
    grouped = cells.group_by(*(KEY_COLUMN.get(k, k) for k in by)).agg(
        *sums(("events", *BUCKETS, "unpriced_events")), cost_usd=_cost_sum())
    return (grouped
            .with_columns(total_tokens=pl.sum_horizontal(*BUCKETS))
            .rename({KEY_COLUMN[k]: k for k in by if k in KEY_COLUMN})
            .sort(*sort_keys(by), nulls_last=True)
            .select(*by, *REPORT_COLUMNS))


def sort_keys(by: Sequence[str]) -> list[pl.Expr]:
    """Sort expressions for key columns: numeric phases in number order before labels."""
    keys = []
    for key in by:
        if key == "phase":
            keys.append(pl.col("phase").cast(pl.Int64, strict=False))
        keys.append(pl.col(key))
    return keys


def unpriced_models(cells: pl.LazyFrame) -> pl.LazyFrame:
    """The distinct models of the cells that got no cost ("(no model)" for rows without)."""
    return (cells.filter(pl.col("unpriced_events") > 0)
            .select(pl.col("model").fill_null("(no model)")).unique().sort("model"))


def _cost_sum(condition: pl.Expr | None = None) -> pl.Expr:
    """Sum of the cells' cost where `condition` holds; null when none of it was priced."""
    def where(column: str) -> pl.Expr:
        return pl.col(column) if condition is None else pl.col(column).filter(condition)

    # A group where nothing could be priced has no cost, not $0.
    return pl.when(where("priced_events").sum() > 0).then(where("cost_nano_usd").sum() / NANO)


def _token_sum(condition: pl.Expr | None = None) -> pl.Expr:
    total = pl.sum_horizontal(*BUCKETS)
    return (total if condition is None else total.filter(condition)).sum()


# ---------------------------------------------------------------- daily summary


@dataclass(frozen=True)
class DailySummary:
    """The seed's daily token report: per agent tasks, tokens and cost on one day."""

    day: date
    agents: pl.DataFrame  # agent, tasks, tasks_completed, tokens, cost_usd, unpriced_events

    def totals(self) -> dict[str, Any]:
        """Sums over agents; avg_tokens_per_task is tokens per completed task, as the seed's."""
        tokens = int(self.agents["tokens"].sum())
        completed = int(self.agents["tasks_completed"].sum())
        costs = self.agents["cost_usd"].drop_nulls()
        return {
            "tasks": int(self.agents["tasks"].sum()),
            "tasks_completed": completed,
            "tokens_used": tokens,
            "cost_usd": float(costs.sum()) if len(costs) else None,
            "unpriced_events": int(self.agents["unpriced_events"].sum()),
            "avg_tokens_per_task": round(tokens / completed) if completed else None,
        }

    def seed_shape(self) -> dict[str, Any]:
        """The JSON document of seed 000: costs as "$X.XX" strings (null when unpriced)."""
        totals = self.totals()
        agents = {
            row["agent"]: {"tasks": row["tasks"], "tokens": row["tokens"],
                           "cost": dollars(row["cost_usd"]),
                           "tasks_completed": row["tasks_completed"],
                           "unpriced_events": row["unpriced_events"]}
            for row in self.agents.iter_rows(named=True)
        }
        return {"date": self.day.isoformat(), "agents": agents, "total": {
            "tasks_completed": totals["tasks_completed"], "tokens_used": totals["tokens_used"],
            "cost": dollars(totals["cost_usd"]),
            "avg_tokens_per_task": totals["avg_tokens_per_task"],
            "unpriced_events": totals["unpriced_events"],
        }}


def dollars(cost: float | None) -> str | None:
    """A cost as the seed writes it: "$0.90"."""
    return None if cost is None else f"${cost:,.2f}"


def tasks_on_day(cells: pl.LazyFrame, progress: pl.LazyFrame, day: date) -> pl.LazyFrame:
    """Per agent: tasks with activity on `day` (usage or snapshots) and those whose last
    status that day is completed. `cells` are keyed by agent, `_date` and task."""
    active = pl.concat([
        cells.filter(pl.col("_date") == day, pl.col("task").is_not_null())
        .select("agent", "task", pl.lit(None, pl.String).alias("status"),
                pl.lit(None, TS_TYPE).alias("ts")),
        progress.filter(pl.col("_date") == day).select("agent", "task", "status", "ts"),
    ])
    last_status = pl.col("status").sort_by("ts").drop_nulls().last()
    per_task = active.group_by("agent", "task").agg(completed=last_status == "completed")
    return per_task.group_by("agent").agg(
        tasks=pl.len().cast(pl.Int64),
        tasks_completed=pl.col("completed").fill_null(False).sum().cast(pl.Int64))


def daily_totals(cells: pl.LazyFrame, progress: pl.LazyFrame, day: date) -> pl.LazyFrame:
    """The per-agent table of a DailySummary: `cells` keyed by agent, `_date` and task,
    `progress` carrying `_date`."""
    today = pl.col("_date") == day
    spent = cells.group_by("agent").agg(
        tokens=_token_sum(today), cost_usd=_cost_sum(today),
        unpriced_events=pl.col("unpriced_events").filter(today).sum())
    return (tasks_on_day(cells, progress, day)
            .join(spent, on="agent", how="full", coalesce=True)
            .with_columns(pl.col("tasks", "tasks_completed", "tokens", "unpriced_events")
                          .fill_null(0))
            .select("agent", "tasks", "tasks_completed", "tokens", "cost_usd", "unpriced_events")
            .sort("agent"))


# ---------------------------------------------------------------- usage windows


USAGE_COLUMNS = ("today_tokens", "today_cost_usd", "week_tokens", "week_cost_usd",
                 "total_tokens", "total_cost_usd", "unpriced_events")


def usage_windows(cells: pl.LazyFrame, today: date) -> pl.LazyFrame:
    """Per agent: tokens and cost today, this ISO week (Monday on) and all time.

    `cells` are cost cells keyed by agent and `_date`.
    """
    monday = today - timedelta(days=today.weekday())
    is_today = pl.col("_date") == today
    this_week = pl.col("_date").is_between(monday, today)
    return cells.group_by("agent").agg(
        today_tokens=_token_sum(is_today), today_cost_usd=_cost_sum(is_today),
        week_tokens=_token_sum(this_week), week_cost_usd=_cost_sum(this_week),
        total_tokens=_token_sum(), total_cost_usd=_cost_sum(),
        unpriced_events=pl.col("unpriced_events").sum(),
    ).sort("agent")


# ---------------------------------------------------------------- context cache estimates


CONTEXT_COLUMNS = ("compilations", "input_tokens_estimate", "cache_read_tokens_estimate",
                   "cache_write_tokens_estimate", "cache_hits", "cache_hit_ratio")


def context_summary(estimates: pl.LazyFrame) -> pl.LazyFrame:
    """Per role: compilations, estimated input tokens, cache read/write, hits and hit ratio."""
    read, write = pl.col("cache_read_tokens_estimate"), pl.col("cache_write_tokens_estimate")
    return (estimates.group_by("role").agg(
        compilations=pl.len().cast(pl.Int64),
        input_tokens_estimate=pl.col("input_tokens_estimate").sum(),
        cache_read_tokens_estimate=read.sum(), cache_write_tokens_estimate=write.sum(),
        cache_hits=(read > 0).sum().cast(pl.Int64))
        # Token-weighted: the share of prefix tokens served from the cache.
        .with_columns(cache_hit_ratio=pl.when((read + write) > 0)
                      .then(read / (read + write)))
        .sort("role")
        .select("role", *CONTEXT_COLUMNS))


# ---------------------------------------------------------------- reading the lake


def all_events(home: Home, event_type: str) -> pl.LazyFrame:
    """Every event of a type (lake and stage, each once); an empty frame when there are none."""
    frame = scan_events(home, event_type)
    return pl.LazyFrame(schema=stage_schema(event_type)) if frame is None else frame


def open_cells(home: Home, query: ReportQuery, keys: Sequence[str]) -> pl.LazyFrame:
    """The home's counted rows the query selects, as priced cost cells keyed by `keys`:
    from the rollups where they answer (pipeline.cells)."""
    return query_cells(home, query, keys, ReadModel.open(home))


def cells_from_events(home: Home, query: ReportQuery, keys: Sequence[str]) -> pl.LazyFrame:
    """`open_cells` counted from every event, as if there were no rollups: what
    `--check` compares the rollups' answer with.

    Does what `counted_cells` does, collecting the (small) intermediate results so that
    the usage rows, by far the most, are read and deduplicated once.
    """
    keep = needed_envelope(query, keys)
    table = pricing_for(home)
    increments = snapshot_increments(trim(all_events(home, "task_progress"), keep)).collect()
    used = usage_cells(trim(all_events(home, "agent_token_usage"), keep),
                       increments["task"].unique(), query, keys, table).collect().lazy()
    untracked = untracked_pairs(increments.lazy(), tracked_pairs(used)).collect()
    counted = increment_cells(increments.lazy(), untracked, query, keys, table)
    return combine_cells(used, counted.collect().lazy())


@reread_if_vanished
def run_report(home: Home, query: ReportQuery) -> Report:
    """Tokens and cost per group of `query.by`."""
    cells = open_cells(home, check_query(query), cell_keys(query.by)).collect().lazy()
    grouped, missing = pl.collect_all([summarize(cells, query.by), unpriced_models(cells)])
    return Report(rows=grouped, by=query.by, unpriced_models=missing["model"].to_list())


@dataclass(frozen=True)
class ReportCheck:
    """The rollups' answer to a report beside the count from every event."""

    from_rollups: pl.DataFrame
    from_events: pl.DataFrame

    @property
    def same(self) -> bool:
        """Whether the two agree on every group and column (cost to a nano-dollar)."""
        return self.differences().is_empty() and (
            self.from_rollups.height == self.from_events.height)

    def differences(self) -> pl.DataFrame:
        """The groups whose figures differ, each with its two versions."""
        both = self.from_rollups.join(self.from_events, on=list(self.keys), how="full",
                                      suffix="_from_events", nulls_equal=True,
                                      coalesce=True)
        differs = pl.any_horizontal(
            ~pl.col(c).eq_missing(pl.col(f"{c}_from_events")) if c != "cost_usd" else
            ((pl.col(c) - pl.col(f"{c}_from_events")).abs() > 1e-9)
            | (pl.col(c).is_null() != pl.col(f"{c}_from_events").is_null())
            for c in REPORT_COLUMNS)
        return both.filter(differs)

    @property
    def keys(self) -> tuple[str, ...]:
        """The group keys."""
        return tuple(c for c in self.from_rollups.columns if c not in REPORT_COLUMNS)


@reread_if_vanished
def check_report(home: Home, query: ReportQuery) -> ReportCheck:
    """A report from the rollups and the same report counted from every event."""
    keys = cell_keys(check_query(query).by)
    from_rollups = summarize(open_cells(home, query, keys).collect().lazy(), query.by)
    from_events = summarize(cells_from_events(home, query, keys).collect().lazy(), query.by)
    return ReportCheck(from_rollups.collect(), from_events.collect())


@reread_if_vanished
def run_daily_summary(home: Home, day: date, query: ReportQuery) -> DailySummary:
    """The seed's daily report of `day` (in `query.tz`), for `query.agents` or everyone."""
    query = check_query(ReportQuery(agents=query.agents, tz=query.tz, since=day, until=day,
                                    cost_mode=query.cost_mode))
    cells = open_cells(home, query, ["agent", "_date", "task"])
    progress = filter_rows(with_local_date(
        all_events(home, "task_progress").filter(utc_window(query, EVENT_DATE)), query.tz), query)
    return DailySummary(day=day, agents=daily_totals(cells, progress, day).collect())


@reread_if_vanished
def run_usage(home: Home, today: date, query: ReportQuery) -> pl.DataFrame:
    """Tokens and cost today, this week and all time per agent, as of `today` in `query.tz`."""
    return usage_windows(open_cells(home, check_query(query), ["agent", "_date"]),
                         today).collect()


@reread_if_vanished
def run_context_report(home: Home, query: ReportQuery) -> pl.DataFrame:
    """Per role: context compilations and their estimated cache hit ratio."""
    estimates = context_rows(home, ReadModel.open(home), check_query(query))
    if estimates is None:
        estimates = context_estimates(pl.LazyFrame(schema=stage_schema("context_compiled")))
    selected = filter_rows(with_local_date(estimates, check_query(query).tz), query)
    return context_summary(selected).collect()


def context_from_events(home: Home, query: ReportQuery) -> pl.DataFrame:
    """`run_context_report` from every event, as if there were no rollups (`--check`)."""
    estimates = context_estimates(all_events(home, "context_compiled"))
    selected = filter_rows(with_local_date(estimates, check_query(query).tz), query)
    return context_summary(selected).collect()
