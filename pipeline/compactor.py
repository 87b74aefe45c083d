"""Compaction: committed stage batches into one Delta table per event type, exactly once.

Each Delta commit records `Transaction(app_id(S, H), N)` for each tailer stream S it holds
batches of, N the highest, H this host (pipeline.ledger). Stage files of batches a table
already holds are deleted, never written again. A kill at any point therefore leaves either
the old table plus the stage files, or the new table plus stage files that the next run
removes.

Hosts that share a lake in an object store compact at the same moments: a commit another
host's commit came before is refused (`CommitConflict`, see pipeline.commits), and the run
plans again from the table as it now is (the batches already in it are skipped, the
duplicate rule decides again), after a short random wait.

Nothing a single file or event holds stops a run: a stage file that cannot be read is
set aside and staged again from the logs (pipeline.recovery), and rows the lake cannot
take are quarantined with their origin while the rest is committed (pipeline.poison).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError

from pipeline.checkpoint import Watermark, read_watermark
from pipeline.commit_plan import Budget, chunks, count_rows, highest_batches
from pipeline.commits import (
    Commit,
    CommitConflict,
    Rows,
    add_partition_date,
    create_table,
    date_texts,
    read_rows,
    rewrite_dates,
    write_commit,
)
from pipeline.config import Home, fault
from pipeline.errors import (
    DamagedFile,
    LakeError,
    StorageError,
    is_storage_failure,
)
from pipeline.events import Validator
from pipeline.id_index import forget, index_dir, lake_hashes
from pipeline.journal import prune
from pipeline.ledger import (
    REBUILD_HINT,
    check_not_behind,
    open_table,
    raise_high_water,
    record_versions,
    stream_batch,
    table_dirs,
    table_path,
)
from pipeline.maintenance import (
    check_retention,
    checkpoint_if_due,
    compaction_lock,
    killed_writes_removed,
    optimize_lake,
    optimize_small_files,
    vacuum_lake,
)
from pipeline.poison import Unwritable, quarantine_unwritable
from pipeline.pricing import pricing_for
from pipeline.recovery import Restaged, restage
from pipeline.resolve import Resolution, needs_upgrade, resolve, staged_scan, upgrade_table
from pipeline.rollups import rollup_dirs, sync_rollups
from pipeline.stage import BatchId, all_batch_files, fsync_dir, staged_files
from pipeline.storage import REMOTE_HINT, is_unreachable, wait_before_retry
from pipeline.swap import recover_interrupted_rebuild

# Rows per Delta commit: peak RSS grows with it (2M events: 1.07 GB at 1M rows, 570 MB at
# 250k; 10M events: 1.28 GB vs 0.70 GB) while CPU time stays the same. Reading the next
# commit's files during a write holds two commits' rows: 600-640 MB at 2M, 683-756 MB at 10M.
ROWS_PER_COMMIT = 250_000
# Plans a run may make when other hosts keep committing first (each wait up to 2 s).
MAX_PLANS = 30
Progress = Callable[[int, int], None]
# Test hook for the kill tests: TALLY_FAULT=compact:<point>:<n> SIGKILLs this process the
# n-th time (default 1st) it reaches <point>: `before_write` (just before a Delta write) or
# `after_commit` (a commit done, its stage files not yet removed). Never set in production.
__all__ = ["CompactionResult", "check_retention", "optimize_lake", "run_compaction",
           "vacuum_lake"]


@dataclass
class CompactionResult:
    """What a compaction run did, and what it could not do without losing events."""

    events: int = 0
    commits: int = 0
    partitions: set[tuple[str, str]] = field(default_factory=set)
    files_removed: int = 0
    seconds: float = 0.0
    optimized: dict[str, int] = field(default_factory=dict)
    vacuumed: dict[str, int] = field(default_factory=dict)
    restaged: list[Restaged] = field(default_factory=list)
    unwritable: list[Unwritable] = field(default_factory=list)
    uncommitted_files_removed: int = 0
    upgraded: dict[str, int] = field(default_factory=dict)  # duplicates deleted per table
    rollups_rebuilt: list[str] = field(default_factory=list)  # computed again whole
    conflicts: int = 0  # plans made again because another host committed first
    rollup_conflicts: int = 0  # rollup catch-ups made again, for the same reason
    recovered: list[str] = field(default_factory=list)  # what an interrupted rebuild left

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> list[str]:
        """What could not be brought back: each a line for the user."""
        return [f"{r.set_aside}: {r.lost}" for r in self.restaged if r.lost]


def run_compaction(home: Home, *, lock_timeout: float | None = None,
                   progress: Progress | None = None,
                   rows_per_commit: int = ROWS_PER_COMMIT) -> CompactionResult:
    """Move every committed stage batch into the lake; safe to kill and re-run at any point."""
    started = time.monotonic()
    result = CompactionResult(recovered=recover_interrupted_rebuild(home, lock_timeout))
    with compaction_lock(home, lock_timeout), \
            killed_writes_removed(home, [*table_dirs(home), *rollup_dirs(home)]) as removed:
        result.uncommitted_files_removed = removed
        try:
            watermark = _commit_stage(home, result, progress, rows_per_commit)
            result.rollups_rebuilt = _sync_rollups(home, result)
            result.optimized = _tidy(home)
            prune(home.state, _still_staged(home), watermark.stream)
        except (OSError, pl.exceptions.PolarsError, DeltaError) as exc:
            if not home.lake_location.is_local and is_unreachable(str(exc)):
                detail = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
                raise LakeError(f"cannot reach the lake {home.lake_location}: {detail}",
                                hint=REMOTE_HINT) from exc
            if isinstance(exc, OSError) and is_storage_failure(exc):
                raise StorageError(f"cannot compact: {exc.strerror}", path=exc.filename,
                                   errno_code=exc.errno) from exc
            raise
    result.seconds = time.monotonic() - started
    return result


def _commit_stage(home: Home, result: CompactionResult, progress: Progress | None,
                  rows_per_commit: int) -> Watermark:
    """Commit the stage's batches, planning again when another host commits first; the
    watermark they were planned under."""
    for plans in range(1, MAX_PLANS + 1):
        watermark = read_watermark(home.state)
        plan = {t: staged_files(home.stage, t, watermark) for t in _staged_types(home)}
        rows = count_rows(home, plan, result.restaged)
        total = sum(rows.values())
        try:
            with _Run(home, result, Budget(rows, rows_per_commit),
                      _reporter(progress, total)) as run:
                _make_commits(run, [commit for event_type, files in plan.items()
                                    for commit in _plan_commits(run, event_type, files)])
            return watermark
        except CommitConflict as conflict:
            result.conflicts += 1
            if plans == MAX_PLANS:
                raise LakeError(f"other writers committed first {plans} times in a row: "
                                f"{conflict}", hint="the stage is untouched; run compact "
                                "again (each host's runs are best spread apart)") from conflict
            wait_before_retry(plans)
    raise AssertionError("unreachable")


def _reporter(progress: Progress | None, total: int) -> Callable[[int], None]:
    """Progress of a plan's commits: rows done, out of `total`."""
    return lambda done: progress(done, total) if progress else None


def _sync_rollups(home: Home, result: CompactionResult) -> list[str]:
    """Bring every rollup up to its event table (after this run's commits, or a run killed
    before it caught up); the rollups computed again whole."""
    thresholds = pricing_for(home).thresholds

    def retried() -> None:
        result.rollup_conflicts += 1

    return [name for path in table_dirs(home)
            for name in sync_rollups(home, path.name, thresholds, retried)]


def _tidy(home: Home) -> dict[str, int]:
    """Merge the small files of crowded partitions, and of every day before today holding
    more than one, in the event tables and the rollups; checkpoint their logs. Returns the
    files merged per table."""
    settings, merged = home.compactor, {}
    today = datetime.now(UTC).date()
    for path in [*table_dirs(home), *rollup_dirs(home)]:
        table = open_table(path)
        if table is None:
            continue
        removed = optimize_small_files(table, settings.auto_optimize_files,
                                       settings.target_file_mb << 20, settled_before=today)
        if removed:
            merged[path.name] = removed
        checkpoint_if_due(table)
    record_versions(home, {path.name: table.version() for path in table_dirs(home)
                           if (table := open_table(path)) is not None})
    return merged


def _staged_types(home: Home) -> list[str]:
    if not home.stage.is_dir():
        return []
    return sorted(p.name for p in home.stage.iterdir() if p.is_dir())


def _still_staged(home: Home) -> set[BatchId]:
    return {batch for event_type in _staged_types(home)
            for batch, _ in all_batch_files(home.stage / event_type, "arrow")}


class _Run:
    """One compaction's shared state, and the two threads that keep the Delta writer busy:
    one reads the next commit's stage files while the current one is written, one deletes
    the stage files of commits already made (a deletion costs about 0.7 ms a file)."""

    def __init__(self, home: Home, result: CompactionResult, budget: Budget,
                 progress: Callable[[int], None]) -> None:
        self.home, self.result, self.budget, self.progress = home, result, budget, progress
        self.done = 0
        self.snapshots: dict[str, DeltaTable | None] = {}  # the versions commits are planned on
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

    def read(self, commit: Commit) -> Future[Rows]:
        """Start reading the stage files of one commit."""
        return self._reader.submit(read_rows, commit)

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


def _plan_commits(run: _Run, event_type: str,
                  files: list[tuple[BatchId, Path]]) -> list[Commit]:
    """The commits that bring a type's stage files into its table, with the duplicate
    rule's decisions for them; deletes the stage files the table has already."""
    path, host = table_path(run.home, event_type), run.home.host
    table = open_table(path)
    check_not_behind(run.home, event_type, table)
    legacy = path.is_local
    held = {stream: stream_batch(table, stream, host, legacy)
            for stream in {b.stream for b, _ in files}}
    run.remove(event_type, [f for b, f in files if b.number <= held[b.stream]])
    pending = [(b, f) for b, f in files if b.number > held[b.stream]]
    if not pending:
        return []
    if table is None and not path.is_local:
        # Hosts may race to make it: an empty table first, so that every commit of rows
        # is made from a version, and refused if another came first.
        table = create_table(path, add_partition_date(staged_scan([pending[0][1]])).head(0)
                             .collect(), host)
    try:
        table = _upgraded(run, event_type, table)
        resolution = _resolved(run, event_type, [f for _, f in pending], table)
    except FileNotFoundError as exc:  # a data file of the table is gone
        raise DamagedFile("lake table", str(path), f"a data file it references is missing: {exc}",
                          hint=REBUILD_HINT) from exc
    run.snapshots[event_type] = table
    commits, first = [], 0
    for chunk in chunks(pending, run.budget):
        commits.append(Commit(event_type, path, [f for _, f in chunk], highest_batches(chunk, host),
                              first, resolution, host))
        first += len(chunk)
    return commits


def _resolved(run: _Run, event_type: str, files: list[Path],
              table: DeltaTable | None) -> Resolution:
    """The rule's decisions for a type's pending files, matched through the id index; an
    index that cannot be read is thrown away and the table's own hashes are read."""
    if table is None:
        return resolve(files, table, event_type)
    index = index_dir(run.home.state, event_type)
    try:
        return resolve(files, table, event_type, lake_hashes(index, table, table_path(
            run.home, event_type)))
    except pl.exceptions.PolarsError as exc:
        if is_unreachable(str(exc)):  # the store, not the index: keep it
            raise
        forget(index)
        return resolve(files, table, event_type)


def _upgraded(run: _Run, event_type: str, table: DeltaTable | None) -> DeltaTable | None:
    """The table, its duplicates deleted and `_id_hash` written if an older tally made it."""
    if table is None or not needs_upgrade(table):
        return table
    try:
        run.result.upgraded[event_type] = upgrade_table(
            table, event_type, lambda dates, rows: rewrite_dates(table, dates, rows),
            run.budget.per_commit)
    except CommitFailedError as exc:  # another host upgrades it too: plan again
        raise CommitConflict(str(exc)) from exc
    return open_table(table_path(run.home, event_type))


def _make_commits(run: _Run, commits: list[Commit]) -> None:
    upcoming = run.read(commits[0]) if commits else None
    for index, commit in enumerate(commits):
        assert upcoming is not None
        rows = upcoming.result()
        if index + 1 < len(commits):  # the next one, of this type or the next, read meanwhile
            upcoming = run.read(commits[index + 1])
        data = _with_restaged(run, rows)
        raise_high_water(run.home, commit.batches)
        fault("compact", "before_write")
        data, unwritable = write_commit(commit, data, run.snapshots.get(commit.event_type))
        fault("compact", "after_commit")
        if unwritable:
            quarantine_unwritable(run.home, unwritable)
            run.result.unwritable += unwritable
        run.result.events += data.height
        run.result.commits += 1
        run.result.partitions.update(
            (commit.event_type, day) for day in date_texts(data["date"]))
        run.remove(commit.event_type, commit.files)
        run.done += data.height
        run.progress(run.done)
    _record_versions(run.home, {commit.event_type for commit in commits})


def _record_versions(home: Home, event_types: set[str]) -> None:
    """Remember the tables' versions now (once a type, not a commit: opening a table reads
    its log). A kill before leaves the record behind the lake, which is never a false
    alarm."""
    versions = {}
    for event_type in event_types:
        table = open_table(table_path(home, event_type))
        if table is not None:
            versions[event_type] = table.version()
    if versions:
        record_versions(home, versions)


def _with_restaged(run: _Run, rows: Rows) -> pl.DataFrame:
    """A commit's rows, with its unreadable files staged again from the logs and added."""
    if not rows.unreadable:
        return rows.data
    validator = Validator()
    frames = [rows.data] if rows.data.height else []
    for number, path in rows.unreadable:
        restaged = restage(run.home, path, validator)
        run.result.restaged.append(restaged)
        if path.exists():
            frames.append(add_partition_date(staged_scan([path], number)).collect())
    return pl.concat(frames, how="diagonal_relaxed") if frames else rows.data


def _remove(home: Home, event_type: str, files: list[Path]) -> None:
    for file in files:
        file.unlink(missing_ok=True)
    fsync_dir(home.stage / event_type)
