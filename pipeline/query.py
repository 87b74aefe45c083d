"""Report queries and the counting rules they apply, as pure `LazyFrame -> LazyFrame`
functions: which rows a query selects, and how counted rows become priced *cost cells*
(a few per group, one per model and pricing situation) that every report sums.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

import polars as pl

from pipeline.counting import BUCKETS, nano_usd, usage_rows, with_local_date
from pipeline.errors import UnknownTimeZone, UsageError
from pipeline.pricing import (
    PriceTable,
    attach_prices,
    computed_cost,
    long_context_tier,
    matches_model,
)
from pipeline.settings import is_time_zone

GROUP_KEYS = ("agent", "role", "phase", "day", "week", "month", "model", "task", "session",
              "project", "branch", "host")
TIME_KEYS = ("day", "week", "month")
DEFAULT_BY = ("agent", "day")
COST_MODES = ("auto", "calculate")
REPORT_COLUMNS = ("events", *BUCKETS, "total_tokens", "cost_usd", "unpriced_events")
KEY_COLUMN = {"session": "session_id"}
OPTIONAL_ENVELOPE = ("role", "phase", "session_id", "project", "branch", "host")
DAY_FORMAT = "%Y-%m-%d"  # how a day is given: --since, --until, the API's since/until
TIME_FORMAT = {"day": DAY_FORMAT, "week": "%G-W%V", "month": "%Y-%m"}

TASK_PAIR = ["agent", "task"]  # snapshot increments count per (agent, task) pair
FIRST_DAY, LAST_DAY = date(2, 1, 1), date(9998, 12, 31)


@dataclass(frozen=True)
class ReportQuery:
    """What a report groups by, which rows it keeps, and how it prices them."""

    by: tuple[str, ...] = DEFAULT_BY
    since: date | None = None
    until: date | None = None
    agents: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    tz: str = "UTC"
    cost_mode: str = "auto"


@dataclass(frozen=True)
class Report:
    """One row per group with REPORT_COLUMNS, and the models that had no price."""

    rows: pl.DataFrame
    by: tuple[str, ...]
    unpriced_models: list[str] = field(default_factory=list)


def split_values(values: Iterable[str]) -> tuple[str, ...]:
    """Repeatable options also take comma-separated lists."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def parse_by(text: str) -> tuple[str, ...]:
    """The group keys of a comma-separated --by value, checked and without repeats."""
    keys = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in keys if k not in GROUP_KEYS]
    if unknown or not keys:
        raise UsageError(f"cannot group by {', '.join(unknown) or 'nothing'}",
                         hint="choose from " + ", ".join(GROUP_KEYS))
    return keys


def check_timezone(name: str) -> str:
    """`name` if it is an IANA time zone, else UnknownTimeZone."""
    if not is_time_zone(name):
        raise UnknownTimeZone(name)
    return name


def check_day(name: str, day: date | None) -> date | None:
    """`day` if a report can compute with it (its local midnight, a week either side, fits
    a date), else a UsageError naming the option."""
    if day is not None and not FIRST_DAY <= day <= LAST_DAY:
        raise UsageError(f"{name} {day} is out of range",
                         hint=f"give a day from {FIRST_DAY} to {LAST_DAY}")
    return day


def check_query(query: ReportQuery) -> ReportQuery:
    """The query if its parts fit together, else a UsageError saying which do not."""
    check_timezone(query.tz)
    check_day("--since", query.since)
    check_day("--until", query.until)
    if query.cost_mode not in COST_MODES:
        raise UsageError(f"unknown cost mode {query.cost_mode!r}",
                         hint="use " + " or ".join(COST_MODES))
    if query.since and query.until and query.since > query.until:
        raise UsageError(f"--since {query.since} is after --until {query.until}")
    return query


# ---------------------------------------------------------------- counted rows


def trim(events: pl.LazyFrame, keep: Iterable[str]) -> pl.LazyFrame:
    """Drop the optional envelope columns a query does not use, before anything reads them."""
    # Events staged before hosts were recorded, or read in tests, may lack `host`.
    return events.drop(set(OPTIONAL_ENVELOPE) - set(keep), strict=False)


def needed_envelope(query: ReportQuery, keys: Iterable[str] = ()) -> set[str]:
    """The optional envelope columns a query's group keys and filters read."""
    wanted = {KEY_COLUMN.get(k, k) for k in (*keys, *query.by)}
    wanted |= {c for c, v in (("role", query.roles), ("phase", query.phases)) if v}
    return wanted & set(OPTIONAL_ENVELOPE)


def selection(query: ReportQuery) -> pl.Expr:
    """True for the rows the query's date range and --agent/--role/--phase/--model select."""
    conditions = [pl.lit(True)]
    if query.since:
        conditions.append(pl.col("_date") >= query.since)
    if query.until:
        conditions.append(pl.col("_date") <= query.until)
    for column, wanted in (("agent", query.agents), ("role", query.roles),
                           ("phase", query.phases)):
        if wanted:
            conditions.append(pl.col(column).is_in(list(wanted)).fill_null(False))
    if query.models:
        conditions.append(matches_model(pl.col("model"), list(query.models)))
    return pl.all_horizontal(conditions)


def filter_rows(rows: pl.LazyFrame, query: ReportQuery) -> pl.LazyFrame:
    """Keep the rows the query selects (they carry `_date`)."""
    return rows.filter(selection(query))


def cost_cells(rows: pl.LazyFrame, keys: Sequence[str], table: PriceTable,
               cost_mode: str) -> pl.LazyFrame:
    """Rows summed per `keys` and model, then priced: `cost_nano_usd` (null when
    unpriced), `priced_events`, `unpriced_events`.

    Cost is linear in the token counts, so summing first and pricing a few thousand
    cells gives the per-row answer, provided rows that price differently stay apart:
    those above a long-context threshold (`_tier`) and, in auto mode, those carrying
    the producer's own cost_usd (`_producer`).
    """
    producer = pl.col("cost_usd").is_not_null() if cost_mode == "auto" else pl.lit(False)
    by = list(dict.fromkeys([*keys, "model"]))
    cells = rows.with_columns(
        # 1-hour writes are part of cache_write; never price more of them than were written.
        pl.min_horizontal("cache_write_1h_tokens", "cache_write_tokens")
        .alias("cache_write_1h_tokens"),
        _tier=long_context_tier(table.thresholds), _producer=producer,
        cost_nano_usd=nano_usd(pl.col("cost_usd")),
    ).group_by(*by, "_tier", "_producer").agg(
        pl.len().cast(pl.Int64).alias("events"),
        *sums((*BUCKETS, "cache_write_1h_tokens", "cost_nano_usd")),
    )
    return priced_cells(cells, by, table)


def priced_cells(cells: pl.LazyFrame, by: Sequence[str], table: PriceTable) -> pl.LazyFrame:
    """Summed cells (`by`, `_tier`, `_producer`, events, token sums, the producers'
    `cost_nano_usd`) priced: the producers' cost where `_producer`, else computed."""
    cost = pl.when("_producer").then("cost_nano_usd").otherwise(nano_usd(computed_cost()))
    return (attach_prices(cells, table)
            .with_columns(cost_nano_usd=cost)
            .with_columns(
                priced_events=pl.when(pl.col("cost_nano_usd").is_not_null()).then("events")
                .otherwise(0),
                unpriced_events=pl.when(pl.col("cost_nano_usd").is_null()).then("events")
                .otherwise(0))
            .select(*by, "events", *BUCKETS, "cost_nano_usd", "priced_events",
                    "unpriced_events"))


def usage_cells(usage: pl.LazyFrame, snapshot_tasks: pl.Series, query: ReportQuery,
                keys: Sequence[str], table: PriceTable) -> pl.LazyFrame:
    """Cost cells of the usage rows, with two extra keys: `_in`, whether the query selects
    the rows, and `_task`, their task when it is one of `snapshot_tasks` (the tasks with
    snapshot increments).

    Every usage row is summed, selected or not, so that `tracked_pairs` sees every
    (agent, task) with usage rows: precedence does not depend on --since or --agent.
    """
    rows = with_local_date(usage_rows(usage), query.tz).with_columns(
        _task=pl.when(pl.col("task").is_in(snapshot_tasks.implode())).then("task"),
        _in=selection(query))
    return cost_cells(rows, [*keys, "agent", "_task", "_in"], table, query.cost_mode)


def tracked_pairs(cells: pl.LazyFrame) -> pl.LazyFrame:
    """The (agent, task) pairs that have usage rows, from `usage_cells`."""
    return (cells.filter(pl.col("_task").is_not_null())
            .select("agent", pl.col("_task").alias("task")).unique())


def untracked_pairs(increments: pl.LazyFrame, tracked: pl.LazyFrame) -> pl.LazyFrame:
    """The (agent, task) pairs of `increments` without usage rows (`tracked` pairs)."""
    return increments.select(TASK_PAIR).unique().join(tracked, on=TASK_PAIR, how="anti")


def increment_cells(increments: pl.LazyFrame, untracked: pl.DataFrame, query: ReportQuery,
                    keys: Sequence[str], table: PriceTable) -> pl.LazyFrame:
    """Cost cells of the snapshot increments that count: those of the `untracked` pairs
    (`untracked_pairs`); a pair with a null never has usage rows."""
    # Not a join with the tracked pairs: Polars' streaming engine holds a join's every left
    # row (600 MB for the snapshots of a year of 50M events); a filter streams them.
    wanted = untracked.select(pl.struct(TASK_PAIR)).to_series().implode()
    counted = increments.filter(pl.any_horizontal(pl.col(TASK_PAIR).is_null())
                                | pl.struct(TASK_PAIR).is_in(wanted))
    return cost_cells(filter_rows(with_local_date(counted, query.tz), query), keys, table,
                      query.cost_mode)


def combine_cells(usage: pl.LazyFrame, increments: pl.LazyFrame) -> pl.LazyFrame:
    """The selected usage cells and the increment cells, in the increment cells' columns."""
    columns = increments.collect_schema().names()
    return pl.concat([usage.filter("_in").select(columns), increments])


def counted_cells(usage: pl.LazyFrame, increments: pl.DataFrame, query: ReportQuery,
                  keys: Sequence[str], table: PriceTable) -> pl.LazyFrame:
    """Priced cost cells keyed by `keys` of every counted row the query selects: usage
    rows, plus the `snapshot_increments` of (agent, task) pairs without usage rows."""
    used = usage_cells(usage, increments["task"].unique(), query, keys, table)
    untracked = untracked_pairs(increments.lazy(), tracked_pairs(used)).collect()
    counted = increment_cells(increments.lazy(), untracked, query, keys, table)
    return combine_cells(used, counted)




def sums(columns: Sequence[str]) -> list[pl.Expr]:
    """The sum of each column."""
    return [pl.col(c).sum() for c in columns]
