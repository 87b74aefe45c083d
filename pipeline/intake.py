"""Checking blocks of raw lines: the tailer's per-line work, in its process or in workers.

A block is complete lines of one file. Its lines are parsed and checked a chunk at a time:
one jsonschema-rs call covers a whole chunk, and only a chunk holding a line that call
refuses, or one the fast path cannot vouch for, is checked line by line, where the reference
decides. Valid events leave grouped by type; rejected lines leave as quarantine records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, compress
from operator import itemgetter
from typing import Any

import orjson

from pipeline.events import Event, Rejection, Validator, has_long_digits, timestamp_ok

# Lines per jsonschema-rs call: small enough that a chunk's parsed objects stay in cache.
CHUNK_LINES = 1000
EXCERPT_BYTES = 1024

# Per event type, the nested fields needing conversion before staging: a struct field maps
# to the names its schema declares (the rest go to its `extra` JSON text), a free-form map
# to None (kept whole as JSON text).
NestedFields = Mapping[str, Mapping[str, frozenset[str] | None]]


@dataclass
class TypedRows:
    """Valid events of one type, nested fields converted, and each event's line offset."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)


@dataclass
class CheckedBlock:
    """What checking a block found: events by type, quarantine records, lines read."""

    rows: dict[str, TypedRows] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0


def json_text(value: Any) -> str:
    """A free-form value as compact JSON text (big integers included)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers past 64 bits, which orjson refuses
        return json.dumps(value, separators=(",", ":"))


def convert_nested(rows: list[dict[str, Any]], nested: Mapping[str, frozenset[str] | None]) -> None:
    """Turn nested fields into what the stage stores: structs with `extra`, or JSON text."""
    for name, declared in nested.items():
        for row in rows:
            if name in row:
                row[name] = _as_struct(row[name], declared) if declared else json_text(row[name])


def convert_nested_column(values: list[Any], declared: frozenset[str] | None) -> list[Any]:
    """`convert_nested` for one field's column (None stands for absent)."""
    if declared:
        return [None if v is None else _as_struct(v, declared) for v in values]
    return [None if v is None else json_text(v) for v in values]


def _as_struct(value: Any, declared: frozenset[str]) -> Any:
    if not isinstance(value, dict):
        return value
    fixed = {k: v for k, v in value.items() if k in declared}
    extra = {k: v for k, v in value.items() if k not in declared}
    fixed["extra"] = json_text(extra) if extra else None
    return fixed


def quarantine_record(source: str, offset: int, line: bytes, rejection: Rejection,
                      length: int | None = None) -> dict[str, Any]:
    """What the quarantine keeps of a rejected line: where, why, and an escaped capped copy."""
    excerpt = line[:EXCERPT_BYTES]
    return {
        "source": source,
        "offset": offset,
        "length": len(line) if length is None else length,
        "reason": rejection.reason,
        "message": rejection.message,
        "pointer": rejection.pointer,
        "excerpt": excerpt.decode("utf-8", "backslashreplace").replace("\x00", "\\x00"),
        "excerpt_truncated": len(line) > EXCERPT_BYTES or (length or 0) > len(line),
        "detected_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def too_long_record(source: str, offset: int, head: bytes, length: int,
                    limit: int) -> dict[str, Any]:
    """The quarantine record of a line past the size limit, from its first bytes."""
    return quarantine_record(source, offset, head, Rejection.line_too_long(length, limit), length)


def split_block(block: bytes, position: int) -> tuple[list[bytes], list[int]]:
    """The lines of a block of complete lines (newlines dropped) and where each starts."""
    lines = block.split(b"\n")
    lines.pop()
    starts = list(accumulate(map((1).__add__, map(len, lines)), initial=position))
    starts.pop()  # where the next block begins
    return lines, starts


class BlockChecker:
    """Validates blocks of complete lines; the same verdicts as `Validator.validate` per line."""

    def __init__(self, validator: Validator, nested: NestedFields) -> None:
        self.validator = validator
        self.nested = nested

    def check(self, block: bytes, position: int, source: str, id_prefix: str,
              limit: int, fast: bool = True) -> CheckedBlock:
        """Check `block` (complete lines, the last ending in a newline) read at `position`.

        `fast=False` checks every line on its own (what a chunk the fast path refuses gets).
        """
        lines, starts = split_block(block, position)
        return self.check_lines(lines, starts, source, id_prefix, limit, fast)

    def check_lines(self, lines: list[bytes], starts: list[int], source: str, id_prefix: str,
                    limit: int, fast: bool = True) -> CheckedBlock:
        """Check lines (without newlines) found at offsets `starts`."""
        result = CheckedBlock(lines=len(lines))
        for at in range(0, len(lines), CHUNK_LINES):
            chunk, chunk_starts = lines[at:at + CHUNK_LINES], starts[at:at + CHUNK_LINES]
            if not (fast and self._fast_chunk(chunk, chunk_starts, id_prefix, limit,
                                              result.rows)):
                self._slow_chunk(chunk, chunk_starts, source, id_prefix, limit, result)
        for event_type, typed in result.rows.items():
            convert_nested(typed.rows, self.nested.get(event_type, {}))
        return result

    def _fast_chunk(self, chunk: list[bytes], starts: list[int], id_prefix: str, limit: int,
                    groups: dict[str, TypedRows]) -> bool:
        """Add the chunk's events to `groups` if every line is surely valid; else False."""
        if max(map(len, chunk)) > limit:
            return False
        try:
            objects = list(map(orjson.loads, chunk))
        except orjson.JSONDecodeError:
            return False
        if not self.validator.accepts_all(objects):
            return False
        types = list(map(_EVENT_TYPE, objects))
        stamps = list(map(_TS, objects))
        # `timestamp_ok` inlined for the common case (no call): a day up to 28, a year from 2
        # to 9998.
        if any((stamp[8:10] > "28" or not "0002" <= stamp < "9999") and not timestamp_ok(stamp)
               for stamp in stamps):
            return False
        inexact = self.validator.inexact_types
        if not inexact.isdisjoint(types) and any(
                kind in inexact and has_long_digits(line)
                for kind, line in zip(types, chunk, strict=True)):
            return False  # orjson made a float of an integer past 64 bits: the reference decides
        for obj, start in zip(objects, starts, strict=True):
            if "event_id" not in obj:
                obj["event_id"] = f"{id_prefix}{start}"
        for event_type in set(types):
            typed = groups.get(event_type)
            if typed is None:
                typed = groups[event_type] = TypedRows()
            if len(types) == 1 or all(kind == event_type for kind in types):
                typed.rows.extend(objects)
                typed.offsets.extend(starts)
            else:
                typed.rows.extend(compress(objects, map(event_type.__eq__, types)))
                typed.offsets.extend(compress(starts, map(event_type.__eq__, types)))
        return True

    def _slow_chunk(self, chunk: list[bytes], starts: list[int], source: str, id_prefix: str,
                    limit: int, result: CheckedBlock) -> None:
        """Line by line through `Validator.validate`, rejects recorded in line order."""
        validate = self.validator.validate
        for line, start in zip(chunk, starts, strict=True):
            if len(line) > limit:
                result.rejected.append(too_long_record(source, start, line, len(line), limit))
                continue
            verdict = validate(line)
            if type(verdict) is not Event:
                assert isinstance(verdict, Rejection)
                result.rejected.append(quarantine_record(source, start, line, verdict))
                continue
            data = verdict.data
            if "event_id" not in data:
                data["event_id"] = f"{id_prefix}{start}"
            typed = result.rows.setdefault(verdict.event_type, TypedRows())
            typed.rows.append(data)
            typed.offsets.append(start)


_EVENT_TYPE = itemgetter("event_type")
_TS = itemgetter("ts")
