"""Keeping the lake's files in order: optimize, vacuum, files of writes that never
committed, and what delta-rs prints when it panics.

delta-rs writes a commit's Parquet files before the commit. A write that fails (disk
full) or is killed leaves them behind, unreferenced; they are deleted here as soon as no
commit can claim them: after a failed write at once, after a kill on the next run (files
newer than the table's last commit). Both hold the compaction lock, so no write of this
home is under way meanwhile.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path
from urllib.parse import unquote, urlparse

import orjson
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError

from pipeline.checkpoint import ProcessLock
from pipeline.config import Home
from pipeline.errors import (
    DamagedFile,
    LakeError,
    UsageError,
    is_storage_failure,
    native_stderr_captured,
)
from pipeline.ledger import REBUILD_HINT, all_table_dirs, open_table, record_versions
from pipeline.storage import Location, read_object

# A vacuum of a shared lake keeps younger files: another host's write under way owns some.
SHARED_RETENTION_HOURS = 1
STORAGE_MARKERS = ("No space left", "os error 28", "Disk quota", "os error 122",
                   "Read-only file system", "os error 30", "Permission denied", "os error 13")


def panic_summary(text: str) -> str:
    """The line of a Rust panic's report that says what went wrong."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if any(marker in line for marker in STORAGE_MARKERS) or "os error" in line:
            return line
    return next((line for line in lines
                 if not line.startswith(("note:", "thread '", "stack backtrace"))), "")


def is_storage_refusal(exc: BaseException, panic: str) -> bool:
    """Whether a failed native write was the file system refusing it (full, read-only,
    denied), from the exception or the panic report beside it."""
    text = f"{exc} {panic}"
    return is_storage_failure(exc) or any(marker in text for marker in STORAGE_MARKERS)


def local_path(uri: str) -> Path:
    """A file:// URI (or plain path) of a table file as a local path."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)


def data_files(place: Location | Path, dates: Iterable[str] | None = None) -> set[Path]:
    """Every Parquet file under a table's directory, committed or not; with `dates`, only
    those of these date partitions (none for a table in an object store: see above)."""
    if isinstance(place, Location) and not place.is_local:
        return set()
    table_dir = place.path if isinstance(place, Location) else place
    roots = [table_dir] if dates is None else [table_dir / f"date={day}" for day in dates]
    found: set[Path] = set()
    for root in roots:
        for directory, _dirs, names in os.walk(root):
            if "_delta_log" in Path(directory).parts:
                continue
            found.update(Path(directory) / name for name in names if name.endswith(".parquet"))
    return found


def remove_uncommitted_files(table_dir: Location | Path, since_ns: int = 0,
                             before: set[Path] | None = None,
                             dates: Iterable[str] | None = None) -> int:
    """Delete Parquet files under a table (in the partitions of `dates`, if given) that it
    does not reference and that a write left: those not in `before` (the files there were
    before the write), or, without it, those modified after `since_ns` (a time no commit
    since made). Returns how many (none in an object store: see above)."""
    if isinstance(table_dir, Location) and not table_dir.is_local:
        return 0
    table = open_table(table_dir)
    referenced = set() if table is None else {local_path(u) for u in table.file_uris()}
    removed = 0
    for path in data_files(table_dir, dates) - referenced:
        with contextlib.suppress(FileNotFoundError):
            if (path not in before) if before is not None else (
                    path.stat().st_mtime_ns > since_ns):
                path.unlink()
                removed += 1
    return removed


def last_commit_ns(table: DeltaTable | None) -> int:
    """When the table's latest commit was made (ns), 0 for no table."""
    if table is None:
        return 0
    history = table.history(1)
    return int(history[0].get("timestamp", 0)) * 1_000_000 if history else 0


RUN_MARKER = "compacting"  # in state/: a run under way, or one that was killed


@contextlib.contextmanager
def killed_writes_removed(home: Home, tables: list[Location]) -> Iterator[int]:
    """Around a compaction run: if the run before was killed (its marker is still there),
    first delete the Parquet files its writes left in `tables` (newer than their table's
    last commit, referenced by none), and yield how many. The marker is set for this run,
    and removed when it ends, whichever way but a kill."""
    marker = home.state / RUN_MARKER
    removed = 0
    if marker.exists():
        removed = sum(remove_uncommitted_files(place, last_commit_ns(open_table(place)))
                      for place in tables if place.is_local)
    marker.touch()
    try:
        yield removed
    finally:
        marker.unlink(missing_ok=True)


# ---------------------------------------------------------------- optimize and vacuum


def compaction_lock(home: Home, timeout: float | None) -> ProcessLock:
    """The compaction lock, waited for up to `timeout` (default: the config's)."""
    wait = home.compactor.lock_timeout if timeout is None else timeout
    return ProcessLock(home.state / "compact.lock", "compaction").acquire(wait)


def tables(home: Home) -> list[tuple[str, DeltaTable]]:
    """(name, table) of every table in the lake: an event type, or `_rollups/<name>`."""
    found: list[tuple[str, DeltaTable]] = []
    root = home.lake_location.uri.rstrip("/")
    for place in all_table_dirs(home):
        table = open_table(place)
        if table is not None:
            found.append((place.uri[len(root):].strip("/"), table))
    return found


def _record(home: Home, name: str, table: DeltaTable) -> None:
    """Record an event table's version (rollups catch up by themselves: not recorded)."""
    if "/" not in name and not name.startswith("_"):  # not _alerts either
        record_versions(home, {name: table.version()})


def optimize_lake(home: Home, target_mb: int | None = None,
                  lock_timeout: float | None = None) -> dict[str, int]:
    """Merge small files per partition up to the target size; files removed per table."""
    target = (target_mb or home.compactor.target_file_mb) << 20
    merged = {}
    with compaction_lock(home, lock_timeout):
        for event_type, table in tables(home):
            merged[event_type] = _optimize(table, target)
            _record(home, event_type, table)
    return merged


OPTIMIZE_ATTEMPTS = 5  # another host may merge or vacuum the same files meanwhile


def _optimize(table: DeltaTable, target: int) -> int:
    """Merge a table's small files; tried again from its new version when another writer
    changed the same files first. The files removed."""
    for attempt in range(1, OPTIMIZE_ATTEMPTS + 1):
        try:
            with delta_errors("optimize", table):
                return int(table.optimize.compact(target_size=target).get("numFilesRemoved", 0))
        except CommitFailedError:
            if attempt == OPTIMIZE_ATTEMPTS:
                raise LakeError(f"cannot optimize {table_location(table)}: other writers "
                                f"changed its files first {attempt} times",
                                hint="run it again later") from None
            table.update_incremental()
    raise AssertionError("unreachable")


Partition = tuple[str, ...]  # a partition's values, as text


# Delta's auto compaction (Databricks `spark.databricks.delta.autoCompact.*`) merges a
# partition once it holds `minNumFiles` (50) files under `minFileSize` (half of
# `maxFileSize`, 128 MB), after the write that crossed the line. Done the same way here, with
# a lower default threshold (`[compactor] auto_optimize_files`, 16): Spark spreads per-file
# costs over a cluster, tally reads a whole lake in one process, where 24 files a day
# partition made reads 2-5x slower than one file (issue 19). Compacting every 5 minutes adds
# a file to today's partition each run: at 16 it is merged every 80 minutes, the day so far
# rewritten 18 times a day. A threshold alone would leave each past day with up to 16 files
# for good; `settled_before` merges days no longer written to down to one file.
def optimize_small_files(table: DeltaTable, max_files: int, target_bytes: int,
                         settled_before: date | None = None) -> int:
    """Merge, in one commit, the small files of each partition holding more than
    `max_files` of them (of each holding two or more, if dated before `settled_before`);
    0 turns it off. Returns the files removed.

    A file is small under half of `target_bytes`, as in Delta's auto compaction: a merged
    partition holds about one small file, so it is merged again after `max_files` more.
    One Delta commit, atomic under a kill (its unreferenced files are the next run's to
    remove); it adds no stream transaction and keeps every one (`transaction_version`).
    The caller holds the compaction lock and records the table's new version
    (`record_versions`)."""
    if max_files <= 0:
        return 0
    columns = list(table.metadata().partition_columns)
    if len(columns) > 1:  # delta-rs filters are conjunctions; "in" is the one disjunction
        raise LakeError(f"cannot optimize a table partitioned by {', '.join(columns)}: "
                        "tally partitions tables by one column at most")
    counts = small_files_per_partition(table, columns, target_bytes // 2)
    crowded = [key for key, count in counts.items()
               if count > max_files or (count > 1 and _settled(columns, key, settled_before))]
    if not crowded:
        return 0
    place = table_location(table)
    before = data_files(place)
    try:
        with delta_errors("optimize", table):
            metrics = table.optimize.compact(partition_filters=_filter(columns, crowded),
                                             target_size=target_bytes)
    except BaseException as exc:
        remove_uncommitted_files(place, before=before)
        if isinstance(exc, CommitFailedError):
            return 0  # another writer merged those files first: a later run sees what is left
        raise
    return int(metrics.get("numFilesRemoved", 0))


def small_files_per_partition(table: DeltaTable, columns: list[str],
                              under_bytes: int) -> Counter[Partition]:
    """How many data files under `under_bytes` each partition (values as text) holds."""
    actions = pa.table(table.get_add_actions(flatten=True))
    keys = [actions.column(f"partition.{name}").to_pylist() for name in columns]
    sizes = actions.column("size_bytes").to_pylist()
    return Counter(tuple(str(values[row]) for values in keys)
                   for row, size in enumerate(sizes) if size < under_bytes)


def _settled(columns: list[str], key: Partition, before: date | None) -> bool:
    """Whether a partition's date is before `before`: no more files are expected in it."""
    return before is not None and "date" in columns and (
        key[columns.index("date")] < before.isoformat())


def _filter(columns: list[str],
            partitions: list[Partition]) -> list[tuple[str, str, list[str]]] | None:
    """The optimize filter selecting exactly `partitions` of a table partitioned by one
    column or none (None: the whole table)."""
    return [(columns[0], "in", [key[0] for key in partitions])] if columns else None


def vacuum_lake(home: Home, retention_hours: float | None = None,
                lock_timeout: float | None = None) -> dict[str, int]:
    """Delete files no table version newer than the retention still references; the files
    actually deleted per table.

    A full vacuum: files no commit ever referenced (left by a compaction killed while
    writing) go too. It holds the compaction lock, so a short retention can never delete
    the not-yet-committed files of a running compaction.
    """
    hours = check_retention(home, retention_hours)
    removed = {}
    with compaction_lock(home, lock_timeout):
        for event_type, table in tables(home):
            with delta_errors("vacuum", table):
                removed[event_type] = _vacuum(table, math.ceil(hours))  # never less than asked
            _record(home, event_type, table)
    return removed


def check_retention(home: Home, retention_hours: float | None) -> float:
    """The vacuum retention to use (default: the config's), if the lake allows it."""
    hours = home.compactor.vacuum_retention_hours if retention_hours is None else retention_hours
    if hours < 0:
        raise UsageError("retention must be zero or more hours")
    if hours < SHARED_RETENTION_HOURS and not home.lake_location.is_local:
        raise UsageError(f"a lake in an object store keeps unreferenced files at least "
                         f"{SHARED_RETENTION_HOURS} hour",
                         hint="a shorter retention could delete the files of a commit "
                              "another host is making; give --retention-hours 1 or more")
    return hours


@contextlib.contextmanager
def delta_errors(doing: str, table: DeltaTable) -> Iterator[None]:
    """A failure of delta-rs as one line: a data file gone is a damaged table."""
    try:
        with native_stderr_captured():
            yield
    except CommitFailedError:
        raise  # another writer came first: the caller decides
    except (OSError, DeltaError) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        root = str(table_location(table))
        if "not found" in detail or isinstance(exc, FileNotFoundError):
            raise DamagedFile("lake table", root, "a data file it references is missing",
                              hint=REBUILD_HINT) from exc
        raise LakeError(f"cannot {doing} {root}: {detail[:300]}") from exc


def table_location(table: DeltaTable) -> Location:
    """Where an opened table lives."""
    uri = table.table_uri.rstrip("/")
    if uri.startswith("file://"):
        return Location.local(local_path(uri))
    return Location(uri, tuple(sorted((table._storage_options or {}).items())))


def _vacuum(table: DeltaTable, hours: int) -> int:
    """Vacuum one table; count the files that existed and are gone (delta-rs lists what it
    meant to delete, present or not; in an object store, what it deleted)."""
    if not table_location(table).is_local:
        return len(table.vacuum(retention_hours=hours, dry_run=False,
                                enforce_retention_duration=False, full=True))
    root = local_path(table.table_uri)
    listed = table.vacuum(retention_hours=hours, dry_run=True,
                          enforce_retention_duration=False, full=True)
    present = [path for path in (_under(root, name) for name in listed) if path.exists()]
    table.vacuum(retention_hours=hours, dry_run=False, enforce_retention_duration=False,
                 full=True)
    return sum(1 for path in present if not path.exists())


def _under(root: Path, name: str) -> Path:
    path = local_path(name)
    return path if path.is_absolute() else root / path


CHECKPOINT_EVERY = 10  # commits: opening a table replays its log since the last checkpoint


def checkpoint_if_due(table: DeltaTable) -> bool:
    """Write a checkpoint of a table's log when CHECKPOINT_EVERY commits or more came after
    the last one (a year of five-minute runs: 30-70 ms to open without, 15-25 with)."""
    last = table_location(table) / "_delta_log" / "_last_checkpoint"
    try:
        since = int(orjson.loads(read_object(last) or b"")["version"])
    except (OSError, ValueError, KeyError, TypeError):
        since = -1
    if table.version() - since < CHECKPOINT_EVERY:
        return False
    with delta_errors("checkpoint", table):
        table.create_checkpoint()
    return True
