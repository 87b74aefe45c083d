"""Rollup tables, kept by compaction, so that reports never scan every event.

Four Delta tables under `lake/_rollups/`, each derived from one event table:

- `usage` (from agent_token_usage): per UTC date, 15-minute `bucket`, host, agent, role,
  phase, model, project, branch, long-context class and whether the producer gave a cost: events
  and token sums, and the producers' cost. A 15-minute bucket lies within one local day in
  every time zone whose offset is a multiple of 15 minutes, which covers today's zones
  (+05:45 too).
  The class (`prompt_above`, `prompt_upto`) is the pair of long-context thresholds around
  a request's prompt, so any price table whose thresholds are among them prices it exactly.
- `usage_tasks`: per date, the (agent, task) pairs with usage rows: snapshot increments of
  those pairs do not count (DESIGN.md's precedence rule). Every report with increments
  reads all of it, and it is small (a row per date and pair), so it is one file, not
  partitioned, and rewritten whole by each update.
- `increments` (from task_progress): each snapshot's increment over its (agent, task)'s
  previous one, with its envelope.
- `context` (from context_compiled): each compilation with its cache estimates.

A rollup records, as `Transaction(SOURCE_APP, v)`, the version v of its event table it
reflects. Catching up reads that table's commits after v: each names the dates it touched
(`tally.dates`), and only those dates, or the pairs with rows on them, are computed again.
A commit naming none (or history cleaned away) makes the rollup computed again whole. Each
step recomputes from the events as they are, so it can be killed and run again. Hosts
sharing a lake catch up the same rollups: their commits all carry SOURCE_APP, so delta-rs
refuses the second of two made at once, and the loser starts over (finding, often, that
the winner left nothing to do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError

from pipeline.commits import plain_arrow
from pipeline.config import Home
from pipeline.counting import context_estimates, nano_usd, snapshot_increments, usage_rows
from pipeline.errors import LakeError, native_stderr_captured
from pipeline.ledger import HOST, ROLLUP_NAMES, ROLLUPS_DIR, dates_sql, open_table, table_path
from pipeline.storage import Location, wait_before_retry

SOURCE_APP = "tally-source"
DATES_KEY = "tally.dates"
BUCKET = "15m"
USAGE, PROGRESS, CONTEXT = "agent_token_usage", "task_progress", "context_compiled"
SOURCES = {"usage": USAGE, "usage_tasks": USAGE, "increments": PROGRESS, "context": CONTEXT}
assert tuple(SOURCES) == ROLLUP_NAMES
SYNC_ATTEMPTS = 20  # tries of a rollup's catching up while other hosts catch it up too
USAGE_KEYS = ("date", "bucket", "host", "agent", "role", "phase", "model", "project",
              "branch", "prompt_above", "prompt_upto", "producer_cost")
USAGE_SUMS = ("events", "input_tokens", "output_tokens", "cache_read_tokens",
              "cache_write_tokens", "cache_write_1h_tokens", "cost_nano_usd")
PAIRS = {"increments": ("agent", "task"), "context": ("role", "session_id")}
# Maintenance commits change files, not rows: a rollup has nothing to catch up for them.
_NO_CHANGE = {"OPTIMIZE", "VACUUM START", "VACUUM END"}


def rollup_path(home: Home, name: str) -> Location:
    """Where a rollup table lives."""
    return home.lake_location / ROLLUPS_DIR / name


def rollup_dirs(home: Home) -> list[Location]:
    """The rollup tables that exist."""
    places = [rollup_path(home, name) for name in SOURCES]
    if not home.lake_location.is_local:
        return [place for place in places if open_table(place) is not None]
    return [place for place in places if (place.path / "_delta_log").is_dir()]


# ---------------------------------------------------------------- building (pure)


def prompt_class(thresholds: Sequence[int]) -> list[pl.Expr]:
    """`prompt_above` (the largest threshold a row's prompt exceeds, 0 for none) and
    `prompt_upto` (the smallest one it does not, null for none)."""
    prompt = pl.col("input_tokens") + pl.col("cache_read_tokens") + pl.col("cache_write_tokens")
    above: pl.Expr = pl.lit(0, pl.Int64)
    upto: pl.Expr = pl.lit(None, pl.Int64)
    for threshold in sorted(set(thresholds)):
        above = pl.when(prompt > threshold).then(pl.lit(threshold, pl.Int64)).otherwise(above)
    for threshold in sorted(set(thresholds), reverse=True):
        upto = pl.when(prompt <= threshold).then(pl.lit(threshold, pl.Int64)).otherwise(upto)
    return [above.alias("prompt_above"), upto.alias("prompt_upto")]


def usage_rollup(usage: pl.LazyFrame, thresholds: Sequence[int]) -> pl.LazyFrame:
    """The usage rollup of agent_token_usage events (each once)."""
    rows = usage_rows(usage).with_columns(
        # 1-hour writes are part of cache_write; never price more of them than were written.
        pl.min_horizontal("cache_write_1h_tokens", "cache_write_tokens")
        .alias("cache_write_1h_tokens"),
        *prompt_class(thresholds),
        producer_cost=pl.col("cost_usd").is_not_null(),
        cost_nano_usd=nano_usd(pl.col("cost_usd")),
        bucket=pl.col("ts").dt.truncate(BUCKET))
    return (rows.with_columns(date=pl.col("bucket").dt.date())
            .group_by(*USAGE_KEYS)
            .agg(pl.len().cast(pl.Int64).alias("events"),
                 *(pl.col(c).sum() for c in USAGE_SUMS if c != "events")))


def usage_task_pairs(usage: pl.LazyFrame) -> pl.LazyFrame:
    """Per UTC date, the (agent, task) pairs with usage rows."""
    return (usage.filter(pl.col("task").is_not_null())
            .select(pl.col("ts").dt.date().alias("date"), "agent", "task").unique())


def increment_rows(progress: pl.LazyFrame) -> pl.LazyFrame:
    """Each snapshot's increment, with `ts`, its envelope and its UTC date."""
    return snapshot_increments(progress).with_columns(date=pl.col("ts").dt.date())


def context_rows(compiled: pl.LazyFrame) -> pl.LazyFrame:
    """Each compilation's estimates, with its UTC date."""
    return (context_estimates(compiled)
            .select("ts", "role", "session_id", "agent", "task", "model", "phase",
                    "input_tokens_estimate", "cache_read_tokens_estimate",
                    "cache_write_tokens_estimate", "estimated")
            .with_columns(date=pl.col("ts").dt.date()))


# ---------------------------------------------------------------- keeping them


def touched_since(source: DeltaTable, version: int | None) -> set[str] | None:
    """The dates the source table's commits after `version` touched; None when that cannot
    be told (no version, a commit without dates, or history cleaned away)."""
    if version is None:
        return None
    newest = source.version()
    if version >= newest:
        return set()
    commits = {int(c["version"]): c for c in source.history(newest - version)
               if "version" in c}
    dates: set[str] = set()
    for number in range(version + 1, newest + 1):
        commit = commits.get(number)
        if commit is None:
            return None
        if DATES_KEY in commit:
            dates.update(d for d in str(commit[DATES_KEY]).split(",") if d)
        elif commit.get("operation") not in _NO_CHANGE:
            return None
    return dates


def reflected(rollup: DeltaTable | None) -> int | None:
    """The version of its event table a rollup reflects, None without a rollup."""
    if rollup is None:
        return None
    version = rollup.transaction_version(SOURCE_APP)
    return None if version is None else int(version)


def sync_rollups(home: Home, event_type: str, thresholds: Sequence[int],
                 retried: Callable[[], None] | None = None) -> list[str]:
    """Bring the rollups of an event table up to its current version; the names of those
    computed again whole. `retried` is called each time another host's commit came first."""
    whole = []
    for name in (n for n, t in SOURCES.items() if t == event_type):
        for attempt in range(1, SYNC_ATTEMPTS + 1):
            try:
                if _sync(home, name, event_type, thresholds):
                    whole.append(name)
                break
            except CommitFailedError as exc:  # another host's catching up came first
                if attempt == SYNC_ATTEMPTS:
                    raise LakeError(f"the rollup {name} kept changing under this host: {exc}",
                                    hint="run compact again; reports read the events "
                                         "meanwhile") from exc
                if retried is not None:
                    retried()
                wait_before_retry(attempt)
    return whole


def _sync(home: Home, name: str, event_type: str, thresholds: Sequence[int]) -> bool:
    """Bring one rollup up to its event table; whether it was computed again whole."""
    source = open_table(table_path(home, event_type))
    if source is None:
        return False
    path = rollup_path(home, name)
    rollup = open_table(path)
    touched = None if _outdated(name, rollup) else touched_since(source, reflected(rollup))
    if rollup is not None and touched is not None and not touched:
        return False
    _write(name, path, rollup, source, touched, thresholds)
    return touched is None


def _outdated(name: str, rollup: DeltaTable | None) -> bool:
    """Whether a usage rollup lacks a key column (written by an older tally)."""
    if name != "usage" or rollup is None:
        return False
    return not set(USAGE_KEYS) <= set(rollup.schema().to_arrow().names)


def _write(name: str, path: Location, rollup: DeltaTable | None, source: DeltaTable,
           touched: set[str] | None, thresholds: Sequence[int]) -> None:
    events = with_host(pl.scan_delta(source))
    properties = CommitProperties(app_transactions=[Transaction(SOURCE_APP, source.version())])
    if name in PAIRS:
        _write_pairs(name, path, rollup, events, touched, properties)
        return
    chosen = events if touched is None else events.filter(
        pl.col("date").cast(pl.String).is_in(sorted(touched)))
    if name == "usage_tasks":
        _write_whole(path, rollup, usage_task_pairs(chosen), touched, properties)
        return
    data = usage_rollup(chosen, thresholds).collect(engine="streaming")
    predicate = None if touched is None or rollup is None else _dates_in(touched)
    with native_stderr_captured():
        write_deltalake(path.uri if rollup is None else rollup, plain_arrow(data),
                        mode="overwrite", partition_by=["date"], predicate=predicate,
                        schema_mode="overwrite" if predicate is None else None,
                        commit_properties=properties,
                        storage_options=None if rollup is not None else path.storage_options)


def _write_whole(path: Location, rollup: DeltaTable | None, fresh: pl.LazyFrame,
                 touched: set[str] | None, properties: CommitProperties) -> None:
    """Rewrite an unpartitioned rollup as one file: its rows of the dates not touched, and
    `fresh`, the touched dates' rows computed again (every row when `touched` is None)."""
    parts = [fresh]
    if rollup is not None and touched is not None:
        parts.insert(0, pl.scan_delta(rollup).filter(
            ~pl.col("date").cast(pl.String).is_in(sorted(touched))))
    data = pl.concat(parts, how="diagonal_relaxed").collect(engine="streaming")
    # A table an older tally partitioned by date is made unpartitioned too.
    layout = rollup is None or bool(rollup.metadata().partition_columns)
    with native_stderr_captured():
        write_deltalake(path.uri if rollup is None else rollup, plain_arrow(data),
                        mode="overwrite",
                        partition_by=[] if layout else None,
                        schema_mode="overwrite" if layout else None,
                        commit_properties=properties,
                        storage_options=None if rollup is not None else path.storage_options)


def _write_pairs(name: str, path: Location, rollup: DeltaTable | None, events: pl.LazyFrame,
                 touched: set[str] | None, properties: CommitProperties) -> None:
    """Increments and context rows depend on every row of their pair (their order): the
    pairs with rows on the touched dates, before or after, are computed again whole, and
    the dates their rows are on are written anew in one commit."""
    build = increment_rows if name == "increments" else context_rows
    keys = list(PAIRS[name])
    if touched is None or rollup is None:
        data = build(events).collect(engine="streaming")
        with native_stderr_captured():
            write_deltalake(path.uri if rollup is None else rollup, plain_arrow(data),
                            mode="overwrite", partition_by=["date"],
                            schema_mode="overwrite", commit_properties=properties,
                            storage_options=None if rollup is not None
                            else path.storage_options)
        return
    current = pl.scan_delta(rollup)
    pair_of = _pair_columns(name)
    on_touched = pl.col("date").cast(pl.String).is_in(sorted(touched))
    pairs = pl.concat([events.filter(on_touched).select(pair_of),
                       current.filter(on_touched).select(keys)]).unique().collect()
    # Every date a pair has events on (its rows before were on these too: a commit that
    # deleted an event named the event's date), plus the touched dates themselves.
    dates = sorted(touched | set(
        events.select(*pair_of, "date").join(pairs.lazy(), on=keys, how="semi",
                                             nulls_equal=True)
        .select(pl.col("date").cast(pl.String).unique()).collect().to_series().to_list()))
    on_dates = pl.col("date").cast(pl.String).is_in(dates)
    again = build(events.filter(on_dates).with_columns(pair_of)
                  .join(pairs.lazy(), on=keys, how="semi", nulls_equal=True))
    others = current.filter(on_dates).join(pairs.lazy(), on=keys, how="anti", nulls_equal=True)
    data = pl.concat([others, again], how="diagonal_relaxed").collect(engine="streaming")
    with native_stderr_captured():
        write_deltalake(rollup, plain_arrow(data), mode="overwrite", partition_by=["date"],
                        predicate=_dates_in(dates), schema_mode="merge",
                        commit_properties=properties)


def with_host(events: pl.LazyFrame) -> pl.LazyFrame:
    """Events with the `host` column, null in a table written before hosts were recorded."""
    if HOST in events.collect_schema().names():
        return events
    return events.with_columns(pl.lit(None, pl.String).alias(HOST))


def _pair_columns(name: str) -> list[pl.Expr]:
    if name == "context":  # an agent without roles is its own role, as context_estimates says
        return [pl.coalesce("role", "agent").alias("role"), pl.col("session_id")]
    return [pl.col("agent"), pl.col("task")]


def _dates_in(dates: Iterable[str]) -> str:
    return "date IN " + dates_sql(dates)
