"""Rows the lake cannot take, found and quarantined so that the rest is committed.

Validation keeps such rows out of the stage, but a stage written by an older tally, or a
failure nobody foresaw, must not stop every compaction for good. Known causes are
checked first (a timestamp outside the years 1-9999 in UTC, which no Parquet reader can
turn into a date). When a write fails for anything else but the file system, the rows are
halved on trial writes to a scratch table of the same schema, never the lake, until the
rows it refuses are found; if that takes too many trials, the failure is not a row's, and
the original error stands.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl

from pipeline.config import Home
from pipeline.events import Rejection
from pipeline.intake import quarantine_record
from pipeline.stage import fsync_dir, write_atomic

PROBE_BUDGET = 256  # trial writes before a failure is taken for the whole write's
_EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)

Probe = Callable[[pl.DataFrame], None]


@dataclass(frozen=True)
class Unwritable:
    """A row the lake refused: its origin and why."""

    source: str
    offset: int
    reason: str
    message: str
    row: bytes  # the row as JSON, for the quarantine's excerpt


def split_writable(data: pl.DataFrame,
                   probe: Probe | None = None) -> tuple[pl.DataFrame, list[Unwritable]]:
    """The rows the lake can take, and the others with why.

    Without `probe`, only the known causes are looked for; with it (a trial write that
    raises on refusal), the rows it refuses are found by halving.
    """
    outside = ~pl.col("ts").is_between(pl.lit(_EARLIEST), pl.lit(_LATEST))
    bad = data.filter(outside)
    refused = [_unwritable(row, "ts_out_of_range", "the time is outside years 1-9999 in "
                           "UTC, which the lake cannot hold") for row in _plain_rows(bad)]
    good = data.filter(~outside) if bad.height else data
    if probe is None:
        return good, refused
    found: list[Unwritable] = []
    kept = _halve(good, probe, found, [PROBE_BUDGET])
    if kept is None or (found and kept.height == 0):
        return good, refused  # out of trials, or every row refused: not the rows' doing
    return kept, refused + found


def _halve(rows: pl.DataFrame, probe: Probe, found: list[Unwritable],
           budget: list[int]) -> pl.DataFrame | None:
    """The rows `probe` takes, the refused ones added to `found`; None if out of trials."""
    if budget[0] <= 0:
        return None
    budget[0] -= 1
    try:
        probe(rows)
        return rows
    except Exception as exc:
        if rows.height == 1:
            found.append(_unwritable(_plain_rows(rows)[0], "unwritable",
                                     (str(exc).splitlines() or ["refused"])[0][:300]))
            return rows.clear()
        if rows.height == 0:
            return None  # the write fails with no rows at all: not a row's doing
    middle = rows.height // 2
    halves = [_halve(rows.slice(0, middle), probe, found, budget),
              _halve(rows.slice(middle), probe, found, budget)]
    if any(half is None for half in halves):
        return None
    return pl.concat([half for half in halves if half is not None])


def _plain_rows(rows: pl.DataFrame) -> list[dict[str, object]]:
    """Rows as Python values, times as text: a Python datetime cannot hold year 0."""
    return rows.with_columns(pl.col(pl.Datetime, pl.Date).cast(pl.String)).rows(named=True)


def _unwritable(row: dict[str, object], reason: str, message: str) -> Unwritable:
    body = orjson.dumps({k: v for k, v in row.items() if k != "date"}, default=str)
    return Unwritable(str(row.get("_source")), int(str(row.get("_offset") or 0)), reason,
                      message, body)


def scratch_probe(write: Callable[[str, pl.DataFrame], None]
                  ) -> tuple[Probe, Callable[[], None]]:
    """A trial write into a scratch table (a fresh one for each trial), and its cleanup."""
    root = Path(tempfile.mkdtemp(prefix="tally-probe-"))
    trials = iter(range(1 << 30))

    def probe(rows: pl.DataFrame) -> None:
        write(str(root / f"t{next(trials)}"), rows)

    return probe, lambda: shutil.rmtree(root, ignore_errors=True)


def quarantine_unwritable(home: Home, rows: list[Unwritable]) -> Path:
    """Write quarantine records for rows the lake refused (`compaction-<time>.jsonl`)."""
    records = [quarantine_record(row.source, row.offset, row.row,
                                 Rejection(row.reason, row.message)) for row in rows]
    body = b"".join(orjson.dumps(record) + b"\n" for record in records)
    path = home.quarantine / f"compaction-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.jsonl"
    write_atomic(path, lambda handle: handle.write(body))
    fsync_dir(home.quarantine)
    return path
