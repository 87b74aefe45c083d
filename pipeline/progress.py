"""The latest state of every (agent, task), folded from its task_progress snapshots."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from pipeline.config import Home
from pipeline.counting import BUCKETS, NANO
from pipeline.lake import reread_if_vanished
from pipeline.query import ReportQuery
from pipeline.reports import all_events, open_cells

STATUSES = ("started", "in_progress", "blocked", "completed", "failed")
PROGRESS_COLUMNS = ("agent", "task", "name", "status", "progress", "last_update", "snapshots",
                    "tokens", "cost_usd", "deliverables", "components_completed", "remaining")
_FOLDED = ("name", "status", "progress", "deliverables", "components_completed", "remaining")


def fold_progress(progress: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (agent, task): each field's latest non-null value, by ts."""
    # Snapshots may be partial (a status-only update), so fold field by field.
    ordered = progress.sort("ts", "_source", "_offset")
    return ordered.group_by("agent", "task").agg(
        *(pl.col(name).drop_nulls().last() for name in _FOLDED),
        last_update=pl.col("ts").max(),
        snapshots=pl.len().cast(pl.Int64),
    )


def spent_per_task(cells: pl.LazyFrame) -> pl.LazyFrame:
    """Tokens and cost counted so far per (agent, task), from cost cells keyed by both."""
    return cells.filter(pl.col("task").is_not_null()).group_by("agent", "task").agg(
        tokens=pl.sum_horizontal(*BUCKETS).sum(),
        cost_usd=pl.when(pl.col("priced_events").sum() > 0)
        .then(pl.col("cost_nano_usd").sum() / NANO),
    )


def progress_view(progress: pl.LazyFrame, cells: pl.LazyFrame, agents: Sequence[str] = (),
                  statuses: Sequence[str] = ()) -> pl.LazyFrame:
    """Folded task states with tokens so far, filtered by agent and latest status."""
    if agents:  # before the fold: a task's snapshots all share its agent
        progress = progress.filter(pl.col("agent").is_in(list(agents)))
    folded = fold_progress(progress)
    if statuses:
        folded = folded.filter(pl.col("status").is_in(list(statuses)))
    return (folded.join(spent_per_task(cells), on=["agent", "task"], how="left")
            .with_columns(pl.col("tokens").fill_null(0))
            .sort("agent", "task")
            .select(PROGRESS_COLUMNS))


@reread_if_vanished
def run_progress(home: Home, agents: Sequence[str] = (),
                 statuses: Sequence[str] = (), tz: str = "UTC") -> pl.DataFrame:
    """The progress view of a home, last updates in `tz`."""
    query = ReportQuery(agents=tuple(agents))
    cells = open_cells(home, query, ["agent", "task"])
    progress = all_events(home, "task_progress")
    frame = progress_view(progress, cells, agents, statuses).collect(engine="streaming")
    return frame.with_columns(pl.col("last_update").dt.convert_time_zone(tz))
