"""`tally import` and `tally sources`: one source caught up once, and every source's lag.

An import is a tailer pass over one source's roots alone: the same batches, checkpoint and
quarantine as `tally tail`, so a second import reads only what is new, and a following
tailer that has the source configured goes on from where the import stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.checkpoint import FileState, load_checkpoint
from pipeline.config import Home
from pipeline.errors import DamagedFile, SourceError, UsageError
from pipeline.sources import (
    KIND_HINT,
    KINDS,
    OPENCODE,
    Root,
    Source,
    candidate_dirs,
    opencode_databases,
    roots_of,
)
from pipeline.tailer import Notify, PollResult, Progress, Tailer

if TYPE_CHECKING:
    from pipeline.compactor import CompactionResult


def chosen_source(home: Home, kind: str, path: str | None = None,
                  agent: str | None = None) -> Source:
    """The source `tally import KIND` reads: the configured one of that kind (and path or
    agent, when given), else a new one (discovered where the CLI keeps its logs)."""
    if kind not in KINDS:
        raise UsageError(f"unknown source kind {kind!r}", hint="kinds: " + ", ".join(KINDS))
    for source in home.sources:
        if source.kind == kind and path in (None, source.path) and agent in (None, source.name):
            return source
    return Source(kind, path, agent or "")


@dataclass
class Imported:
    """What an import read, and what its compaction moved into the lake (None: none ran)."""

    read: PollResult
    compacted: CompactionResult | None = None


def import_and_compact(home: Home, source: Source, notify: Notify | None = None,
                       progress: Progress | None = None, compact: bool = True) -> Imported:
    """`import_source`, then, if it staged anything, a compaction: a history read at once
    is thousands of batches that every report and budget check would read again."""
    read = import_source(home, source, notify, progress)
    if not (compact and read.batches):
        return Imported(read)
    from pipeline.compactor import run_compaction

    return Imported(read, run_compaction(home))


def import_source(home: Home, source: Source, notify: Notify | None = None,
                  progress: Progress | None = None, lock_timeout: float = 0.0) -> PollResult:
    """Read what is new in one source's files, exactly once, through the tailer."""
    roots = tuple(roots_of(source, home))
    if not _found(source, home):
        where = ", ".join(candidate_dirs(source))
        raise SourceError(f"no {source.kind} logs here", path=where,
                          hint=f"{KIND_HINT[source.kind]}; give the directory with --path")
    with Tailer(home, notify=notify, roots=roots, logs=False,
                lock_timeout=lock_timeout) as tailer:
        return tailer.poll(progress=progress)


@dataclass
class SourceStatus:
    """A source, configured or found, with its files and how much of them is unread."""

    source: Source
    configured: bool
    roots: list[Root] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    unread_bytes: int = 0
    unread_files: int = 0
    newest_mtime: float | None = None


def list_sources(home: Home, walk: Callable[[str], list[str]] | None = None) -> list[SourceStatus]:
    """The configured sources, then those of other kinds found where the CLIs keep logs."""
    try:
        states = load_checkpoint(home.state).files
    except DamagedFile:
        states = {}
    read = {state.path: state for state in states.values()}
    statuses = [SourceStatus(s, True) for s in home.sources]
    configured_kinds = {s.kind for s in home.sources}
    statuses += [SourceStatus(Source(kind), False) for kind in KINDS
                 if kind not in configured_kinds and _found(Source(kind), home)]
    for status in statuses:
        status.roots = roots_of(status.source, home)
        for root in status.roots:
            for path in (walk or _files)(root.path):
                _count(status, path, read.get(path))
    return statuses


def _found(source: Source, home: Home) -> bool:
    """Whether the source's logs exist (opencode: a database or its older JSON messages)."""
    if source.kind == OPENCODE:
        return bool(opencode_databases(source)) or any(
            os.path.isdir(os.path.join(d, "storage", "message")) for d in candidate_dirs(source))
    return bool(roots_of(source, home))


def _files(top: str) -> list[str]:
    found = []
    for directory, _dirs, names in os.walk(top):
        found += [os.path.join(directory, n) for n in names if n.endswith(".jsonl")]
    return found


def _count(status: SourceStatus, path: str, state: FileState | None) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    status.files += 1
    status.bytes += st.st_size
    status.newest_mtime = max(status.newest_mtime or 0.0, st.st_mtime)
    done = state.offset if state is not None and (state.dev, state.ino) == (
        st.st_dev, st.st_ino) else 0
    if st.st_size > done:
        status.unread_bytes += st.st_size - done
        status.unread_files += 1
