"""Counted rows: what each event contributes to the token and cost totals (DESIGN.md
"Counting tokens"), as pure `LazyFrame -> LazyFrame` functions shared by the rollups that
compaction keeps and the reports that read them.

agent_token_usage rows count as they are; a task_progress snapshot counts the growth of
its cumulative `tokens_used` since the (agent, task)'s previous snapshot; a
context_compiled event carries estimates of its input and cache tokens.
"""

from __future__ import annotations

import polars as pl

BUCKETS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
           "other_tokens")
ENVELOPE = ("ts", "agent", "role", "phase", "session_id", "task", "model", "project", "branch",
            "host")
NANO = 1_000_000_000
# An `extra` counter in task_progress.tokens_used JSON text: `"name": 123`.
_EXTRA_COUNTER = r'"\s*:\s*[0-9]+'


def _envelope(frame: pl.LazyFrame) -> list[pl.Expr]:
    """The envelope columns of counted rows; those trimmed away by `trim` come back as nulls."""
    present = set(frame.collect_schema().names())
    return [pl.col(c) if c in present else pl.lit(None, pl.String).alias(c) for c in ENVELOPE]


def usage_rows(usage: pl.LazyFrame, keep: tuple[str, ...] = ()) -> pl.LazyFrame:
    """agent_token_usage events as counted rows: deltas, summed as they are (`keep`:
    further columns to keep, such as event_id)."""
    return usage.select(
        *keep,
        *_envelope(usage),
        *(pl.col(name).fill_null(0) for name in BUCKETS if name != "other_tokens"),
        pl.lit(0, pl.Int64).alias("other_tokens"),
        pl.col("cache_write_1h_tokens").fill_null(0),
        "cost_usd",
    )


def snapshot_totals(progress: pl.LazyFrame) -> pl.LazyFrame:
    """task_progress snapshots that carry tokens_used, with their cumulative counts:
    `input_tokens` (prompt), `output_tokens` (completion), `other_tokens` (what `total`
    has beyond those) and `_total`; `model` is tokens_used's own model if it names one."""
    tokens = pl.col("tokens_used")
    prompt = tokens.struct.field("prompt").fill_null(0)
    completion = tokens.struct.field("completion").fill_null(0)
    extras = (tokens.struct.field("extra").str.extract_all(_EXTRA_COUNTER)
              .list.eval(pl.element().str.extract(r"([0-9]+)$").cast(pl.Int64))
              .list.sum().fill_null(0))
    total = pl.coalesce(tokens.struct.field("total"), prompt + completion + extras)
    return progress.filter(tokens.is_not_null()).with_columns(
        input_tokens=prompt, output_tokens=completion,
        other_tokens=(total - prompt - completion).clip(lower_bound=0), _total=total,
        model=pl.coalesce(tokens.struct.field("model"), "model"))


def snapshot_increments(progress: pl.LazyFrame) -> pl.LazyFrame:
    """task_progress snapshots as counted rows: the growth of `tokens_used` per (agent, task)."""
    cumulative = ("input_tokens", "output_tokens", "other_tokens", "_total")
    snapshots = snapshot_totals(progress).sort("agent", "task", "ts", "_source", "_offset")
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


def nano_usd(usd: pl.Expr) -> pl.Expr:
    """USD as whole nano-dollars: integer sums are exact, so no total depends on row order."""
    return (usd * NANO).round().cast(pl.Int64)


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
