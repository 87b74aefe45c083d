"""What a tailer does for the sources beside reading files: their roots, opencode's
databases copied into files, the directories to watch, and a block's translation."""

from __future__ import annotations

import copy
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Home
from pipeline.importers import Carry, FileContext, Translated, translator
from pipeline.importers.opencode import export_opencode
from pipeline.sources import OPENCODE, Root, Source, candidate_dirs, opencode_databases, roots_of

Notify = Callable[[str], None]


def configured_roots(home: Home, notify: Notify) -> tuple[Root, ...]:
    """The roots of the home's [[sources]]; a source without any is told once."""
    roots: list[Root] = []
    for source in home.sources:
        found = roots_of(source, home)
        if not found:
            notify(f"source {source.name}: no {source.kind} logs in "
                   f"{', '.join(candidate_dirs(source))}; restart to read them once they exist")
        roots += found
    return tuple(roots)


def translate(root: Root, path: str, source: str, block: bytes, position: int,
              carry: Carry | None) -> tuple[Translated, Carry | None]:
    """A block of a source's file (complete lines read at `position`) as event lines.

    The importer gets a copy of the state: the one given stays what the checkpoint, the
    journal and a batch not yet committed hold, whatever the importer changes."""
    where = FileContext(path, root, source)
    return translator(root.kind)(block, position, where, copy.deepcopy(carry))


@dataclass
class ImportedRows:
    """The events importers made for one batch, from however many files, with the file and
    offset of the line each came from: typed together when the batch is sealed, since a
    frame per file would cost more than its lines (thousands of small transcripts)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def add(self, translated: Translated, source: str) -> None:
        """A block's events and rejects."""
        self.events += translated.events
        self.sources += [source] * len(translated.events)
        self.offsets += translated.starts
        self.rejected += translated.rejected

    def __bool__(self) -> bool:
        return bool(self.events or self.rejected)


class SourceCopies:
    """The opencode sources among a tailer's roots: their databases, copied into files."""

    def __init__(self, home: Home, roots: tuple[Root, ...], warn: Callable[[str, str], None]):
        self.home = home
        self.warn = warn  # (key, message), told once per key
        self.sources: list[Source] = [root.source for root in roots
                                      if root.kind == OPENCODE and root.source is not None]

    def copy(self) -> int:
        """Copy what changed in the databases into the files the tailer reads (see
        pipeline.importers.opencode); how many events were copied."""
        copied = 0
        for source in self.sources:
            try:
                copied += export_opencode(source, self.home).appended
            except (OSError, sqlite3.Error, ValueError) as exc:
                where = ", ".join(map(str, opencode_databases(source))) or "opencode"
                self.warn(where, f"{where}: cannot read opencode's messages ({exc}); "
                                 "will retry")
        return copied

    def directories(self) -> list[str]:
        """The data directories whose changes call for a copy."""
        return [d for source in self.sources for d in candidate_dirs(source)
                if os.path.isdir(d)]

    def holds(self, path: str) -> bool:
        """Whether `path` lies in one of their data directories."""
        return any(path.startswith(d + os.sep) for source in self.sources
                   for d in candidate_dirs(source))
