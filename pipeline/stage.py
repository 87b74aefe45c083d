"""The stage directory: typed Arrow IPC batches of valid events, quarantine JSONL of rejects.

A tailer batch N writes `stage/<type>/b<N>.arrow` for each event type it saw and
`quarantine/b<N>.jsonl` for its rejects, then moves the checkpoint's batch watermark to N.
Files above the watermark are leftovers of a crash: never read, deleted by the next tailer.

Files only: typing events into frames is `pipeline.frames`, so a process that only moves
files (the tailer while workers type its lines) never loads Polars.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

_BATCH_FILE = re.compile(r"^b(?P<batch>[0-9]{12})\.(?:arrow|jsonl)$")


def batch_name(batch: int, suffix: str) -> str:
    """File name of a batch: b000000000042.arrow."""
    return f"b{batch:012d}.{suffix}"


def batch_number(path: Path) -> int | None:
    """The batch number in a stage or quarantine file name, None for anything else."""
    match = _BATCH_FILE.match(path.name)
    return int(match["batch"]) if match else None


@dataclass
class StagedBlock:
    """A checked block ready to stage: Arrow IPC bytes and row counts by type, rejects.

    A worker writes its frames to part files instead (`parts`), which the tailer
    syncs and renames into place when it commits the batch.
    """

    frames: dict[str, bytes] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    parts: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------- durable files


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable."""
    fsync_path(path)


def fsync_path(path: Path) -> None:
    """Flush a file (or a directory) to disk by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write via `write(handle)` to a temp file, fsync it, rename it over `path`."""
    rename_or_discard(write_synced(path, write), path)


def rename_or_discard(tmp: Path, path: Path) -> None:
    """Rename a synced temp file over `path`; if that fails, delete the temp file."""
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_path(path: Path) -> Path:
    """Where `write_synced` writes the file that becomes `path`."""
    return path.with_name(f".{path.name}.tmp")


def write_synced(path: Path, write: Callable[[Any], None]) -> Path:
    """Write via `write(handle)` to a temp file beside `path` and fsync it; the temp path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing half-written behind
        raise
    return tmp


def write_stage_bytes(stage_dir: Path, batch: int, event_type: str, ipc: bytes) -> Path:
    """Write one type's Arrow IPC bytes of a batch durably (the caller fsyncs the directory)."""
    path = stage_dir / event_type / batch_name(batch, "arrow")
    write_atomic(path, lambda handle: handle.write(ipc))
    return path


def part_path(stage_dir: Path, event_type: str, name: str) -> Path:
    """Where a worker writes one type's Arrow IPC file of a block (`.part-<name>.tmp`), to
    be synced and renamed into a batch file at commit; a crash leaves it to
    `remove_orphans`.

    Not synced by the worker: a worker waiting on its fsyncs checks no lines meanwhile,
    while the tailer's commit threads sync a batch's files side by side.
    """
    directory = stage_dir / event_type
    directory.mkdir(parents=True, exist_ok=True)
    return temp_path(directory / f"part-{name}")


def write_quarantine(quarantine_dir: Path, batch: int, records: list[dict[str, Any]]) -> Path:
    """Write a batch's rejected-line records durably (the caller fsyncs the directory)."""
    path = quarantine_dir / batch_name(batch, "jsonl")
    body = b"".join(orjson.dumps(r) + b"\n" for r in records)
    write_atomic(path, lambda handle: handle.write(body))
    return path


# ---------------------------------------------------------------- reading the stage


def batch_files(directory: Path, suffix: str, up_to: int | None = None,
                after: int = 0) -> list[tuple[int, Path]]:
    """(batch, path) of committed batch files in a directory, ascending."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob(f"b*.{suffix}"):
        number = batch_number(path)
        if number is not None and number > after and (up_to is None or number <= up_to):
            found.append((number, path))
    return sorted(found)


def staged_files(stage_dir: Path, event_type: str, up_to: int,
                 after: int = 0) -> list[tuple[int, Path]]:
    """Committed stage files of one type (batches in `after < b <= up_to`), ascending."""
    return batch_files(stage_dir / event_type, "arrow", up_to=up_to, after=after)


def remove_orphans(directories: Iterable[Path], above: int) -> list[Path]:
    """Delete batch files newer than the committed watermark, and temp files (a crash's)."""
    removed = []
    for directory in directories:
        for suffix in ("arrow", "jsonl"):
            for _, path in batch_files(directory, suffix, after=above):
                path.unlink(missing_ok=True)
                removed.append(path)
        for tmp in directory.glob(".*.tmp") if directory.is_dir() else ():
            tmp.unlink(missing_ok=True)
    return removed


def iter_quarantine(quarantine_dir: Path, up_to: int | None = None) -> Iterator[dict[str, Any]]:
    """Every quarantine record of committed batches."""
    for _, path in batch_files(quarantine_dir, "jsonl", up_to=up_to):
        with open(path, "rb") as handle:
            for line in handle:
                yield orjson.loads(line)
