"""Token and cost reports, folded from the lake as DESIGN.md "Counting tokens" and "Cost" say.

What counts is every agent_token_usage row, plus every increase of a task_progress
snapshot's cumulative `tokens_used` for (agent, task) pairs that have no usage rows.
Those rows are summed into priced *cost cells* (a few per group, one per model and
pricing situation), and every report, daily summary and usage window is a sum of cells.
Pure `LazyFrame -> LazyFrame` functions do the counting; the `open_*`/`run_*` functions
at the bottom read the lake and call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from pipeline.config import Home
from pipeline.errors import UnknownTimeZone, UsageError
from pipeline.frames import TS_TYPE, stage_schema
from pipeline.lake import reread_if_vanished, scan_events
from pipeline.pricing import (
    PriceTable,
    attach_prices,
    computed_cost,
    long_context_tier,
    matches_model,
    pricing_for,
)

GROUP_KEYS = ("agent", "role", "phase", "day", "week", "month", "model", "task", "session")
TIME_KEYS = ("day", "week", "month")
DEFAULT_BY = ("agent", "day")
COST_MODES = ("auto", "calculate")
BUCKETS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
           "other_tokens")
REPORT_COLUMNS = ("events", *BUCKETS, "total_tokens", "cost_usd", "unpriced_events")
_KEY_COLUMN = {"session": "session_id"}
ENVELOPE = ("ts", "agent", "role", "phase", "session_id", "task", "model")
OPTIONAL_ENVELOPE = ("role", "phase", "session_id")
NANO = 1_000_000_000
_TIME_FORMAT = {"day": "%Y-%m-%d", "week": "%G-W%V", "month": "%Y-%m"}
# An `extra` counter in task_progress.tokens_used JSON text: `"name": 123`.
_EXTRA_COUNTER = r'"\s*:\s*[0-9]+'


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
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimeZone(name) from exc
    return name


def check_query(query: ReportQuery) -> ReportQuery:
    """The query if its parts fit together, else a UsageError saying which do not."""
    check_timezone(query.tz)
    if query.cost_mode not in COST_MODES:
        raise UsageError(f"unknown cost mode {query.cost_mode!r}",
                         hint="use " + " or ".join(COST_MODES))
    if query.since and query.until and query.since > query.until:
        raise UsageError(f"--since {query.since} is after --until {query.until}")
    return query


# ---------------------------------------------------------------- counted rows


def _envelope(frame: pl.LazyFrame) -> list[pl.Expr]:
    """The envelope columns of counted rows; those trimmed away by `trim` come back as nulls."""
    present = set(frame.collect_schema().names())
    return [pl.col(c) if c in present else pl.lit(None, pl.String).alias(c) for c in ENVELOPE]


def trim(events: pl.LazyFrame, keep: Iterable[str]) -> pl.LazyFrame:
    """Drop the optional envelope columns a query does not use, before anything reads them."""
    return events.drop(set(OPTIONAL_ENVELOPE) - set(keep))


def needed_envelope(query: ReportQuery, keys: Iterable[str] = ()) -> set[str]:
    """The optional envelope columns a query's group keys and filters read."""
    wanted = {_KEY_COLUMN.get(k, k) for k in (*keys, *query.by)}
    wanted |= {c for c, v in (("role", query.roles), ("phase", query.phases)) if v}
    return wanted & set(OPTIONAL_ENVELOPE)


def usage_rows(usage: pl.LazyFrame) -> pl.LazyFrame:
    """agent_token_usage events as counted rows: deltas, summed as they are."""
    return usage.select(
        *_envelope(usage),
        *(pl.col(name).fill_null(0) for name in BUCKETS if name != "other_tokens"),
        pl.lit(0, pl.Int64).alias("other_tokens"),
        pl.col("cache_write_1h_tokens").fill_null(0),
        "cost_usd",
    )


def snapshot_increments(progress: pl.LazyFrame) -> pl.LazyFrame:
    """task_progress snapshots as counted rows: the growth of `tokens_used` per (agent, task)."""
    tokens = pl.col("tokens_used")
    prompt = tokens.struct.field("prompt").fill_null(0)
    completion = tokens.struct.field("completion").fill_null(0)
    extras = (tokens.struct.field("extra").str.extract_all(_EXTRA_COUNTER)
              .list.eval(pl.element().str.extract(r"([0-9]+)$").cast(pl.Int64))
              .list.sum().fill_null(0))
    total = pl.coalesce(tokens.struct.field("total"), prompt + completion + extras)
    cumulative = {
        "input_tokens": prompt,
        "output_tokens": completion,
        "other_tokens": (total - prompt - completion).clip(lower_bound=0),
        "_total": total,
    }
    snapshots = (progress.filter(tokens.is_not_null())
                 .sort("agent", "task", "ts", "_source", "_offset")
                 .with_columns(**cumulative,
                               model=pl.coalesce(tokens.struct.field("model"), "model")))
    same_task = ((pl.col("agent") == pl.col("agent").shift(1))
                 & (pl.col("task") == pl.col("task").shift(1))).fill_null(False)
    # The first snapshot counts from zero: tokens_used is "so far", i.e. since the task began.
    previous = {n: pl.when(same_task).then(pl.col(n).shift(1)).otherwise(0) for n in cumulative}
    # A total below the previous one means the producer's counter restarted (a new process,
    # a retried task): everything in the new snapshot is new usage, so it is the increment.
    reset = pl.col("_total") < previous["_total"]
    increments = {
        n: pl.when(reset).then(pl.col(n)).otherwise((pl.col(n) - previous[n]).clip(lower_bound=0))
        for n in ("input_tokens", "output_tokens", "other_tokens")
    }
    return (snapshots.with_columns(**increments)
            # An unchanged snapshot is a status update, not usage.
            .filter(pl.sum_horizontal(*increments) > 0)
            .select(*_envelope(progress), "input_tokens", "output_tokens",
                    pl.lit(0, pl.Int64).alias("cache_read_tokens"),
                    pl.lit(0, pl.Int64).alias("cache_write_tokens"), "other_tokens",
                    pl.lit(0, pl.Int64).alias("cache_write_1h_tokens"),
                    pl.lit(None, pl.Float64).alias("cost_usd")))


def with_local_date(rows: pl.LazyFrame, tz: str) -> pl.LazyFrame:
    """Add `_date`, the calendar day of `ts` in time zone `tz`."""
    local = pl.col("ts") if tz == "UTC" else pl.col("ts").dt.convert_time_zone(tz)
    return rows.with_columns(_date=local.dt.date())


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
        *_sums((*BUCKETS, "cache_write_1h_tokens", "cost_nano_usd")),
    )
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


def nano_usd(usd: pl.Expr) -> pl.Expr:
    """USD as whole nano-dollars: integer sums are exact, so no total depends on row order."""
    return (usd * NANO).round().cast(pl.Int64)


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


def increment_cells(increments: pl.LazyFrame, tracked: pl.LazyFrame, query: ReportQuery,
                    keys: Sequence[str], table: PriceTable) -> pl.LazyFrame:
    """Cost cells of the snapshot increments that count: those of pairs without usage rows."""
    counted = increments.join(tracked, on=["agent", "task"], how="anti")
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
    counted = increment_cells(increments.lazy(), tracked_pairs(used), query, keys, table)
    return combine_cells(used, counted)


# ---------------------------------------------------------------- grouping


def _sums(columns: Sequence[str]) -> list[pl.Expr]:
    return [pl.col(c).sum() for c in columns]


def cell_keys(by: Sequence[str]) -> list[str]:
    """The cost-cell keys a report grouped by `by` needs: time keys become `_date`."""
    plain = [_KEY_COLUMN.get(k, k) for k in by if k not in TIME_KEYS]
    return plain + (["_date"] if any(k in TIME_KEYS for k in by) else [])


def summarize(cells: pl.LazyFrame, by: Sequence[str]) -> pl.LazyFrame:
    """One row per group of `by` with REPORT_COLUMNS, sorted by the keys."""
    timed = [k for k in by if k in TIME_KEYS]
    # Weeks and months are formatted from the (few) cells' days, not from every row.
    cells = cells.with_columns(pl.col("_date").dt.strftime(_TIME_FORMAT[k]).alias(k)
                               for k in timed)
    grouped = cells.group_by(*(_KEY_COLUMN.get(k, k) for k in by)).agg(
        *_sums(("events", *BUCKETS, "unpriced_events")), cost_usd=_cost_sum())
    return (grouped
            .with_columns(total_tokens=pl.sum_horizontal(*BUCKETS))
            .rename({_KEY_COLUMN[k]: k for k in by if k in _KEY_COLUMN})
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


def context_estimates(compiled: pl.LazyFrame) -> pl.LazyFrame:
    """context_compiled events with input and cache read/write estimates filled in.

    Bytes stand in for tokens, as the producers' own `input_tokens_estimate` does
    (prefix_bytes + volatile_bytes). When a producer gives `input_tokens_estimate`, the
    prefix's share of it is its share of the bytes. Without explicit cache estimates, a
    compilation whose prefix_hash equals the previous one of the same role and session
    reads the prefix from cache; any other compilation writes it.
    """
    role = pl.coalesce("role", "agent")  # an agent without roles is its own role
    size = pl.col("prefix_bytes") + pl.col("volatile_bytes")
    estimate = pl.coalesce("input_tokens_estimate", size)
    prefix = (pl.when(pl.col("input_tokens_estimate").is_not_null() & (size > 0))
              .then((pl.col("input_tokens_estimate") * pl.col("prefix_bytes") / size).round()
                    .cast(pl.Int64))
              .otherwise(pl.col("prefix_bytes")))
    same_prefix = (pl.col("prefix_hash") == pl.col("prefix_hash").shift(1)
                   .over(role, "session_id")).fill_null(False)
    explicit = (pl.col("cache_read_tokens_estimate").is_not_null()
                | pl.col("cache_write_tokens_estimate").is_not_null())
    read = pl.when(explicit).then(pl.col("cache_read_tokens_estimate").fill_null(0)).otherwise(
        pl.when(same_prefix).then(prefix).otherwise(0))
    write = pl.when(explicit).then(pl.col("cache_write_tokens_estimate").fill_null(0)).otherwise(
        pl.when(same_prefix).then(0).otherwise(prefix))
    return (compiled.sort("ts", "_source", "_offset")
            .with_columns(role=role)
            .with_columns(input_tokens_estimate=estimate, cache_read_tokens_estimate=read,
                          cache_write_tokens_estimate=write,
                          estimated=~explicit))


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


def open_events(home: Home, event_type: str) -> pl.LazyFrame:
    """Every event of a type (lake and stage, each once); an empty frame when there are none."""
    frame = scan_events(home, event_type)
    return pl.LazyFrame(schema=stage_schema(event_type)) if frame is None else frame


def open_cells(home: Home, query: ReportQuery, keys: Sequence[str]) -> pl.LazyFrame:
    """The home's counted rows the query selects, as priced cost cells keyed by `keys`.

    Does what `counted_cells` does, collecting the (small) intermediate results so that
    the usage rows, by far the most, are read and deduplicated once.
    """
    keep = needed_envelope(query, keys)
    table = pricing_for(home)
    increments = snapshot_increments(trim(open_events(home, "task_progress"), keep)).collect()
    used = usage_cells(trim(open_events(home, "agent_token_usage"), keep),
                       increments["task"].unique(), query, keys, table).collect().lazy()
    counted = increment_cells(increments.lazy(), tracked_pairs(used), query, keys, table)
    return combine_cells(used, counted.collect().lazy())


@reread_if_vanished
def run_report(home: Home, query: ReportQuery) -> Report:
    """Tokens and cost per group of `query.by`."""
    cells = open_cells(home, check_query(query), cell_keys(query.by)).collect().lazy()
    grouped, missing = pl.collect_all([summarize(cells, query.by), unpriced_models(cells)])
    return Report(rows=grouped, by=query.by, unpriced_models=missing["model"].to_list())


@reread_if_vanished
def run_daily_summary(home: Home, day: date, query: ReportQuery) -> DailySummary:
    """The seed's daily report of `day` (in `query.tz`), for `query.agents` or everyone."""
    query = check_query(ReportQuery(agents=query.agents, tz=query.tz, since=day, until=day,
                                    cost_mode=query.cost_mode))
    cells = open_cells(home, query, ["agent", "_date", "task"])
    progress = filter_rows(with_local_date(open_events(home, "task_progress"), query.tz), query)
    return DailySummary(day=day, agents=daily_totals(cells, progress, day).collect())


@reread_if_vanished
def run_usage(home: Home, today: date, query: ReportQuery) -> pl.DataFrame:
    """Tokens and cost today, this week and all time per agent, as of `today` in `query.tz`."""
    return usage_windows(open_cells(home, check_query(query), ["agent", "_date"]),
                         today).collect()


@reread_if_vanished
def run_context_report(home: Home, query: ReportQuery) -> pl.DataFrame:
    """Per role: context compilations and their estimated cache hit ratio."""
    compiled = open_events(home, "context_compiled")
    estimates = context_estimates(compiled)
    selected = filter_rows(with_local_date(estimates, check_query(query).tz), query)
    return context_summary(selected).collect()
