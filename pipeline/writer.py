"""Writing events: validate, fill event_id and ts, append the line with one O_APPEND write."""

from __future__ import annotations

import difflib
import errno
import os
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from ulid import ULID

from pipeline.errors import InvalidEvent, StorageError, UnsafeName, UsageError, storage_error
from pipeline.events import Event, Rejection, Validator
from pipeline.schemas import SchemaSet
from pipeline.settings import TailerSettings

# Short names a shell user may type; each maps to the schema's full field name.
ALIASES = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
    "reasoning": "reasoning_tokens",
    "agent_role": "role",
    "session": "session_id",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}

DEFAULT_MAX_LINE_BYTES = TailerSettings().max_line_bytes

_validator: Validator | None = None


def shared_validator() -> Validator:
    """One compiled validator per process."""
    global _validator
    if _validator is None:
        _validator = Validator()
    return _validator


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def complete_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the event with a time-ordered event_id and the current ts when missing."""
    full = dict(event)
    full.setdefault("event_id", str(ULID()))
    full.setdefault("ts", now_rfc3339())
    return full


def encode_event(event: Mapping[str, Any], validator: Validator | None = None) -> bytes:
    """Validate a complete event and return its line, newline included."""
    checked = (validator or shared_validator()).validate_object(dict(event))
    if isinstance(checked, Rejection):
        raise InvalidEvent(checked.reason, checked.message, field=checked.pointer,
                           hint=checked.hint or None)
    return orjson.dumps(checked.data) + b"\n"


def append_line(path: Path, line: bytes) -> None:
    """Append one whole line with a single write call on an O_APPEND descriptor.

    StorageError (disk full, read-only, no permission, a short write) names the file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _append_failure(exc, path) from exc
    if written != len(line):  # only a full disk or a signal can do this; say so loudly
        raise StorageError(f"cannot append to the log: wrote {written} of {len(line)} bytes",
                           path=path, hint="the log may now end with a partial line; check "
                           "free space, then run `tally validate` on it")


def _append_failure(exc: OSError, path: Path) -> StorageError:
    error = storage_error(exc, "append to the log", path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the shared hint speaks of the tailer
        error.hint = "free space on that file system, then log the event again (it was not written)"
    return error


def append_event(path: str | Path, event: Mapping[str, Any], validator: Validator | None = None,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> dict[str, Any]:
    """Validate an event, fill event_id/ts, append it to a JSONL file; return what was written.

    An event whose line (newline not counted) is longer than `max_line_bytes`, which the
    tailer would quarantine, is refused with InvalidEvent and nothing is written.
    """
    full = complete_event(event)
    line = encode_event(full, validator)
    if len(line) - 1 > max_line_bytes:
        refusal = Rejection.line_too_long(len(line) - 1, max_line_bytes)
        raise InvalidEvent(refusal.reason, refusal.message, hint=refusal.hint)
    append_line(Path(path), line)
    return full


def default_log_path(logs: Path, agent: str) -> Path:
    """logs/<agent>.jsonl, refusing agent names that are not plain file names."""
    if not _SAFE_NAME.fullmatch(agent) or ".." in agent:  # match() allows a final \n
        raise UnsafeName(
            f"agent name {agent!r} is not a safe file name for the default log",
            hint="use letters, digits, '.', '_' and '-', or name the file with --to FILE",
        )
    return logs / f"{agent}.jsonl"


def build_event(schemas: SchemaSet, event_type: str, pairs: Iterable[str],
                envelope: Mapping[str, str | None]) -> dict[str, Any]:
    """An event from shell words: KEY=VALUE pairs typed by the schema, plus envelope options."""
    properties = schemas.properties(event_type)
    event: dict[str, Any] = {"event_type": event_type}
    for name, raw in envelope.items():
        if raw is not None:
            event[name] = _typed(name, raw, properties[name])
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}",
                             hint="for example input_tokens=5000")
        name = ALIASES.get(key, key) if ALIASES.get(key, key) in properties else key
        if name not in properties or name in {"event_type", "schema_version"}:
            raise UsageError(f"{event_type} has no field {key!r}", hint=_suggest(key, properties))
        if name in event and name not in envelope:
            raise UsageError(f"field {name!r} is given twice")
        event[name] = _typed(name, raw, properties[name])
    return event


def _suggest(key: str, properties: Mapping[str, Any]) -> str:
    names = sorted(set(properties) - {"event_type", "schema_version"})
    close = difflib.get_close_matches(key, [*names, *ALIASES], n=1)
    prefix = f"did you mean {close[0]!r}? " if close else ""
    return prefix + "fields: " + ", ".join(names)


def _typed(name: str, raw: str, spec: Mapping[str, Any]) -> Any:
    kinds = _kinds(spec)
    if "integer" in kinds and re.fullmatch(r"-?[0-9]+", raw.replace("_", "")):
        return int(raw.replace("_", ""))
    if "number" in kinds:
        try:
            return float(raw)
        except ValueError:
            pass
    if "boolean" in kinds and raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    if kinds & {"array", "object"}:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UsageError(f"field {name!r} takes JSON ({'/'.join(sorted(kinds))})",
                             hint=f"""for example {name}='["a.js", "b.js"]'""") from None
    if "string" in kinds or not kinds:
        return raw
    raise UsageError(f"field {name!r} takes {' or '.join(sorted(kinds))}, got {raw!r}",
                     hint=f"for example {name}=1200")


def _kinds(spec: Mapping[str, Any]) -> set[str]:
    if "anyOf" in spec:
        return set().union(*(_kinds(option) for option in spec["anyOf"]))
    if "enum" in spec or "const" in spec:
        return {"string"}
    kind = spec.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if kind else set()


def checked(result: Event | Rejection) -> Event:
    """The event, or InvalidEvent when the result is a rejection."""
    if isinstance(result, Rejection):
        raise InvalidEvent(result.reason, result.message, field=result.pointer,
                           hint=result.hint or None)
    return result
