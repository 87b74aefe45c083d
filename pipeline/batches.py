"""A batch's files, written side by side: each event type's stage file, the quarantine
file of its rejects and its journal line, every one synced before the checkpoint that
commits them is published (pipeline.checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline.config import Home
from pipeline.journal import JournalWriter, Range
from pipeline.stage import (
    BatchId,
    StagedBlock,
    batch_name,
    fsync_dir,
    fsync_path,
    rename_or_discard,
    write_quarantine,
    write_stage_bytes,
)

COMMIT_WRITERS = 8


class BatchWriter:
    """Writes batches' files on a pool of threads: their fsyncs overlap, and overlap the
    checkpoint's, instead of following one another."""

    def __init__(self, home: Home, stream: str) -> None:
        self.home = home
        self.journal = JournalWriter(home.state, stream)
        self._writers = ThreadPoolExecutor(COMMIT_WRITERS, thread_name_prefix="tally-commit")

    def write(self, batch: BatchId, staged_blocks: list[StagedBlock],
              rejected: list[dict[str, Any]], ranges: list[Range]) -> list[Future[None]]:
        """Start writing every file of a batch; the futures say when each is durable."""
        by_type: dict[str, list[bytes | Path]] = {}
        for block in staged_blocks:
            for event_type, ipc in block.frames.items():
                by_type.setdefault(event_type, []).append(ipc)
            for event_type, part in block.parts.items():
                by_type.setdefault(event_type, []).append(part)
        writes = [self._writers.submit(self._write_type, batch, event_type, parts)
                  for event_type, parts in by_type.items()]
        if rejected:
            writes.append(self._writers.submit(self._write_rejected, batch, rejected))
        writes.append(self._writers.submit(self.journal.append, batch, ranges))
        return writes

    def close(self) -> None:
        """Wait for writes under way and close the journal."""
        self._writers.shutdown(wait=True)
        self.journal.close()

    def _write_type(self, batch: BatchId, event_type: str, parts: list[bytes | Path]) -> None:
        """Write a type's batch file from frames (bytes) and workers' part files (synced here).

        A batch holds several parts only when it spans files or small blocks; a catch-up's
        batch is one part, renamed into place. If the commit fails, `discard_parts`
        deletes what is not renamed (a crash leaves it to the next `remove_orphans`).
        """
        only = parts[0] if len(parts) == 1 else None
        if isinstance(only, Path):
            fsync_path(only)
            rename_or_discard(only, self.home.stage / event_type / batch_name(batch, "arrow"))
        else:
            ipc = only if isinstance(only, bytes) else _concat_ipc(parts)
            write_stage_bytes(self.home.stage, batch, event_type, ipc)
            for part in parts:
                if isinstance(part, Path):
                    part.unlink()
        fsync_dir(self.home.stage / event_type)

    def _write_rejected(self, batch: BatchId, rejected: list[dict[str, Any]]) -> None:
        write_quarantine(self.home.quarantine, batch, rejected)
        fsync_dir(self.home.quarantine)


def discard_parts(checks: Iterable[Future[StagedBlock]]) -> None:
    """Delete the part files of checks whose batch will not be committed, once done."""
    for check in checks:
        check.add_done_callback(_unlink_parts)


def _unlink_parts(future: Future[StagedBlock]) -> None:
    if not future.cancelled() and future.exception() is None:
        for part in future.result().parts.values():
            part.unlink(missing_ok=True)  # gone already if it was renamed into a batch


def _concat_ipc(parts: list[bytes | Path]) -> bytes:
    from pipeline.frames import concat_ipc  # Polars: only when a batch has several parts

    return concat_ipc(parts)
