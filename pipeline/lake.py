"""Reading events back: the Delta lake plus the not-yet-compacted stage, each event once.

The lake holds each event_id once (compaction keeps the rule on write: pipeline.resolve).
Staged rows are deduplicated among themselves, and those whose event_id the lake holds
too are ranked against the lake's row by the same rule: one of the two counts. Every
reader (reports, progress, usage, budgets) goes through `open_events`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import polars as pl

from pipeline.checkpoint import read_watermark
from pipeline.config import Home
from pipeline.dedupe import ID_HASH, ORIGIN, dedupe, id_hash, losers, matching_hashes
from pipeline.errors import DamagedFile, native_stderr_captured
from pipeline.frames import conform, stage_schema
from pipeline.ledger import HOST, REBUILD_HINT, open_table, stream_batch, table_path
from pipeline.resolve import needs_upgrade
from pipeline.schemas import SchemaSet, load_schemas
from pipeline.stage import BatchId, staged_files

if TYPE_CHECKING:
    from deltalake import DeltaTable

READ_ATTEMPTS = 5
P = ParamSpec("P")
T = TypeVar("T")
STAGE_HINT = ("run `tally compact`: it sets the damaged file aside and stages its events "
              "again from the logs")


class Events:
    """A type's events, each once: the lake's rows less those a staged row `replaces`
    (their event_ids and UTC dates), plus the staged rows that count. `raw` is the table's
    scan, with its `date` partition column, that `lake` conforms to the stage's columns.

    Without staged rows the table is opened only when its rows are asked for: a report the
    rollups answer alone never opens it.
    """

    def __init__(self, stage: pl.LazyFrame | None, replaced: pl.DataFrame, *,
                 table: Callable[[], DeltaTable | None] | None = None,
                 schema: dict[str, pl.DataType] | None = None, event_type: str = "") -> None:
        self.stage = stage
        self.replaced = replaced
        self._table = table
        self.schema = schema
        self.event_type = event_type

    @functools.cached_property
    def _scans(self) -> tuple[pl.LazyFrame | None, pl.LazyFrame | None]:
        table = self._table() if self._table is not None else None
        if table is None or self.schema is None:
            return None, None
        raw = pl.scan_delta(table)
        if needs_upgrade(table):  # written before the rule was kept on write: apply it here
            return None, dedupe(conform(raw, self.schema), self.event_type)
        return raw, conform(raw, self.schema)

    @property
    def raw(self) -> pl.LazyFrame | None:
        """The table's scan (with `date`), None without a table (or one to upgrade)."""
        return self._scans[0]

    @property
    def lake(self) -> pl.LazyFrame | None:
        """The table's rows in the stage's columns, None without a table."""
        return self._scans[1]

    def all(self, dates: pl.Expr | None = None) -> pl.LazyFrame | None:
        """Every event, once; with `dates` (an expression on the UTC `date`), only the lake
        partitions it selects are read (the staged rows are all kept)."""
        parts = [self.kept_lake(dates), self.stage]
        found = [part for part in parts if part is not None]
        return pl.concat(found, how="vertical") if found else None

    def kept_lake(self, dates: pl.Expr | None = None) -> pl.LazyFrame | None:
        """The lake's rows less those replaced by staged rows; with `dates`, only the
        partitions it selects (read from those alone)."""
        lake = self.lake
        if dates is not None and self.raw is not None and self.schema is not None:
            lake = conform(self.raw.filter(dates), self.schema)
        if lake is None or self.replaced.is_empty():
            return lake
        return lake.join(self.replaced.lazy().select("event_id"), on="event_id", how="anti")

    def replaced_rows(self) -> pl.LazyFrame | None:
        """The lake's rows that staged rows replace (read from their partitions alone)."""
        if self.replaced.is_empty() or self.raw is None or self.schema is None:
            return None
        days = self.replaced.get_column("date").unique().implode()
        return conform(self.raw.filter(pl.col("date").is_in(days)), self.schema).join(
            self.replaced.lazy().select("event_id"), on="event_id", how="semi")


def scan_events(home: Home, event_type: str,
                schemas: SchemaSet | None = None) -> pl.LazyFrame | None:
    """All events of a type, compacted or still staged, each once; None if none."""
    return open_events(home, event_type, schemas).all()


def open_events(home: Home, event_type: str, schemas: SchemaSet | None = None) -> Events:
    """A type's lake rows and staged rows, each event once (see `Events`)."""
    schema = {**stage_schema(event_type, schemas or load_schemas()), HOST: pl.String()}
    # Stage first, table second. A stage file is deleted only after its commit, so one that
    # vanishes before we read it is in the table we open next; batches read from the stage
    # that the table already holds are dropped.
    staged = _read_stage(home, event_type)
    path = table_path(home, event_type)
    if not staged:  # the table is opened when its rows are asked for
        return Events(None, _NO_EVENT_IDS, table=lambda: open_table(path), schema=schema,
                      event_type=event_type)
    table = open_table(path)
    held: dict[str, int] = {}
    parts = []
    for batch, frame in staged:
        if batch.stream not in held:
            held[batch.stream] = stream_batch(table, batch.stream, home.host,
                                              home.lake_location.is_local)
        if batch.number > held[batch.stream]:  # staged here: this host's
            parts.append(conform(frame.lazy(), schema).with_columns(
                pl.col(HOST).fill_null(home.host)))
    stage = dedupe(pl.concat(parts, how="vertical"), event_type) if parts else None
    opened = Events(stage, _NO_EVENT_IDS, table=lambda: table, schema=schema,
                    event_type=event_type)
    if stage is None or opened.raw is None or opened.lake is None:
        if stage is not None and opened.lake is not None:  # an older tally's table
            everything = dedupe(pl.concat([opened.lake, stage]), event_type)
            return Events(everything, _NO_EVENT_IDS, schema=schema, event_type=event_type)
        return opened
    return _against_lake(opened, opened.lake, opened.raw, stage, event_type, schema)


_NO_EVENT_IDS = pl.DataFrame(schema={"event_id": pl.String, "date": pl.Date})


def _against_lake(opened: Events, lake: pl.LazyFrame, raw: pl.LazyFrame, stage: pl.LazyFrame,
                  event_type: str, schema: dict[str, pl.DataType]) -> Events:
    """Staged rows ranked against the lake's rows of the same event_ids."""
    matched = matching_hashes(stage.select(id_hash()), raw.select(ID_HASH))
    if matched.is_empty():
        return opened
    wanted = pl.col(ID_HASH).is_in(matched.implode())
    candidates = pl.concat([
        stage.with_columns(id_hash()).filter(wanted).with_columns(pl.lit(1, pl.Int8).alias(ORIGIN)),
        conform(raw.filter(wanted), schema).with_columns(pl.lit(0, pl.Int8).alias(ORIGIN)),
    ], how="diagonal_relaxed").collect(engine="streaming")
    lost = losers(candidates, event_type, [ORIGIN, "event_id", "ts"])
    beaten = lost.filter(pl.col(ORIGIN) == 1).select("event_id")
    replaced = lost.filter(pl.col(ORIGIN) == 0).select(
        "event_id", pl.col("ts").dt.date().alias("date"))
    kept = stage.join(beaten.lazy(), on="event_id", how="anti") if beaten.height else stage
    table = opened._table
    return Events(kept, replaced, table=table, schema=schema, event_type=event_type)


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
                    raise DamagedFile("lake file", missing, "it is missing",
                                      hint=REBUILD_HINT) from exc
        raise AssertionError("unreachable")

    return again


def _vanished(exc: BaseException) -> bool:
    text = str(exc)
    return (isinstance(exc, FileNotFoundError) or "No such file" in text or "os error 2)" in text
            or ("Object at location" in text and "not found" in text))  # an object store's
