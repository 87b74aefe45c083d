"""Reading events back: the Delta lake plus the not-yet-compacted stage, each event once.

Every reader (reports, progress, usage, budgets) goes through `scan_events`, so the
duplicate rule of DESIGN.md (same event_id counts once) is enforced in one place.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from pipeline.checkpoint import committed_batch
from pipeline.config import Home
from pipeline.frames import conform, stage_schema
from pipeline.schemas import SchemaSet, load_schemas
from pipeline.stage import staged_files

# The Delta app id under which compaction records the highest tailer batch it committed.
APP_ID = "tally-stage"
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def table_path(home: Home, event_type: str) -> Path:
    """Where the Delta table of an event type lives."""
    return home.lake / event_type


def open_table(path: Path) -> DeltaTable | None:
    """The Delta table at `path`, or None when there is none yet."""
    try:
        return DeltaTable(str(path))
    except TableNotFoundError:
        return None


def lake_batch(table: DeltaTable | None) -> int:
    """The highest tailer batch already committed into a table (0 for none)."""
    if table is None:
        return 0
    version = table.transaction_version(APP_ID)
    return int(version) if version is not None else 0


def scan_events(home: Home, event_type: str,
                schemas: SchemaSet | None = None) -> pl.LazyFrame | None:
    """All events of a type, compacted or still staged, duplicates removed; None if none."""
    union = union_events(home, event_type, stage_schema(event_type, schemas or load_schemas()))
    return None if union is None else dedupe(union, event_type)


def union_events(home: Home, event_type: str,
                 schema: dict[str, pl.DataType]) -> pl.LazyFrame | None:
    """Lake rows plus the stage batches the lake does not hold yet, before dedupe."""
    # Stage first, table second. A stage file is deleted only after its commit, so one that
    # vanishes before we read it is in the table we open next; batches read from the stage
    # that the table already holds are dropped.
    staged = _read_stage(home, event_type)
    table = open_table(table_path(home, event_type))
    committed = lake_batch(table)
    parts = [conform(frame.lazy(), schema) for batch, frame in staged if batch > committed]
    if table is not None:
        parts.insert(0, conform(pl.scan_delta(table), schema))
    return pl.concat(parts, how="vertical") if parts else None


def _read_stage(home: Home, event_type: str) -> list[tuple[int, pl.DataFrame]]:
    frames = []
    for batch, path in staged_files(home.stage, event_type, committed_batch(home.state)):
        try:
            frames.append((batch, pl.read_ipc(path)))
        except FileNotFoundError:
            continue  # compacted meanwhile
    return frames


def dedupe(frame: pl.LazyFrame, event_type: str) -> pl.LazyFrame:
    """One row per event_id: for token usage the largest total wins; then the first by source."""
    # Hash tables keyed by millions of distinct id strings are slow; sorting their u64
    # hashes is not. An id whose hash occurs once is unique, so only the rows whose hash
    # repeats (true duplicates, or a rare collision) go through the full rule.
    key = pl.col("event_id").hash().alias("_key")
    keys = frame.select(key).sort("_key")
    repeated = keys.filter(pl.col("_key") == pl.col("_key").shift(1)).unique()
    marked = frame.with_row_index("_row").with_columns(key)
    once = marked.join(repeated, on="_key", how="anti").drop("_key", "_row")
    many = marked.join(repeated, on="_key", how="semi").drop("_key")
    order: list[pl.Expr] = [pl.col("_source"), pl.col("_offset"), pl.col("_row")]
    if event_type == "agent_token_usage":
        order.insert(0, -pl.sum_horizontal(pl.col(c).fill_null(0) for c in TOKEN_COLUMNS))
    first = many.sort(order).unique(subset="event_id", keep="first", maintain_order=True)
    return pl.concat([once, first.drop("_row")])
