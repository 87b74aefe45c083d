"""Which staged rows a compaction run writes, and which lake rows they replace, so that
each event_id is in its table once after every commit (the rule: pipeline.dedupe).

Once per event type and run: the `_id_hash` of every pending stage row is matched against
the table's `_id_hash` column (one column scan, streamed) and against each other. Only the
rows whose hash matched are read whole and ranked. A staged row that loses is dropped from
its commit; a lake row that loses is deleted by the commit that holds its winner, in the
same Delta commit as the winner's insert. Decisions depend on nothing but the
rows, so a run killed between commits decides the same again.

A table written before tally kept the rule on write has no `_id_hash` and may hold
duplicates: `upgrade_table` rewrites it, partition by partition, once, with the column
written and each event_id kept once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

from pipeline.dedupe import ID_HASH, ORIGIN, best_per_id, id_hash, losers, matching_hashes

FILE, ROW = "_file", "_row"  # where a staged row is: its file's place in the run, its row

Rewrite = Callable[[list[str], pl.DataFrame], None]  # replaces those dates' partitions


@dataclass(frozen=True)
class Resolution:
    """A run's decisions for one table: staged rows to drop (by FILE and ROW) and lake
    rows to delete (event_id, date, and FILE of the staged row that replaces each)."""

    dropped: pl.DataFrame
    replaced: pl.DataFrame

    @classmethod
    def nothing(cls) -> Resolution:
        """No duplicates: every staged row is written as it is."""
        return cls(pl.DataFrame(schema={FILE: pl.Int64, ROW: pl.UInt32}),
                   pl.DataFrame(schema={"event_id": pl.String, "date": pl.Date,
                                        FILE: pl.Int64}))

    def kept(self, rows: pl.DataFrame) -> pl.DataFrame:
        """A commit's rows (with FILE and ROW) less those that lose."""
        if self.dropped.is_empty():
            return rows
        return rows.join(self.dropped, on=[FILE, ROW], how="anti")

    def tombstones(self, files: set[int]) -> pl.DataFrame:
        """The lake rows (event_id, date) that the staged rows of `files` replace."""
        chosen = self.replaced.filter(pl.col(FILE).is_in(sorted(files)))
        return chosen.select("event_id", "date")


def staged_scan(files: list[Path], first: int = 0) -> pl.LazyFrame:
    """The rows of stage files, each with FILE (its place, from `first`) and ROW."""
    # Row index and path are options of each scan, so Polars reads the files as one scan;
    # a column added to each file's scan would make a plan per file (4x slower at 200).
    places = pl.LazyFrame({"_path": [str(path) for path in files],
                           FILE: range(first, first + len(files))},
                          schema={"_path": pl.String, FILE: pl.Int64})
    scans = pl.concat([pl.scan_ipc(path, row_index_name=ROW, include_file_paths="_path")
                       for path in files], how="diagonal_relaxed")
    # Rows come in no set order: the rule orders them by FILE and ROW where it must.
    return scans.join(places, on="_path", how="left").drop("_path")


def lake_scan(table: DeltaTable | None) -> pl.LazyFrame | None:
    """A table's rows, or None for no table."""
    return None if table is None else pl.scan_delta(table)


def resolve(files: list[Path], table: DeltaTable | None, event_type: str,
            lake_hashes: pl.LazyFrame | None = None) -> Resolution:
    """The run's decisions for the pending stage `files` of one type against its `table`
    (which `upgrade_table` has given an `_id_hash` column). `lake_hashes`, (`_id_hash`,
    `date`) of at least every lake row (pipeline.id_index), narrows the lake rows read to
    the dates of the matched hashes; without it, the table's hash column is read."""
    lake = lake_scan(table)
    if lake_hashes is None:
        lake_hashes = (lake.select(ID_HASH, "date") if lake is not None
                       else pl.LazyFrame(schema={ID_HASH: pl.Int64, "date": pl.Date}))
    matched = matching_hashes(staged_scan(files).select(id_hash()), lake_hashes.select(ID_HASH))
    if matched.is_empty():
        return Resolution.nothing()
    wanted = pl.col(ID_HASH).is_in(matched.implode())
    candidates = [staged_scan(files).with_columns(id_hash()).filter(wanted)
                  .with_columns(pl.lit(1, pl.Int8).alias(ORIGIN))]
    if lake is not None:
        dates = lake_hashes.filter(wanted).select(pl.col("date").unique()).collect()
        if not dates.is_empty():
            on_dates = (pl.col("date").is_in(dates.get_column("date").implode())
                        if dates.get_column("date").null_count() == 0 else pl.lit(True))
            candidates.append(lake.filter(on_dates & wanted)
                              .with_columns(pl.lit(0, pl.Int8).alias(ORIGIN)))
    rows = pl.concat(candidates, how="diagonal_relaxed").collect(engine="streaming")
    return _decided(rows, event_type)


def _decided(rows: pl.DataFrame, event_type: str) -> Resolution:
    lost = losers(rows, event_type, [ORIGIN, "event_id", "date", FILE, ROW])
    winners = best_per_id(rows.lazy(), event_type).select(
        "event_id", pl.col(FILE).alias("_winner")).collect()
    if "date" not in rows.columns:  # no lake row among the candidates
        lost = lost.with_columns(pl.col("date").cast(pl.Date))
    dropped = lost.filter(pl.col(ORIGIN) == 1).select(pl.col(FILE).cast(pl.Int64),
                                                      pl.col(ROW).cast(pl.UInt32))
    # A lake row losing to another lake row (a lake written before the rule was kept on
    # write) is deleted by the run's first commit.
    replaced = (lost.filter(pl.col(ORIGIN) == 0).join(winners, on="event_id")
                .select("event_id", "date",
                        pl.col("_winner").fill_null(0).cast(pl.Int64).alias(FILE)))
    return Resolution(dropped, replaced)


# ---------------------------------------------------------------- tables of older tallies


def needs_upgrade(table: DeltaTable | None) -> bool:
    """Whether a table lacks `_id_hash` on some row (written before the rule on write)."""
    if table is None:
        return False
    if ID_HASH not in table.schema().to_arrow().names:
        return True
    return bool(_dates_without_hashes(table))


def upgrade_table(table: DeltaTable, event_type: str, rewrite: Rewrite,
                  rows_per_commit: int) -> int:
    """Rewrite the partitions of a table lacking `_id_hash` (in commits of about
    `rows_per_commit` rows) with the column written and each event_id kept once by the
    rule, whatever partition its other rows are in. Returns the rows dropped."""
    lake = pl.scan_delta(table).with_columns(id_hash())
    repeated = (lake.select(ID_HASH).group_by(ID_HASH).len().filter(pl.col("len") > 1)
                .select(ID_HASH).collect(engine="streaming").get_column(ID_HASH))
    keys = ["event_id", "date", "_source", "_offset"]
    winners = best_per_id(lake.filter(pl.col(ID_HASH).is_in(repeated.implode()))
                          .with_columns(pl.lit(0, pl.Int8).alias(ORIGIN)), event_type
                          ).select(keys).collect(engine="streaming")
    dropped = 0
    for dates in _chunks(_dates_without_hashes(table), rows_per_commit):
        rows = lake.filter(pl.col("date").cast(pl.String).is_in(dates)).collect(
            engine="streaming")
        kept = _kept(rows, repeated, winners, keys)
        dropped += rows.height - kept.height
        rewrite(dates, kept)
        table.update_incremental()
    return dropped


def _kept(rows: pl.DataFrame, repeated: pl.Series, winners: pl.DataFrame,
          keys: list[str]) -> pl.DataFrame:
    """Rows less those of repeated ids that are not their id's winner; a winner read twice
    (the same line staged twice) is kept once."""
    many = pl.col(ID_HASH).is_in(repeated.implode())
    chosen = (rows.filter(many).join(winners, on=keys, how="semi")
              .unique(subset="event_id", keep="first", maintain_order=True))
    return pl.concat([rows.filter(~many), chosen])


def _dates_without_hashes(table: DeltaTable) -> dict[str, int]:
    """Rows per date partition that hold a file without `_id_hash` values."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    date = "partition.date" if "partition.date" in actions.columns else None
    if date is None:
        return {}
    column = f"null_count.{ID_HASH}"
    nulls = pl.col(column) if column in actions.columns else pl.col("num_records")
    lacking = actions.filter(nulls.fill_null(pl.col("num_records")) > 0)
    return dict(lacking.group_by(pl.col(date).cast(pl.String)).agg(
        pl.col("num_records").sum()).iter_rows())


def _chunks(rows_by_date: dict[str, int], limit: int) -> list[list[str]]:
    chunks: list[list[str]] = []
    current: list[str] = []
    rows = 0
    for day in sorted(rows_by_date):
        current.append(day)
        rows += rows_by_date[day]
        if rows >= limit:
            chunks.append(current)
            current, rows = [], 0
    if current:
        chunks.append(current)
    return chunks
