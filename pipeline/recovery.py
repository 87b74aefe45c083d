"""A damaged stage file made again from the logs.

A stage file that cannot be read (a bad disk, a truncated copy, someone's editor) is set
aside under `quarantine/damaged/`, never deleted, and its batch's lines are read again
from the log ranges the journal (pipeline.journal) recorded for that batch: checked and
typed as the tailer did, and written back as the same stage file. Only the events of the
damaged file's type are kept; the batch's other files are intact.

When the journal lacks the batch, or a log no longer holds those bytes (deleted, rotated
away and pruned, rewritten), the events cannot be had again: that is reported as lost,
with the file and the byte range, never passed over.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from pipeline.checkpoint import decode_path, load_checkpoint
from pipeline.config import Home
from pipeline.errors import DamagedFile, display_path, safe_text
from pipeline.events import Validator
from pipeline.frames import BlockStager, ipc_bytes
from pipeline.identity import base_fingerprint, crc_of, derived_id_prefix, fingerprint_of
from pipeline.journal import Range, batch_ranges
from pipeline.source_files import translate
from pipeline.sources import Root
from pipeline.stage import StagedBlock, batch_id, fsync_dir, write_atomic

DAMAGED_DIR = "damaged"


@dataclass(frozen=True)
class Restaged:
    """What became of a damaged stage file: where it was set aside, how many events were
    staged again, and what could not be (None if nothing was lost)."""

    set_aside: Path
    events: int
    lost: str | None


def set_aside(home: Home, path: Path) -> Path:
    """Move a damaged stage file under quarantine/damaged/<type>/, stamped; its new path."""
    target_dir = home.quarantine / DAMAGED_DIR / path.parent.name
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{path.name}.{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    shutil.move(path, target)
    fsync_dir(target_dir)
    fsync_dir(path.parent)
    return target


def restage(home: Home, path: Path, validator: Validator) -> Restaged:
    """Set a damaged stage file aside and write it again from the logs, as far as they
    still hold its lines."""
    event_type, batch = path.parent.name, batch_id(path)
    assert batch is not None  # only batch files are staged
    aside = set_aside(home, path)
    ranges = batch_ranges(home.state, batch)
    if ranges is None:
        return Restaged(aside, 0, f"batch {batch.number} of stream {batch.stream or '-'} is "
                                  "not in the journal (state/journal/), so its log ranges "
                                  "are unknown")
    frames, lost = [], []
    stager = BlockStager(validator, decode_from=None)
    for logged in ranges:
        frame = _read_again(home, logged, event_type, stager)
        if isinstance(frame, str):
            lost.append(frame)
        elif frame.height:
            frames.append(frame)
    if frames:
        whole = pl.concat(frames, how="diagonal_relaxed")
        write_atomic(path, lambda handle: handle.write(ipc_bytes(whole)))
        fsync_dir(path.parent)
    events = sum(frame.height for frame in frames)
    return Restaged(aside, events, "; ".join(lost) or None)


def _read_again(home: Home, logged: Range, event_type: str,
                stager: BlockStager) -> pl.DataFrame | str:
    """The events of one type in a logged range, or why they cannot be read again."""
    where = f"bytes {logged.start:,}-{logged.end:,} of {display_path(logged.path)}"
    for candidate in _paths_of(home, logged):
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not _holds(fd, logged):
                continue
            data = os.pread(fd, logged.end - logged.start, logged.start)
        finally:
            os.close(fd)
        if len(data) != logged.end - logged.start:
            return f"{where}: the file is shorter now"
        if logged.source is not None:  # a source's lines: translated as they were
            staged = _translated_again(stager, logged, data)
        else:
            staged = stager.stage(data, logged.start, safe_text(logged.path),
                                  derived_id_prefix(logged.identity), home.tailer.max_line_bytes)
        ipc = staged.frames.get(event_type)
        return pl.DataFrame() if ipc is None else pl.read_ipc(ipc)
    return f"{where}: no log holds it any more (deleted or rewritten)"


def _translated_again(stager: BlockStager, logged: Range, data: bytes) -> StagedBlock:
    assert logged.source is not None
    found = logged.source
    root = Root(found["kind"], found["agent"], decode_path(found["root"]))
    source = safe_text(logged.path)
    translated, _ = translate(root, logged.path, source, data, logged.start, found["carry"])
    return stager.stage_events(translated.events, [source] * len(translated.events),
                               translated.starts, translated.rejected)


def _holds(fd: int, logged: Range) -> bool:
    """Whether the open file is the one the range was read from: its first line, and
    everything up to the range's end by CRC (a file written anew with the same first line
    is not)."""
    if fingerprint_of(fd) != base_fingerprint(logged.identity):
        return False
    return logged.crc is None or crc_of(fd, logged.end) == logged.crc


def _paths_of(home: Home, logged: Range) -> list[Path]:
    """Where the file of a range may be now: its checkpointed path, then the journal's."""
    paths = []
    try:
        state = load_checkpoint(home.state).files.get(logged.identity)
    except DamagedFile:
        state = None
    if state is not None:
        paths.append(home.logs / state.path)
    paths.append(home.logs / logged.path)
    return paths
