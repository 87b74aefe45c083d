"""Importers: each agent CLI's log lines translated into tally events.

An importer turns a block of complete lines of one file into event lines (JSON, as a
producer would write them) and quarantine records, given what it carried over from the
file's earlier lines (Codex's running totals, Gemini's session). The tailer checks the
events like any line under logs/, so every rule of the spine (exactly once, quarantine,
the duplicate rule) holds for them. Event ids come from the logs' own ids, so a file read
twice, or the same message in two files, counts once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.errors import safe_text
from pipeline.events import Rejection, timestamp_ok
from pipeline.intake import quarantine_record, split_block
from pipeline.sources import CLAUDE, CODEX, GEMINI, OPENCODE, Root

MAX_ID = 128
Carry = dict[str, Any]


@dataclass(frozen=True)
class FileContext:
    """The file a block comes from: its path, the root it was found under, its quarantine name."""

    path: str
    root: Root
    source: str  # the file's name in quarantine records

    @property
    def relative(self) -> str:
        """The path below the root, with `/` separators, printable (a name that is not
        UTF-8 has its bytes as \\xNN: sessions and projects come from it)."""
        return safe_text(self.path[len(self.root.path) + 1:].replace("\\", "/"))


@dataclass
class Translated:
    """Events made from a block, where each line that made them starts, and rejects."""

    events: list[dict[str, Any]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: dict[str, Any], start: int) -> None:
        """One event made from the line at `start`."""
        self.events.append(event)
        self.starts.append(start)

    def reject(self, where: FileContext, start: int, line: bytes, reason: str,
               message: str, pointer: str = "") -> None:
        """Quarantine the line at `start` with a reason."""
        self.rejected.append(quarantine_record(where.source, start, line,
                                               Rejection(reason, message, pointer)))


# (a block of complete lines, the offset it was read at, its file, the state before it)
Translate = Callable[[bytes, int, FileContext, Carry | None], tuple[Translated, Carry | None]]


def event_id(*parts: object) -> str:
    """An event id from a log's own ids, hashed where it would pass the schema's limit."""
    text = ":".join(str(p) for p in parts)
    if len(text) <= MAX_ID:
        return text
    return f"{parts[0]}:{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def translator(kind: str) -> Translate:
    """The importer of a source kind."""
    from pipeline.importers import claude, codex, gemini

    table: dict[str, Translate] = {CLAUDE: claude.translate, CODEX: codex.translate,
                                   GEMINI: gemini.translate, OPENCODE: passthrough}
    return table[kind]


def passthrough(block: bytes, position: int, where: FileContext,
                carry: Carry | None) -> tuple[Translated, Carry | None]:
    """Lines that are tally events already (what the opencode importer wrote)."""
    out = Translated()
    lines, starts = split_block(block, position)
    for line, start in zip(lines, starts, strict=True):
        try:
            out.add(orjson.loads(line), start)
        except orjson.JSONDecodeError as exc:
            out.reject(where, start, line, "invalid_json", f"cannot parse: {exc}")
    return out, carry


def whole(value: Any) -> int:
    """A token count as the CLIs write it (a number or numeric text); 0 for anything else."""
    if type(value) is int:  # the common case first (bool is not `int` here)
        return value if value > 0 else 0
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value == value:
        return max(int(value), 0)
    if isinstance(value, str):
        try:
            return max(int(float(value)), 0)
        except ValueError:
            return 0
    return 0


def text(value: Any) -> str | None:
    """A non-empty string field, else None."""
    return value if type(value) is str and value and not value.isspace() else None


_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]{1,9})?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})")


def stamp(value: Any) -> str | None:
    """`value` if it is an RFC 3339 timestamp with an offset that the schema accepts."""
    if isinstance(value, str) and _RFC3339.fullmatch(value) and timestamp_ok(value):
        return value
    return None


def label(value: Any, longest: int = 256) -> str | None:
    """A string field short enough for an envelope label, else None."""
    found = text(value)
    return found if found is not None and len(found) <= longest else None


def looks_whole(line: bytes) -> bool:
    """Whether a line not parsed (it has no usage) at least looks like one JSON object: a
    cut or garbled line goes to the quarantine without costing a parse of every line."""
    stripped = line.strip()
    return not stripped or (stripped[:1] == b"{" and stripped[-1:] == b"}")
