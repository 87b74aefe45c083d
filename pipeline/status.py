"""`tally status`: where the tailer stands, what waits in the stage, what was quarantined,
and whether the checkpoint, the stage and the lake agree."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.checkpoint import (
    Checkpoint,
    FileState,
    Watermark,
    load_checkpoint,
    read_watermark,
)
from pipeline.config import Home
from pipeline.errors import DamagedFile, display_path
from pipeline.ledger import lake_high_water, lost_commits, open_table, stream_batch, table_path
from pipeline.recovery import DAMAGED_DIR
from pipeline.stage import all_batch_files, is_committed
from pipeline.swap import interrupted_rebuild

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
    """What `tally status` shows; `problems` are the disagreements found, one line each."""

    files: list[FileStatus]
    staged_waiting: int
    staged_total: int
    quarantined_total: int
    batch: int
    last_checkpoint: str
    stream: str = ""
    problems: list[str] = field(default_factory=list)
    set_aside: int = 0  # damaged stage files kept under quarantine/damaged/


def tail_status(home: Home) -> TailStatus:
    """Per-file offsets and lag, stage and quarantine counts, last checkpoint time, and the
    problems found between checkpoint, stage and lake."""
    problems: list[str] = []
    checkpoint = _checkpoint(home, problems)
    files = [FileStatus(state.path, state.offset, _size_if_same(home, state))
             for state in sorted(checkpoint.files.values(), key=lambda s: s.path)]
    held = lake_high_water(home, checkpoint.stream)
    if held > checkpoint.batch:
        problems.append(f"the checkpoint (batch {checkpoint.batch}) is behind the lake, which "
                        f"holds batch {held} of its stream (restored from a backup?); the "
                        "next `tally tail` goes on under a new stream and reads the lines "
                        "after the checkpoint again")
    waiting = _waiting(home, checkpoint.watermark, problems)
    for leftover in interrupted_rebuild(home):
        problems.append(f"{display_path(leftover)} is left by an interrupted rebuild; the next "
                        "`tally tail`, `tally compact` or `tally rebuild` finishes or undoes it")
    return TailStatus(files, waiting, checkpoint.staged, checkpoint.quarantined,
                      checkpoint.batch, checkpoint.updated_at, checkpoint.stream, problems,
                      _set_aside(home))


def _checkpoint(home: Home, problems: list[str]) -> Checkpoint:
    try:
        return load_checkpoint(home.state)
    except DamagedFile as damaged:
        watermark = read_watermark(home.state)  # the one before it, or DamagedFile
        problems.append(f"{damaged.message}; readers use the checkpoint before it; "
                        f"{damaged.hint}")
        return Checkpoint(batch=watermark.batch, stream=watermark.stream)


def _waiting(home: Home, watermark: Watermark, problems: list[str]) -> int:
    """Staged events not yet in the lake, with damaged files and tables as problems."""
    if not home.stage.is_dir():
        return 0
    waiting = 0
    for directory in sorted(p for p in home.stage.iterdir() if p.is_dir()):
        event_type = directory.name
        try:
            table = open_table(table_path(home, event_type))
            lost = lost_commits(home, event_type, table)
        except DamagedFile as damaged:
            table, lost = None, f"{damaged.message}; {damaged.hint}"
        if lost:
            problems.append(lost if "rebuild" in lost else
                            f"{lost}; `tally rebuild` replays the logs into a fresh lake")
        held: dict[str, int] = {}
        for batch, path in all_batch_files(directory, "arrow"):
            if not is_committed(batch, watermark):
                continue
            if batch.stream not in held:
                held[batch.stream] = stream_batch(table, batch.stream, home.host,
                                                  home.lake_location.is_local)
            if batch.number <= held[batch.stream]:
                continue
            waiting += _rows_or_problem(path, problems)
    return waiting


def _rows_or_problem(path: os.PathLike[str], problems: list[str]) -> int:
    try:
        with pa.memory_map(os.fspath(path)) as source:
            reader = pa.ipc.open_file(source)
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except FileNotFoundError:
        return 0  # compacted meanwhile
    except (OSError, pa.ArrowException) as exc:
        detail = (str(exc).splitlines() or ["unreadable"])[0]
        problems.append(f"stage file {display_path(path)} is damaged ({detail}); "
                        "`tally compact` sets it aside and stages its events again from "
                        "the logs")
        return 0


def _set_aside(home: Home) -> int:
    damaged = home.quarantine / DAMAGED_DIR
    return sum(len(files) for _, _, files in os.walk(damaged)) if damaged.is_dir() else 0


def _size_if_same(home: Home, state: FileState) -> int | None:
    try:
        st = os.stat(home.logs / state.path)
    except OSError:
        return None
    return st.st_size if (st.st_dev, st.st_ino) == (state.dev, state.ino) else None
