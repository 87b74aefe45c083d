"""Compaction: committed stage batches into one Delta table per event type, exactly once.

Each Delta commit records `Transaction(APP_ID, N)`, N being the highest tailer batch it
contains. Stage files of batches up to a table's recorded N are already in the lake: they
are deleted, never written again. A kill at any point therefore leaves either the old
table plus the stage files, or the new table plus stage files that the next run removes.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
from deltalake import (
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)

from pipeline.checkpoint import ProcessLock, committed_batch
from pipeline.config import Home
from pipeline.errors import LakeError, UsageError
from pipeline.frames import scan_stage_files
from pipeline.lake import APP_ID, lake_batch, open_table, table_path
from pipeline.stage import fsync_dir, staged_files

# Rows per Delta commit: peak RSS grows with it (2M events: 1.07 GB at 1M rows, 570 MB at
# 250k; 10M events: 1.28 GB vs 0.70 GB) while CPU time stays the same. Reading the next
# commit's files during a write holds two commits' rows: 600-640 MB at 2M, 683-756 MB at 10M.
ROWS_PER_COMMIT = 250_000
Progress = Callable[[int, int], None]
# Test hook for the kill tests: TALLY_FAULT=compact:<point>:<n> SIGKILLs this process the
# n-th time (default 1st) it reaches <point>: `before_write` (just before a Delta write) or
# `after_commit` (a commit done, its stage files not yet removed). Never set in production.
FAULT_ENV = "TALLY_FAULT"
_fault_hits: dict[str, int] = {}


@dataclass
class CompactionResult:
    """What a compaction run did."""

    events: int = 0
    commits: int = 0
    partitions: set[tuple[str, str]] = field(default_factory=set)
    files_removed: int = 0
    seconds: float = 0.0
    optimized: dict[str, int] = field(default_factory=dict)
    vacuumed: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def add_partition_date(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The partition column: the event's UTC date."""
    return frame.with_columns(pl.col("ts").dt.date().alias("date"))


def run_compaction(home: Home, *, lock_timeout: float | None = None,
                   progress: Progress | None = None,
                   rows_per_commit: int = ROWS_PER_COMMIT) -> CompactionResult:
    """Move every committed stage batch into the lake; safe to kill and re-run at any point."""
    started = time.monotonic()
    result = CompactionResult()
    timeout = home.compactor.lock_timeout if lock_timeout is None else lock_timeout
    with ProcessLock(home.state / "compact.lock", "compaction").acquire(timeout):
        watermark = committed_batch(home.state)
        plan = {t: staged_files(home.stage, t, watermark) for t in _staged_types(home)}
        rows = {path: _rows(path) for files in plan.values() for _, path in files}
        total = sum(rows.values())
        with _Run(home, result, _Budget(rows, rows_per_commit),
                  lambda n: progress(n, total) if progress else None) as run:
            _make_commits(run, [commit for event_type, files in plan.items()
                                for commit in _plan_commits(run, event_type, files)])
    result.seconds = time.monotonic() - started
    return result


def _staged_types(home: Home) -> list[str]:
    if not home.stage.is_dir():
        return []
    return sorted(p.name for p in home.stage.iterdir() if p.is_dir())


def _rows(path: Path) -> int:
    # The IPC footer and batch headers, memory-mapped: 3x faster than a Polars count.
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


@dataclass(frozen=True)
class _Budget:
    """Rows per stage file (counted once) and how many go into one commit."""

    rows: dict[Path, int]
    per_commit: int


class _Run:
    """One compaction's shared state, and the two threads that keep the Delta writer busy:
    one reads the next commit's stage files while the current one is written, one deletes
    the stage files of commits already made (a deletion costs about 0.7 ms a file)."""

    def __init__(self, home: Home, result: CompactionResult, budget: _Budget,
                 progress: Callable[[int], None]) -> None:
        self.home, self.result, self.budget, self.progress = home, result, budget, progress
        self.done = 0
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="tally-stage-reader")
        self._remover = ThreadPoolExecutor(1, thread_name_prefix="tally-stage-remover")
        self._removals: list[Future[None]] = []

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, failure: type[BaseException] | None, *_: object) -> None:
        self._reader.shutdown(wait=True, cancel_futures=True)
        self._remover.shutdown(wait=True)
        if failure is None:
            for removal in self._removals:
                _reported(removal)

    def read(self, commit: _Commit) -> Future[_Rows]:
        """Start reading the stage files of one commit."""
        return self._reader.submit(_read_rows, commit.files)

    def remove(self, event_type: str, files: list[Path]) -> None:
        """Delete stage files already in the lake, in the background."""
        if files:
            self._removals.append(self._remover.submit(_remove, self.home, event_type, files))
            self.result.files_removed += len(files)


def _reported(removal: Future[None]) -> None:
    try:
        removal.result()
    except OSError as exc:
        raise LakeError(f"compacted stage files could not be deleted: {exc}",
                        hint="their events are in the lake already; the next compact "
                             "deletes them") from exc


@dataclass(frozen=True)
class _Commit:
    """One Delta commit to make: its table, its stage files, the highest batch among them."""

    event_type: str
    table: Path
    files: list[Path]
    batch: int


@dataclass(frozen=True)
class _Rows:
    """A commit's rows, read ahead, and their dates."""

    data: pl.DataFrame
    dates: list[str]


def _read_rows(files: list[Path]) -> _Rows:
    staged = scan_stage_files(files)
    assert staged is not None  # commits never have zero files
    frame = add_partition_date(staged).collect()
    return _Rows(frame, [str(d) for d in frame["date"].unique()])


def _plan_commits(run: _Run, event_type: str, files: list[tuple[int, Path]]) -> list[_Commit]:
    """The commits that bring a type's stage files into its table; deletes those it has."""
    path = table_path(run.home, event_type)
    committed = lake_batch(open_table(path))
    run.remove(event_type, [f for b, f in files if b <= committed])
    return [_Commit(event_type, path, [f for _, f in chunk], chunk[-1][0])
            for chunk in _chunks([(b, f) for b, f in files if b > committed], run.budget)]


def _make_commits(run: _Run, commits: list[_Commit]) -> None:
    upcoming = run.read(commits[0]) if commits else None
    for index, commit in enumerate(commits):
        assert upcoming is not None
        rows = upcoming.result()
        if index + 1 < len(commits):  # the next one, of this type or the next, read meanwhile
            upcoming = run.read(commits[index + 1])
        _fault("before_write")
        _commit(commit.table, rows.data, commit.batch)
        _fault("after_commit")
        run.result.events += rows.data.height
        run.result.commits += 1
        run.result.partitions.update((commit.event_type, date) for date in rows.dates)
        run.remove(commit.event_type, commit.files)
        run.done += rows.data.height
        run.progress(run.done)


def _chunks(files: list[tuple[int, Path]], budget: _Budget) -> list[list[tuple[int, Path]]]:
    chunks: list[list[tuple[int, Path]]] = []
    current: list[tuple[int, Path]] = []
    rows = 0
    for batch, path in files:
        current.append((batch, path))
        rows += budget.rows[path]
        if rows >= budget.per_commit:
            chunks.append(current)
            current, rows = [], 0
    if current:
        chunks.append(current)
    return chunks


def _commit(path: Path, data: pl.DataFrame, batch: int) -> None:
    try:
        write_deltalake(
            str(path), data, mode="append", partition_by=["date"], schema_mode="merge",
            writer_properties=WriterProperties(compression="ZSTD"),
            commit_properties=CommitProperties(
                app_transactions=[Transaction(APP_ID, batch)],
                custom_metadata={"tally.batch": str(batch)}),
        )
    except Exception as exc:
        raise LakeError(f"commit to {path} failed: {exc}",
                        hint="the stage is untouched; fix the cause and run compact again") from exc


def _fault(point: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith(f"compact:{point}"):
        return
    _fault_hits[point] = _fault_hits.get(point, 0) + 1
    wanted = spec.split(":")[2] if spec.count(":") >= 2 else "1"
    if _fault_hits[point] == int(wanted):
        os.kill(os.getpid(), signal.SIGKILL)


def _remove(home: Home, event_type: str, files: list[Path]) -> None:
    for file in files:
        file.unlink(missing_ok=True)
    fsync_dir(home.stage / event_type)


# ---------------------------------------------------------------- maintenance


def optimize_lake(home: Home, target_mb: int | None = None,
                  lock_timeout: float | None = None) -> dict[str, int]:
    """Merge small files per partition up to the target size; files removed per table."""
    target = (target_mb or home.compactor.target_file_mb) << 20
    merged = {}
    with _compaction_lock(home, lock_timeout):
        for event_type, table in _tables(home):
            metrics = table.optimize.compact(target_size=target)
            merged[event_type] = int(metrics.get("numFilesRemoved", 0))
    return merged


def vacuum_lake(home: Home, retention_hours: float | None = None,
                lock_timeout: float | None = None) -> dict[str, int]:
    """Delete files no table version newer than the retention still references.

    A full vacuum: files no commit ever referenced (left by a compaction killed while
    writing) go too. It holds the compaction lock, so a short retention can never delete
    the not-yet-committed files of a running compaction.
    """
    hours = home.compactor.vacuum_retention_hours if retention_hours is None else retention_hours
    if hours < 0:
        raise UsageError("retention must be zero or more hours")
    removed = {}
    with _compaction_lock(home, lock_timeout):
        for event_type, table in _tables(home):
            # Whole hours only: round up, never keep less than asked.
            files = table.vacuum(retention_hours=math.ceil(hours), dry_run=False,
                                 enforce_retention_duration=False, full=True)
            removed[event_type] = len(files)
    return removed


def _compaction_lock(home: Home, timeout: float | None) -> ProcessLock:
    wait = home.compactor.lock_timeout if timeout is None else timeout
    return ProcessLock(home.state / "compact.lock", "compaction").acquire(wait)


def _tables(home: Home) -> list[tuple[str, DeltaTable]]:
    found: list[tuple[str, DeltaTable]] = []
    if home.lake.is_dir():
        for path in sorted(p for p in home.lake.iterdir() if p.is_dir()):
            table = open_table(path)
            if table is not None:
                found.append((path.name, table))
    return found

