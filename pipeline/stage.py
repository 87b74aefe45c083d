"""The stage directory: typed Arrow IPC batches of valid events, quarantine JSONL of rejects.

A tailer batch N of stream S writes `stage/<type>/b<N>-<S>.arrow` for each event type it
saw and `quarantine/b<N>-<S>.jsonl` for its rejects, then moves the checkpoint's watermark
to (S, N). Files of S above the watermark are leftovers of a crash: never read, deleted by
the next tailer. Files of another stream were committed under a checkpoint since replaced
(deleted, restored from a backup, found damaged). A stream is the batches' identity: its
numbers never repeat one the lake holds, whatever happens to the checkpoint.
(Homes from before streams have files `b<N>.arrow` of stream "".)

Files only: typing events into frames is `pipeline.frames`, so a process that only moves
files (the tailer while workers type its lines) never loads Polars.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson

_BATCH_FILE = re.compile(
    r"^b(?P<batch>[0-9]{12})(?:-(?P<stream>[0-9a-f]{1,64}))?\.(?:arrow|jsonl)$")


class BatchId(NamedTuple):
    """A tailer batch: its stream and its number in the stream."""

    stream: str
    number: int


class Committed(Protocol):
    """A watermark: `stream` and the highest committed `batch` number in it."""

    @property
    def stream(self) -> str: ...

    @property
    def batch(self) -> int: ...


def batch_name(batch: BatchId, suffix: str) -> str:
    """File name of a batch: b000000000042-<stream>.arrow (b000000000042.arrow for "")."""
    stream = f"-{batch.stream}" if batch.stream else ""
    return f"b{batch.number:012d}{stream}.{suffix}"


def batch_id(path: Path) -> BatchId | None:
    """The batch of a stage or quarantine file name, None for anything else."""
    match = _BATCH_FILE.match(path.name)
    return BatchId(match["stream"] or "", int(match["batch"])) if match else None


def is_committed(batch: BatchId, watermark: Committed | None) -> bool:
    """Whether a batch file is committed under `watermark` (all are, without one)."""
    if watermark is None or batch.stream != watermark.stream:
        return True
    return batch.number <= watermark.batch


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


def write_stage_bytes(stage_dir: Path, batch: BatchId, event_type: str, ipc: bytes) -> Path:
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


def write_quarantine(quarantine_dir: Path, batch: BatchId,
                     records: list[dict[str, Any]]) -> Path:
    """Write a batch's rejected-line records durably (the caller fsyncs the directory)."""
    path = quarantine_dir / batch_name(batch, "jsonl")
    body = b"".join(orjson.dumps(r) + b"\n" for r in records)
    write_atomic(path, lambda handle: handle.write(body))
    return path


# ---------------------------------------------------------------- reading the stage


def all_batch_files(directory: Path, suffix: str) -> list[tuple[BatchId, Path]]:
    """(batch, path) of every batch file in a directory, by stream, then number."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob(f"b*.{suffix}"):
        batch = batch_id(path)
        if batch is not None:
            found.append((batch, path))
    return sorted(found)


def batch_files(directory: Path, suffix: str,
                watermark: Committed | None = None) -> list[tuple[BatchId, Path]]:
    """(batch, path) of the committed batch files in a directory, by stream, then number."""
    return [(batch, path) for batch, path in all_batch_files(directory, suffix)
            if is_committed(batch, watermark)]


def staged_files(stage_dir: Path, event_type: str,
                 watermark: Committed | None) -> list[tuple[BatchId, Path]]:
    """Committed stage files of one type, by stream, then number."""
    return batch_files(stage_dir / event_type, "arrow", watermark)


def remove_orphans(directories: Iterable[Path], watermark: Committed) -> list[Path]:
    """Delete the watermark stream's batch files above it, and temp files (a crash's)."""
    removed = []
    for directory in directories:
        for suffix in ("arrow", "jsonl"):
            for batch, path in all_batch_files(directory, suffix):
                if not is_committed(batch, watermark):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        for tmp in directory.glob(".*.tmp") if directory.is_dir() else ():
            tmp.unlink(missing_ok=True)
    return removed


def iter_quarantine(quarantine_dir: Path,
                    watermark: Committed | None = None) -> Iterator[dict[str, Any]]:
    """Every quarantine record of committed batches, then those of rows compaction could
    not write (`compaction-*.jsonl`); a damaged line is skipped."""
    paths = [path for _, path in batch_files(quarantine_dir, "jsonl", watermark)]
    if quarantine_dir.is_dir():
        paths += sorted(quarantine_dir.glob("compaction-*.jsonl"))
    for path in paths:
        with open(path, "rb") as handle:
            for line in handle:
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
