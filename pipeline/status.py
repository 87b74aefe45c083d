"""`tally status`: where the tailer stands, what waits in the stage, what was quarantined."""

from __future__ import annotations

import os
from dataclasses import dataclass

import polars as pl

from pipeline.checkpoint import FileState, load_checkpoint
from pipeline.config import Home
from pipeline.lake import lake_batch, open_table, table_path
from pipeline.stage import staged_files

READ_ATTEMPTS = 5


@dataclass(frozen=True)
class FileStatus:
    """One watched file as the checkpoint sees it."""

    path: str
    offset: int
    size: int | None

    @property
    def lag(self) -> int | None:
        """Bytes not yet consumed; None when the file is gone."""
        return None if self.size is None else max(0, self.size - self.offset)


@dataclass(frozen=True)
class TailStatus:
    """What `tally status` shows."""

    files: list[FileStatus]
    staged_waiting: int
    staged_total: int
    quarantined_total: int
    batch: int
    last_checkpoint: str


def tail_status(home: Home) -> TailStatus:
    """Per-file offsets and lag, stage and quarantine counts, last checkpoint time."""
    checkpoint = load_checkpoint(home.state)
    files = [FileStatus(state.path, state.offset, _size_if_same(home, state))
             for state in sorted(checkpoint.files.values(), key=lambda s: s.path)]
    return TailStatus(files, _waiting(home, checkpoint.batch), checkpoint.staged,
                      checkpoint.quarantined, checkpoint.batch, checkpoint.updated_at)


def _waiting(home: Home, watermark: int) -> int:
    """Staged events not yet in the lake (batches above each table's committed one)."""
    if not home.stage.is_dir():
        return 0
    for attempt in range(READ_ATTEMPTS):
        try:
            return sum(_waiting_of(home, d.name, watermark)
                       for d in sorted(home.stage.iterdir()) if d.is_dir())
        except FileNotFoundError:  # a compaction removed a file we listed; count again
            if attempt == READ_ATTEMPTS - 1:
                raise
    return 0


def _waiting_of(home: Home, event_type: str, watermark: int) -> int:
    committed = lake_batch(open_table(table_path(home, event_type)))
    paths = [p for _, p in staged_files(home.stage, event_type, watermark, after=committed)]
    return int(pl.scan_ipc(paths).select(pl.len()).collect().item()) if paths else 0


def _size_if_same(home: Home, state: FileState) -> int | None:
    try:
        st = os.stat(home.logs / state.path)
    except OSError:
        return None
    return st.st_size if (st.st_dev, st.st_ino) == (state.dev, state.ino) else None
