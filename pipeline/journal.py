"""Which log bytes each batch holds, so a damaged stage file can be made again from the logs.

The tailer appends one line per batch, synced before the checkpoint that commits the
batch: `{"batch": N, "ranges": [[identity, path, start, end, crc], ...]}`, the CRC-32 of
the file's bytes [0, end) proving, when they are read again, that they are the same; a
source's range adds its importer and that importer's state at `start`. Lines go to
`state/journal/<stream>-<first batch>.jsonl`, a new segment at every start of a tailer and
every SEGMENT_BATCHES batches. A batch number written twice (a crash before its commit,
then the batch read again) is read back from its last line. Compaction deletes the
segments whose batches have all left the stage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.checkpoint import decode_path, encode_path
from pipeline.stage import BatchId, fsync_dir

JOURNAL_DIR = "journal"
SEGMENT_BATCHES = 4096
_SEGMENT = re.compile(r"^(?P<stream>[0-9a-f]*)-(?P<first>[0-9]{12})\.jsonl$")


@dataclass(frozen=True)
class Range:
    """Bytes [start, end) of the file known as `identity`, last seen at `path`."""

    identity: str
    path: str  # relative to the logs directory (absolute for a source's file)
    start: int
    end: int
    crc: int | None  # of the bytes [0, end)
    # A source's file: {"kind", "agent", "root", "carry"}, the importer and its state at
    # `start`, to translate the lines again.
    source: dict[str, Any] | None = None


class JournalWriter:
    """Appends batch lines for one stream; `append` syncs before returning."""

    def __init__(self, state_dir: Path, stream: str) -> None:
        self.directory = state_dir / JOURNAL_DIR
        self.stream = stream
        self._fd: int | None = None
        self._first = 0

    def append(self, batch: BatchId, ranges: Iterable[Range]) -> None:
        """Write and sync the line of a batch about to be committed."""
        if self._fd is None or batch.number - self._first >= SEGMENT_BATCHES \
                or batch.number < self._first:
            self._open_segment(batch.number)
        assert self._fd is not None
        body = [[r.identity, encode_path(r.path), r.start, r.end, r.crc,
                 *([r.source] if r.source else [])] for r in ranges]
        # The leading newline ends a line torn by a crash (a full disk): it cannot swallow
        # this one.
        os.write(self._fd, b"\n" + orjson.dumps({"batch": batch.number, "ranges": body}) + b"\n")
        os.fsync(self._fd)

    def _open_segment(self, first: int) -> None:
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.stream}-{first:012d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._first = first
        fsync_dir(self.directory)

    def close(self) -> None:
        """Close the open segment."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def segments(state_dir: Path) -> list[tuple[str, int, Path]]:
    """(stream, first batch, path) of every journal segment."""
    directory = state_dir / JOURNAL_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _SEGMENT.match(path.name)
        if match:
            found.append((match["stream"], int(match["first"]), path))
    return sorted(found)


def batch_ranges(state_dir: Path, batch: BatchId) -> list[Range] | None:
    """The log ranges a batch was read from, or None if the journal does not have it."""
    found: list[Range] | None = None
    for stream, first, path in segments(state_dir):
        if stream != batch.stream or first > batch.number:
            continue
        for entry in _entries(path):
            if entry.get("batch") == batch.number:
                found = [Range(r[0], decode_path(r[1]), int(r[2]), int(r[3]), r[4],
                               r[5] if len(r) > 5 else None) for r in entry["ranges"]]
    return found


def prune(state_dir: Path, still_staged: set[BatchId], current: str) -> int:
    """Delete segments none of whose batches is still staged; the current stream's newest
    segment (a tailer may be appending to it) is kept. Returns how many were deleted."""
    found = segments(state_dir)
    newest = max((first for stream, first, _ in found if stream == current), default=None)
    deleted = 0
    for stream, first, path in found:
        if stream == current and first == newest:
            continue
        numbers = {entry.get("batch") for entry in _entries(path)}
        if not any(BatchId(stream, n) in still_staged for n in numbers if isinstance(n, int)):
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted


def _entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    for line in raw.splitlines():
        if not line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn last line of a crash: its batch was never committed
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
