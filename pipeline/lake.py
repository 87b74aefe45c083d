"""Reading events back: the Delta lake plus the not-yet-compacted stage, each event once.

Every reader (reports, progress, usage, budgets) goes through `scan_events`, so the
duplicate rule of DESIGN.md (same event_id counts once) is enforced in one place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import polars as pl

from pipeline.checkpoint import read_watermark
from pipeline.config import Home
from pipeline.errors import DamagedFile, native_stderr_captured
from pipeline.frames import conform, stage_schema
from pipeline.ledger import REBUILD_HINT, open_table, stream_batch, table_path
from pipeline.schemas import SchemaSet, load_schemas
from pipeline.stage import BatchId, staged_files

READ_ATTEMPTS = 5
P = ParamSpec("P")
T = TypeVar("T")
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
STAGE_HINT = ("run `tally compact`: it sets the damaged file aside and stages its events "
              "again from the logs")


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
    held: dict[str, int] = {}
    parts = []
    for batch, frame in staged:
        if batch.stream not in held:
            held[batch.stream] = stream_batch(table, batch.stream)
        if batch.number > held[batch.stream]:
            parts.append(conform(frame.lazy(), schema))
    if table is not None:
        parts.insert(0, conform(pl.scan_delta(table), schema))
    return pl.concat(parts, how="vertical") if parts else None


def _read_stage(home: Home, event_type: str) -> list[tuple[BatchId, pl.DataFrame]]:
    frames = []
    for batch, path in staged_files(home.stage, event_type, read_watermark(home.state)):
        try:
            frames.append((batch, pl.read_ipc(path)))
        except FileNotFoundError:
            continue  # compacted meanwhile
        except (OSError, pl.exceptions.ComputeError) as exc:
            raise DamagedFile("stage file", path, _first_line(exc), hint=STAGE_HINT) from exc
    return frames


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


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


def reread_if_vanished(read: Callable[P, T]) -> Callable[P, T]:
    """Run a read again when a file of the table version it opened was deleted meanwhile
    (`vacuum` with a short retention, after an `optimize`): the next try opens the
    table's current version."""

    @functools.wraps(read)
    def again(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(READ_ATTEMPTS):
            try:
                with native_stderr_captured():  # a Polars panic's report, when a file went
                    return read(*args, **kwargs)
            except (OSError, pl.exceptions.PolarsError) as exc:
                if not _vanished(exc):
                    raise
                if attempt == READ_ATTEMPTS - 1:
                    missing = getattr(exc, "filename", None) or str(exc).rpartition(": ")[2]
                    raise DamagedFile("lake file", Path(missing), "it is missing",
                                      hint=REBUILD_HINT) from exc
        raise AssertionError("unreachable")

    return again


def _vanished(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, FileNotFoundError) or "No such file" in text or "os error 2)" in text
