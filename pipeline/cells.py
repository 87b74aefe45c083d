"""A query's priced cost cells, answered from the rollups where they hold the answer and
from the events where they do not.

The rollups (pipeline.rollups) answer for every UTC date they are up to date on. Events
answer for the *dirty* dates: those the rollups lag behind (a compaction killed before it
caught them up), those holding staged rows not compacted yet, and those whose lake rows a
staged row replaces. Likewise for (agent, task) pairs: snapshot increments come from the
rollup except for pairs with staged snapshots or snapshots on dirty dates, computed anew.
Usage rows are read from the events when the query groups by task or session (keys the
rollup does not keep), or when the rollup cannot price them exactly (a long-context
threshold it was not built with) or place them in the query's days (a time zone whose
offset is no multiple of 15 minutes): pruned to the query's dates, and streamed.

The answer equals `reports.open_cells`, which counts from every event, in every case; the
tests hold the two against each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, timedelta

import polars as pl

from pipeline.config import Home
from pipeline.counting import (
    BUCKETS,
    context_estimates,
    snapshot_increments,
    usage_rows,
    with_local_date,
)
from pipeline.lake import Events, open_events
from pipeline.ledger import open_table, table_path
from pipeline.pricing import PriceTable, pricing_for
from pipeline.query import (
    ReportQuery,
    cost_cells,
    increment_cells,
    priced_cells,
    selection,
    untracked_pairs,
)
from pipeline.rollups import SOURCES, reflected, rollup_path, touched_since

USAGE, PROGRESS, CONTEXT = "agent_token_usage", "task_progress", "context_compiled"
ROLLUP_KEYS = {"agent", "role", "phase", "model", "project", "branch", "host", "_date"}
PAIR = ["agent", "task"]


class ReadModel:
    """The rollups of a home, opened as they are asked for, and per event table the dates
    they do not reflect yet."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._tables: dict[str, pl.LazyFrame | None] = {}
        self.lagging: dict[str, set[str]] = {}

    @classmethod
    def open(cls, home: Home) -> ReadModel:
        """The rollups of a home (nothing is read yet)."""
        return cls(home)

    def rollup(self, name: str) -> pl.LazyFrame | None:
        """A rollup's rows, None when it cannot be used (missing, or what it lags behind
        unknown) or its event table does not exist."""
        if name not in self._tables:
            self._tables[name] = self._opened(name)
        return self._tables[name]

    def _opened(self, name: str) -> pl.LazyFrame | None:
        event_type = SOURCES[name]
        place = table_path(self.home, event_type)
        if place.is_local and not (place.path / "_delta_log").is_dir():
            return None
        rollup = open_table(rollup_path(self.home, name))
        if rollup is None:
            return None
        version = reflected(rollup)
        if (place.is_local and version is not None
                and not (place.path / "_delta_log" / f"{version + 1:020d}.json").exists()):
            touched: set[str] | None = set()  # no commit after the one it reflects
        else:
            source = open_table(place)
            touched = None if source is None else touched_since(source, version)
        if touched is None:
            return None
        self.lagging[event_type] = self.lagging.get(event_type, set()) | touched
        return pl.scan_delta(rollup)

    def lag(self, event_type: str) -> set[str]:
        """The dates of an event table its rollups do not reflect (once they are opened)."""
        return self.lagging.get(event_type, set())


def query_cells(home: Home, query: ReportQuery, keys: Sequence[str],
                model: ReadModel | None) -> pl.LazyFrame:
    """Priced cost cells keyed by `keys` (and model) of every counted row the query
    selects: usage rows, plus the snapshot increments of pairs without usage rows."""
    table = pricing_for(home)
    usage, progress = open_events(home, USAGE), open_events(home, PROGRESS)
    if model is not None:
        model.rollup("usage")  # what it lags behind makes dates dirty
    dirty = _dirty_dates(usage, model.lag(USAGE) if model else set())
    used = _usage_cells(usage, model, dirty, query, keys, table)
    tracked = _tracked(usage, model, dirty)
    increments = _increments(progress, model, query)
    untracked = untracked_pairs(increments, tracked).collect(engine="streaming")
    counted = increment_cells(increments, untracked, query, keys, table)
    columns = counted.collect_schema().names()
    return pl.concat([used.select(columns), counted])


# ---------------------------------------------------------------- usage


def utc_window(query: ReportQuery, utc_date: pl.Expr | None = None) -> pl.Expr:
    """Whether a row's UTC date (`utc_date`, by default the `date` column) can hold one of
    the query's local days (zones are at most 14 h off)."""
    day = pl.col("date") if utc_date is None else utc_date
    conditions = [pl.lit(True)]
    if query.since:
        conditions.append(day >= query.since - timedelta(days=1))
    if query.until:
        conditions.append(day <= query.until + timedelta(days=1))
    return pl.all_horizontal(conditions)


EVENT_DATE = pl.col("ts").dt.date()


def _dirty_dates(usage: Events, lagging: set[str]) -> list[date]:
    found = {date.fromisoformat(day) for day in lagging}
    if usage.stage is not None:
        found |= set(usage.stage.select(pl.col("ts").dt.date().unique()).collect()
                     .to_series().to_list())
    found |= set(usage.replaced.get_column("date").drop_nulls().to_list())
    return sorted(found)


def _usage_cells(usage: Events, model: ReadModel | None, dirty: list[date],
                 query: ReportQuery, keys: Sequence[str], table: PriceTable) -> pl.LazyFrame:
    rollup = model.rollup("usage") if model else None
    clean = None
    # A rollup written before a key column existed answers nothing of that key (the next
    # compaction computes it again whole).
    if rollup is not None and set(keys) <= ROLLUP_KEYS and \
            set(keys) - {"_date"} <= set(rollup.collect_schema().names()):
        chosen = rollup.filter(utc_window(query), ~pl.col("date").is_in(dirty))
        # One read of the rollup: cells grouped also by whether their rows can be priced
        # and placed in days exactly; any that cannot, and the events answer instead. A row
        # that cannot is kept whatever the selection: its `_date` may be wrong.
        rows = (_localized(chosen, query.tz)
                .with_columns(_inexact=_inexact(query.tz, table.thresholds))
                .filter(selection(query) | pl.col("_inexact")))
        flagged = rollup_cells(rows, [*keys, "_inexact"], table, query.cost_mode
                               ).collect(engine="streaming")
        if not flagged.get_column("_inexact").any():
            clean = flagged.drop("_inexact").lazy()
    if clean is None:  # every usage row from the events, pruned to the query's dates
        return _event_cells(usage.all(utc_window(query)), query, keys, table)
    lake = usage.kept_lake(pl.col("date").is_in(dirty))
    recent = [lake] if lake is not None else []
    if usage.stage is not None:
        recent.append(usage.stage)
    if not recent:
        return clean
    return pl.concat([clean, _event_cells(pl.concat(recent, how="vertical"), query, keys,
                                          table)])


def _event_cells(events: pl.LazyFrame | None, query: ReportQuery, keys: Sequence[str],
                 table: PriceTable) -> pl.LazyFrame:
    if events is None:
        events = pl.LazyFrame(schema=_empty_usage())
    rows = with_local_date(usage_rows(events.filter(utc_window(query, EVENT_DATE))), query.tz)
    return cost_cells(rows.filter(selection(query)), keys, table, query.cost_mode)


def _empty_usage() -> dict[str, pl.DataType]:
    from pipeline.frames import stage_schema

    return stage_schema(USAGE)


def _localized(rollup: pl.LazyFrame, tz: str) -> pl.LazyFrame:
    local = pl.col("bucket") if tz == "UTC" else pl.col("bucket").dt.convert_time_zone(tz)
    return rollup.with_columns(_date=local.dt.date(), _local=local)


def _inexact(tz: str, thresholds: Sequence[int]) -> pl.Expr:
    """Whether a rollup row cannot be priced (a threshold within its prompt class) or
    placed in a local day (a bucket off the zone's 15-minute grid) exactly."""
    undecided = [~((pl.col("prompt_above") >= t)
                   | (pl.col("prompt_upto").is_not_null() & (pl.col("prompt_upto") <= t)))
                 for t in thresholds]
    off_grid = ([] if tz == "UTC" else  # buckets are whole UTC quarter hours
                [(pl.col("_local").dt.minute() % 15 != 0) | (pl.col("_local").dt.second() != 0)])
    return pl.any_horizontal(pl.lit(False), *off_grid, *undecided)


def rollup_cells(rows: pl.LazyFrame, keys: Sequence[str], table: PriceTable,
                 cost_mode: str) -> pl.LazyFrame:
    """Cost cells of usage rollup rows (which carry `_date`), as `cost_cells` gives them
    for the events they sum."""
    tier = pl.sum_horizontal(pl.lit(0, pl.Int64),
                             *((pl.col("prompt_above") >= t).cast(pl.Int64)
                               for t in table.thresholds))
    producer = pl.col("producer_cost") if cost_mode == "auto" else pl.lit(False)
    by = list(dict.fromkeys([*keys, "model"]))
    summed = rows.with_columns(_tier=tier, _producer=producer).group_by(
        *by, "_tier", "_producer").agg(
        pl.col("events").sum(),
        *(pl.col(c).sum() for c in BUCKETS if c != "other_tokens"),
        pl.lit(0, pl.Int64).alias("other_tokens"),
        pl.col("cache_write_1h_tokens").sum(),
        pl.when(pl.col("producer_cost")).then("cost_nano_usd").sum().alias("cost_nano_usd"))
    return priced_cells(summed, by, table)


# ---------------------------------------------------------------- precedence and increments


def tracked_task_pairs(home: Home) -> pl.LazyFrame:
    """Every (agent, task) pair with usage rows, whose snapshots therefore do not count."""
    usage, model = open_events(home, USAGE), ReadModel.open(home)
    model.rollup("usage")  # what it lags behind makes dates dirty
    return _tracked(usage, model, _dirty_dates(usage, model.lag(USAGE)))


def _tracked(usage: Events, model: ReadModel | None, dirty: list[date]) -> pl.LazyFrame:
    """The (agent, task) pairs with usage rows."""
    rollup = model.rollup("usage_tasks") if model else None
    if rollup is None:
        events = usage.all()
        if events is None:
            return pl.LazyFrame(schema={"agent": pl.String, "task": pl.String})
        return events.filter(pl.col("task").is_not_null()).select(PAIR).unique()
    parts = [rollup.filter(~pl.col("date").is_in(dirty)).select(PAIR)]
    lake = usage.kept_lake(pl.col("date").is_in(dirty))
    if lake is not None:
        parts.append(lake.select(PAIR))
    if usage.stage is not None:
        parts.append(usage.stage.select(PAIR))
    return pl.concat(parts).filter(pl.col("task").is_not_null()).unique()


def _increments(progress: Events, model: ReadModel | None,
                query: ReportQuery) -> pl.LazyFrame:
    """Every snapshot's increment the query's dates may hold: from the rollup, but for the
    pairs it may have wrong."""
    if progress.stage is None and (model is None or model.rollup("increments") is None) \
            and progress.lake is None:
        return pl.LazyFrame(schema={**_empty_progress_rows()})
    return _derived(progress, lambda frame: frame, model, "increments", PROGRESS, PAIR,
                    snapshot_increments, query)


def context_rows(home: Home, model: ReadModel | None,
                 query: ReportQuery) -> pl.LazyFrame | None:
    """Every compilation the query's dates may hold, with its cache estimates: from the
    context rollup, but for the (role, session) pairs it may have wrong; None without
    compilations."""
    compiled = open_events(home, CONTEXT)
    if compiled.stage is None and (model is None or model.rollup("context") is None) \
            and compiled.lake is None:
        return None
    return _derived(compiled, lambda frame: frame.with_columns(
        pl.coalesce("role", "agent").alias("role")), model, "context", CONTEXT,
        ["role", "session_id"], context_estimates, query)


def _derived(source: Events, prepare: Callable[[pl.LazyFrame], pl.LazyFrame],
             model: ReadModel | None, name: str, event_type: str, pair: list[str],
             build: Callable[[pl.LazyFrame], pl.LazyFrame],
             query: ReportQuery) -> pl.LazyFrame:
    """Rows a rollup derives per pair of keys (their order matters), on the query's dates:
    the rollup's, with those of every pair that has staged rows, or rows on dates the
    rollup lags behind, or lake rows a staged row replaces, derived again from the events
    (all of the pair's: they depend on every one)."""
    rollup = model.rollup(name) if model else None
    if rollup is None:
        events = source.all()
        assert events is not None
        return build(prepare(events)).filter(utc_window(query, EVENT_DATE))
    lagging = sorted(model.lag(event_type)) if model else []
    on_lagging = pl.col("date").cast(pl.String).is_in(lagging)
    parts = [rollup.filter(on_lagging).select(pair)]
    for frame in (source.kept_lake(on_lagging) if lagging else None, source.replaced_rows(),
                  source.stage):
        if frame is not None:
            parts.append(_pairs(frame, pair))
    dirty = pl.concat(parts).unique().collect()
    kept = rollup.filter(utc_window(query)).drop("date")
    if dirty.is_empty():
        return kept
    everything = source.all()
    assert everything is not None
    again = build(prepare(everything).join(dirty.lazy(), on=pair, how="semi",
                                           nulls_equal=True))
    return pl.concat([kept.join(dirty.lazy(), on=pair, how="anti", nulls_equal=True),
                      again.filter(utc_window(query, EVENT_DATE))], how="diagonal_relaxed")


def _pairs(frame: pl.LazyFrame, pair: list[str]) -> pl.LazyFrame:
    if pair == ["role", "session_id"]:
        return frame.select(pl.coalesce("role", "agent").alias("role"), "session_id")
    return frame.select(pair)


def _empty_progress_rows() -> dict[str, pl.DataType]:
    from pipeline.frames import stage_schema

    return dict(snapshot_increments(pl.LazyFrame(schema=stage_schema(PROGRESS)))
                .collect_schema())
