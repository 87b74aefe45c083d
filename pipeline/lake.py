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
from pipeline.schemas import SchemaSet, load_schemas
from pipeline.stage import conform, scan_stage_files, stage_schema, staged_files

# The Delta app id under which compaction records the highest tailer batch it committed.
APP_ID = "tally-stage"
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
READ_ATTEMPTS = 5


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
    schema = stage_schema(event_type, schemas or load_schemas())
    for attempt in range(READ_ATTEMPTS):
        try:
            frame = _scan_once(home, event_type, schema)
            return None if frame is None else dedupe(frame, event_type)
        except FileNotFoundError:
            # A compaction removed stage files we had listed: they are in a newer lake version.
            if attempt == READ_ATTEMPTS - 1:
                raise
    return None


def _scan_once(home: Home, event_type: str,
               schema: dict[str, pl.DataType]) -> pl.LazyFrame | None:
    watermark = committed_batch(home.state)
    # List the stage before opening the table: a batch gone from the listing was deleted
    # after its commit, so the table opened next has it. Listed batches the table already
    # has are skipped; a listed file deleted before we read it raises, and the caller retries.
    listed = staged_files(home.stage, event_type, watermark)
    table = open_table(table_path(home, event_type))
    committed = lake_batch(table)
    parts: list[pl.LazyFrame] = []
    if table is not None:
        parts.append(conform(pl.scan_delta(table), schema))
    staged = scan_stage_files([path for batch, path in listed if batch > committed], schema)
    if staged is not None:
        parts.append(staged.collect().lazy())  # read now, inside the caller's retry
    if not parts:
        return None
    return pl.concat(parts, how="vertical")


def dedupe(frame: pl.LazyFrame, event_type: str) -> pl.LazyFrame:
    """One row per event_id; for token usage the row with the largest total wins."""
    # Hash tables keyed by millions of distinct id strings are slow; sorting their u64
    # hashes is not. An id whose hash occurs once is unique, so only the rows whose hash
    # repeats (true duplicates, or a rare collision) go through the full rule.
    key = pl.col("event_id").hash().alias("_key")
    keys = frame.select(key).sort("_key")
    repeated = keys.filter(pl.col("_key") == pl.col("_key").shift(1)).unique()
    marked = frame.with_columns(key)
    once = marked.join(repeated, on="_key", how="anti").drop("_key")
    many = marked.join(repeated, on="_key", how="semi").drop("_key")
    if event_type == "agent_token_usage":
        total = pl.sum_horizontal(pl.col(c).fill_null(0) for c in TOKEN_COLUMNS)
        many = many.sort(total, "_source", "_offset", descending=[True, False, False],
                         nulls_last=True)
    return pl.concat([once, many.unique(subset="event_id", keep="first", maintain_order=True)])
