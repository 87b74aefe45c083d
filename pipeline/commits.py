"""One Delta commit of a compaction: its staged rows read, the duplicate rule's decisions
applied (pipeline.resolve), rows the lake refuses quarantined (pipeline.poison), and the
write itself: an append, or, when lake rows are replaced, one commit that writes the
partitions they are in anew, without them and with their winners. Either way one atomic
commit, carrying the streams' transactions (pipeline.ledger) and the dates it touched
(`tally.dates`, which the rollups follow).

Every commit that adds or deletes events also carries `Transaction(FLEET_APP, ...)`. Hosts
sharing a lake all do, so delta-rs refuses the second of two commits made from the same
table version ("concurrent transaction"): the duplicate rule's decisions, taken against the
version a commit was planned on, always hold for the version it lands on. A refused commit
raises `CommitConflict`, and compaction plans again (pipeline.compactor).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError

from pipeline.dedupe import id_hash
from pipeline.errors import LakeError, StorageError, native_stderr_captured
from pipeline.ledger import HOST, dates_sql, open_table
from pipeline.maintenance import (
    data_files,
    is_storage_refusal,
    panic_summary,
    remove_uncommitted_files,
)
from pipeline.poison import Unwritable, scratch_probe, split_writable
from pipeline.resolve import FILE, ROW, Resolution, staged_scan
from pipeline.storage import REMOTE_HINT, Location, is_unreachable

DATES_KEY = "tally.dates"
FLEET_APP = "tally-lake"  # every commit of events carries it (see above)
WRITER = WriterProperties(compression="ZSTD")
PLAIN_SLICE_ROWS = 65_536


@dataclass(frozen=True)
class Commit:
    """One Delta commit to make: its table, its stage files (FILE numbers from `first`),
    per stream (by app id) the highest batch among them, the run's decisions, and the
    host that staged the rows."""

    event_type: str
    table: Location
    files: list[Path]
    batches: dict[str, int]
    first: int
    resolution: Resolution
    host: str

    @property
    def numbers(self) -> set[int]:
        """The FILE numbers of this commit's stage files."""
        return set(range(self.first, self.first + len(self.files)))


@dataclass(frozen=True)
class Rows:
    """A commit's rows read ahead (with FILE and ROW), and the files that failed to read."""

    data: pl.DataFrame
    unreadable: list[tuple[int, Path]]


def add_partition_date(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The partition column: the event's UTC date."""
    return frame.with_columns(pl.col("ts").dt.date().alias("date"))


def read_rows(commit: Commit) -> Rows:
    """The rows of a commit's stage files; a file that fails to read is named, the rest read."""
    try:
        return Rows(add_partition_date(staged_scan(commit.files, commit.first)).collect(), [])
    except (OSError, pl.exceptions.PolarsError):
        pass  # find the file that fails: the others are read
    frames, unreadable = [], []
    for number, path in zip(sorted(commit.numbers), commit.files, strict=True):
        try:
            frames.append(add_partition_date(staged_scan([path], number)).collect())
        except (OSError, pl.exceptions.PolarsError):
            unreadable.append((number, path))
    data = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return Rows(data, unreadable)


class CommitConflict(Exception):
    """Another writer committed to the table since the commit was planned: plan again."""


class RowsRefused(Exception):
    """A write failed for something in the rows, not the file system."""

    def __init__(self, error: LakeError) -> None:
        super().__init__(error.message)
        self.error = error


def write_commit(commit: Commit, data: pl.DataFrame, table: DeltaTable | None
                 ) -> tuple[pl.DataFrame, list[Unwritable]]:
    """Write a commit's rows under the run's decisions, through `table` (the version they
    were planned on; None: no table yet). Returns what was written and the rows the lake
    refused (to be quarantined); CommitConflict if another writer came first."""
    rows, unwritable = split_writable(commit.resolution.kept(data))
    tombstones = commit.resolution.tombstones(commit.numbers)
    try:
        _write(commit, table, rows, tombstones)
    except RowsRefused as refused:
        probe, cleanup = scratch_probe(_trial_write)
        try:
            rows, more = split_writable(rows, probe)
        finally:
            cleanup()
        if not more:
            raise refused.error from refused
        unwritable += more
        _write(commit, table, rows, tombstones)
    return rows, unwritable


def _write(commit: Commit, table: DeltaTable | None, rows: pl.DataFrame,
           tombstones: pl.DataFrame) -> None:
    """One Delta commit; a failed one leaves no files behind, and says why in one line."""
    # A write adds files only to the partitions of its rows and of the rows it deletes.
    dates = date_texts(pl.concat([rows["date"], tombstones["date"]]))
    before = data_files(commit.table, dates)
    try:
        with native_stderr_captured() as captured:
            if tombstones.is_empty():
                _append(commit, table, rows)
            else:
                _replace(commit, table, rows, tombstones)
    except Exception as exc:
        remove_uncommitted_files(commit.table, before=before, dates=dates)
        if isinstance(exc, CommitFailedError):
            raise CommitConflict(str(exc)) from exc
        panic = panic_summary("".join(captured))
        detail = (str(exc).splitlines() or [""])[0] or panic or type(exc).__name__
        if is_storage_refusal(exc, panic):
            raise StorageError(f"cannot write the lake: {detail}", path=str(commit.table),
                               hint="free space or fix the permissions, then run compact "
                                    "again; the stage is untouched, nothing was lost") from exc
        if not commit.table.is_local and is_unreachable(f"{exc} {panic}"):
            raise LakeError(f"cannot write the lake table {commit.table}: {detail[:300]}",
                            hint=REMOTE_HINT) from exc
        error = LakeError(f"commit to {commit.table} failed: {detail}",
                          hint="the stage is untouched; fix the cause and run compact again")
        raise RowsRefused(error) from exc


def plain_arrow(frame: pl.DataFrame) -> pa.RecordBatchReader:
    """Rows as an Arrow stream with plain string types: Polars' string views would be
    written into the Parquet files as they are, and some readers of the lake (Daft 0.7)
    refuse those. Converted a slice at a time, as the writer reads them (2M events: peak
    RSS 612-633 MB against 667-671 converted whole, as fast)."""
    plain = pl.CompatLevel.oldest()
    schema = frame.head(0).to_arrow(compat_level=plain).schema
    batches = (batch for part in frame.iter_slices(PLAIN_SLICE_ROWS)
               for batch in part.to_arrow(compat_level=plain).to_batches())
    return pa.RecordBatchReader.from_batches(schema, batches)


def lake_rows(rows: pl.DataFrame, host: str) -> pl.DataFrame:
    """Staged rows as the lake holds them: with `_id_hash` and the host that staged them,
    without FILE and ROW."""
    return rows.drop(FILE, ROW, strict=False).with_columns(id_hash(),
                                                           pl.lit(host, pl.String).alias(HOST))


def date_texts(dates: pl.Series) -> list[str]:
    """The distinct dates of a column, as ISO text, in order."""
    return sorted(dates.unique().drop_nulls().cast(pl.String).to_list())


def _properties(commit: Commit, dates: pl.Series) -> CommitProperties:
    touched = ",".join(date_texts(dates))
    return CommitProperties(
        app_transactions=[*(Transaction(app, batch) for app, batch in commit.batches.items()),
                          fleet_transaction()],
        custom_metadata={"tally.batch": str(max(commit.batches.values())),
                         DATES_KEY: touched})


def fleet_transaction() -> Transaction:
    """The transaction every commit of events carries (its version: when, in ms)."""
    return Transaction(FLEET_APP, time.time_ns() // 1_000_000)


def _append(commit: Commit, table: DeltaTable | None, rows: pl.DataFrame) -> None:
    # Through the table opened before, if any: the commit brings it up to date (ledger).
    if table is None:
        write_deltalake(commit.table.uri, plain_arrow(lake_rows(rows, commit.host)),
                        mode="append",
                        partition_by=["date"], schema_mode="merge", writer_properties=WRITER,
                        commit_properties=_properties(commit, rows["date"]),
                        storage_options=commit.table.storage_options)
        return
    write_deltalake(table, plain_arrow(lake_rows(rows, commit.host)), mode="append",
                    partition_by=["date"],
                    schema_mode="merge", writer_properties=WRITER,
                    commit_properties=_properties(commit, rows["date"]))


def _replace(commit: Commit, table: DeltaTable | None, rows: pl.DataFrame,
             tombstones: pl.DataFrame) -> None:
    """Insert `rows` and delete the lake rows `tombstones` (event_id, date) they replace:
    the partitions of every date they touch written anew, in one commit.

    Not a Delta MERGE: delta-rs 1.6 writes a MERGE's files with Arrow string views, which
    some readers of the lake (Daft 0.7) refuse; an overwrite writes the types it is given."""
    touched = pl.concat([rows["date"], tombstones["date"]])
    days = date_texts(touched)
    table = table or DeltaTable(commit.table.uri, storage_options=commit.table.storage_options)
    current = (pl.scan_delta(table).filter(pl.col("date").cast(pl.String).is_in(days))
               .collect(engine="streaming"))
    kept = current.join(tombstones.select("event_id", "date"), on=["event_id", "date"],
                        how="anti")
    written = pl.concat([kept, lake_rows(rows, commit.host)], how="diagonal_relaxed")
    write_deltalake(table, plain_arrow(written), mode="overwrite", schema_mode="merge",
                    predicate=f"date IN {dates_sql(days)}", writer_properties=WRITER,
                    commit_properties=_properties(commit, touched))


def _trial_write(uri: str, rows: pl.DataFrame) -> None:
    with native_stderr_captured():
        write_deltalake(uri, lake_rows(rows, ""), mode="append", partition_by=["date"],
                        schema_mode="merge")


def create_table(place: Location, rows: pl.DataFrame, host: str) -> DeltaTable:
    """An empty table with the columns of `rows`, or the one another writer made first (in
    an object store, hosts may race to make one)."""
    from deltalake.exceptions import DeltaError

    try:
        with native_stderr_captured():
            write_deltalake(place.uri, plain_arrow(lake_rows(rows.head(0), host)), mode="error",
                            partition_by=["date"], storage_options=place.storage_options)
    except (DeltaError, OSError) as exc:
        made = open_table(place)  # by another host meanwhile, or not at all
        if made is None:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise LakeError(f"cannot make the lake table {place}: {detail}",
                            hint=REMOTE_HINT) from exc
        return made
    made = open_table(place)
    assert made is not None
    return made


def rewrite_dates(table: DeltaTable, dates: list[str], rows: pl.DataFrame) -> None:
    """Replace the partitions of `dates` with `rows` (which hold `_id_hash`) in one commit."""
    with native_stderr_captured():
        write_deltalake(table, plain_arrow(rows.drop(FILE, ROW, strict=False)), mode="overwrite",
                        predicate=f"date IN {dates_sql(dates)}", schema_mode="merge",
                        writer_properties=WRITER,
                        commit_properties=CommitProperties(
                            app_transactions=[fleet_transaction()],
                            custom_metadata={DATES_KEY: ",".join(dates)}))
