"""Validation of event lines: bytes in, a typed event or a precise rejection out.

The fast path parses with orjson and checks with jsonschema-rs. Whenever it says no, the
reference (the stdlib JSON parser made strict, plus the `jsonschema` package) decides and
words the error, so the verdict always equals the reference's.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import jsonschema_rs
import orjson

from pipeline.schemas import SchemaSet, load_schemas

if TYPE_CHECKING:
    import jsonschema
    from jsonschema.exceptions import ValidationError as SchemaError

FOUND_LIMIT = 80
_loads = orjson.loads


class Event(NamedTuple):
    """A valid event: its type, schema version and the parsed object."""

    event_type: str
    version: int
    data: dict[str, Any]


# NamedTuple's own __new__ is Python code; building the tuple directly keeps the hot path in C.
_new_event = tuple.__new__


@dataclass(frozen=True)
class Rejection:
    """Why a line is not a valid event. `reason` is a stable machine code."""

    reason: str
    message: str
    pointer: str = ""
    expected: str = ""
    found: str = ""
    hint: str = ""

    def describe(self) -> str:
        """One line for humans: where, what was expected, what was found."""
        at = f" at {self.pointer}" if self.pointer else ""
        return f"{self.reason}{at}: {self.message}"

    @classmethod
    def line_too_long(cls, length: int, limit: int) -> Rejection:
        """A line of `length` bytes (newline not counted) past [tailer] max_line_bytes."""
        return cls("line_too_long", f"line of {length:,} bytes exceeds the {limit:,}-byte limit",
                   expected=f"<= {limit}", found=str(length),
                   hint="shorten the event, or raise [tailer] max_line_bytes in config.toml")


class _BadJson(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Validator:
    """Schemas compiled once; `validate` is the hot path."""

    def __init__(self, schemas: SchemaSet | None = None) -> None:
        self.schemas = schemas or load_schemas()
        self._fast_schemas = {
            key: _fast_schema(self.schemas.flattened(*key)) for key in self.schemas.documents
        }
        self._fast = {
            key: jsonschema_rs.validator_for(schema, validate_formats=True)
            for key, schema in self._fast_schemas.items()
        }
        self.inexact_types = frozenset(
            event_type for event_type, version in self.schemas.documents
            if _allows_huge_numbers(self.schemas.flattened(event_type, version))
        )
        self._fast_valid = {key: validator.is_valid for key, validator in self._fast.items()}
        self._all_valid = jsonschema_rs.validator_for(
            {"type": "array", "items": self._dispatching_schema()}, validate_formats=True).is_valid

    # The reference validators are built on first use: most catch-ups never reject a line,
    # and importing `jsonschema` costs each process (tailer and workers) 70 ms.
    @functools.cached_property
    def _reference(self) -> dict[tuple[str, int], jsonschema.Draft202012Validator]:
        import jsonschema
        import referencing

        registry: referencing.Registry[Any] = referencing.Registry().with_resources(
            (uri, referencing.Resource.from_contents(doc))
            for uri, doc in self.schemas.resources())
        checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
        return {key: jsonschema.Draft202012Validator(doc, registry=registry,
                                                     format_checker=checker)
                for key, doc in self.schemas.documents.items()}

    @functools.cached_property
    def _envelope(self) -> jsonschema.Draft202012Validator:
        import jsonschema

        return jsonschema.Draft202012Validator(
            self.schemas.envelope, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

    def validate(self, line: bytes) -> Event | Rejection:
        """Validate one line (without its newline)."""
        try:
            obj = _loads(line)
        except orjson.JSONDecodeError:
            return self.reference(line)
        if self.fast_accepts(obj):
            event_type = obj["event_type"]
            if event_type in self.inexact_types and has_long_digits(line):
                return self.reference(line)  # orjson turns integers past 64 bits into floats
            return _new_event(Event, (event_type, obj.get("schema_version", 1), obj))
        return self.reference(line)

    def fast_accepts(self, obj: Any) -> bool:
        """The fast verdict on a parsed line: True only when the reference would agree."""
        if type(obj) is not dict:
            return False
        event_type, version = obj.get("event_type"), obj.get("schema_version", 1)
        # Only a str type and an int version pick a fast validator: a list is unhashable,
        # and True or 1.0 would hash like 1. Anything else goes to the reference.
        if type(event_type) is not str or type(version) is not int:
            return False
        fast = self._fast_valid.get((event_type, version))
        return fast is not None and fast(obj) and timestamp_ok(obj["ts"])

    def accepts_all(self, objects: list[Any]) -> bool:
        """Whether every parsed object passes the fast schemas (one call for many objects).

        `fast_accepts` of each, but for two things: the caller checks days 29-31 and
        the UTC year (`timestamp_ok`), and a float `schema_version` such as 1.0 passes
        here (the reference accepts it too).
        """
        return bool(self._all_valid(objects))

    def _dispatching_schema(self) -> dict[str, Any]:
        """One schema for any event: `if`/`then` on event_type and schema_version."""
        chain: dict[str, Any] | bool = False
        for event_type in reversed(self.schemas.types):
            versions = self.schemas.versions(event_type)
            by_version = self._fast_schemas[(event_type, versions[0])]
            for version in versions[1:]:
                by_version = {
                    "if": {"required": ["schema_version"],
                           "properties": {"schema_version": {"const": version}}},
                    "then": self._fast_schemas[(event_type, version)],
                    "else": by_version,
                }
            chain = {"if": {"required": ["event_type"],
                            "properties": {"event_type": {"const": event_type}}},
                     "then": by_version, "else": chain}
        return {"type": "object", **chain} if isinstance(chain, dict) else {"not": {}}

    def validate_object(self, obj: Any) -> Event | Rejection:
        """Validate an already parsed object (the writer's path)."""
        return self._check(obj)

    def reference(self, line: bytes) -> Event | Rejection:
        """The slow, authoritative verdict: strict stdlib parse, then `jsonschema`."""
        try:
            obj = parse_strict(line)
        except _BadJson as exc:
            return Rejection(exc.reason, exc.message,
                             hint="each line must be one JSON object in UTF-8")
        return self._check(obj)

    def _check(self, obj: Any) -> Event | Rejection:
        if not isinstance(obj, dict):
            return Rejection("not_object", f"expected a JSON object, found {_kind(obj)}",
                             expected="object", found=_kind(obj),
                             hint="each line must be one JSON object")
        envelope_error = self._envelope_error(obj)
        if envelope_error is not None:
            return envelope_error
        event_type, version = obj["event_type"], obj.get("schema_version", 1)
        validator = self._reference.get((event_type, version))
        if validator is None:
            return self._unknown(event_type, version)
        error = _best_match(validator.iter_errors(obj))
        if error is not None:
            return describe_error(error, event_type)
        # The date-time format allows any offset; the lake's times are UTC years 1-9999.
        utc = utc_outside_years(obj["ts"])
        if utc is not None:
            return Rejection("ts_out_of_range",
                             f"ts {obj['ts']} is {utc} in UTC, outside years 1-9999",
                             pointer="/ts", expected="a time in UTC years 1-9999",
                             found=_short(obj["ts"]),
                             hint="give the time in UTC (Z) or with a smaller offset")
        return Event(event_type, int(version), obj)

    def _envelope_error(self, obj: dict[str, Any]) -> Rejection | None:
        # Only what decides the schema is checked here; the type schema checks the rest.
        head = {k: obj[k] for k in ("event_type", "schema_version") if k in obj}
        if "event_type" not in obj:
            return Rejection("missing_field", "required field is missing",
                             pointer="/event_type", expected="one of " + ", ".join(
                                 self.schemas.types), hint="add \"event_type\"")
        error = _best_match(self._envelope.iter_errors(
            head | {"ts": "2000-01-01T00:00:00Z", "agent": "x"}))
        return None if error is None else describe_error(error, None)

    def _unknown(self, event_type: str, version: Any) -> Rejection:
        if event_type in self.schemas.types:
            known = ", ".join(map(str, self.schemas.versions(event_type)))
            return Rejection("unknown_schema_version",
                             f"{event_type} has no schema_version {version}",
                             pointer="/schema_version", expected=known, found=str(version),
                             hint=f"use one of: {known}")
        return Rejection("unknown_event_type", f"unknown event type {_short(event_type)}",
                         pointer="/event_type", expected=", ".join(self.schemas.types),
                         found=_short(event_type),
                         hint="run `tally schema list` for the registered types")

    def iter_validate(self, lines: Iterable[bytes]) -> Iterable[Event | Rejection]:
        """Validate many lines."""
        validate = self.validate
        return (validate(line) for line in lines)


# What the fast path checks of `ts` instead of pattern + format: stricter (real months,
# hours, minutes and offsets), cheaper, and `timestamp_ok` (days 29-31, UTC year) after it.
FAST_TIMESTAMP = {
    "type": "string",
    "pattern": r"^([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-(0[1-9]|1[0-2])"
               r"-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
               r"(\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$",
}


def _fast_schema(flat: dict[str, Any]) -> dict[str, Any]:
    properties = dict(flat["properties"])
    if properties["ts"].get("format") == "date-time":
        properties["ts"] = FAST_TIMESTAMP
    return {**flat, "properties": properties}


# Every digit becomes "0" and every other byte ".": a run of 19 zeros is 19 digits in a row.
_DIGIT_RUNS = bytes.maketrans(bytes(range(256)),
                              bytes(48 if 48 <= b <= 57 else 46 for b in range(256)))
_NINETEEN_DIGITS = b"0" * 19


def has_long_digits(line: bytes) -> bool:
    """Whether the line holds 19 digits in a row (an integer that may pass 64 bits)."""
    return _NINETEEN_DIGITS in line.translate(_DIGIT_RUNS)


def _allows_huge_numbers(spec: Any) -> bool:
    """Whether some value may be a number orjson cannot read exactly: past 2**53 in a
    `number` field, or anywhere in a free-form object or array (past 64 bits, orjson
    makes a float of an integer)."""
    if isinstance(spec, list):
        return any(_allows_huge_numbers(item) for item in spec)
    if spec is True or spec == {}:
        return True
    if not isinstance(spec, dict):
        return False
    kinds = spec.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "number" in kinds and (spec.get("maximum", math.inf) > 2**53
                              or spec.get("minimum", -math.inf) < -(2**53)):
        return True
    if "object" in kinds and spec.get("additionalProperties", True) is True and spec.get(
            "unevaluatedProperties", True) is True:
        return True
    if "array" in kinds and "items" not in spec:
        return True
    return any(_allows_huge_numbers(value) for key, value in spec.items()
               if key not in ("const", "enum", "default", "examples"))


def timestamp_ok(ts: str) -> bool:
    """Days 29-31 exist in the timestamp's month and its UTC time is in years 1-9999 (the
    fast pattern checked the rest)."""
    # Only years 1 and 9999 can leave the range, by their offset: whole-string compares
    # tell them apart without a slice.
    if ts[8:10] <= "28" and "0002" <= ts < "9999":
        return True
    try:
        datetime.fromisoformat(ts)
    except ValueError:
        return False
    return utc_outside_years(ts) is None


def utc_outside_years(ts: str) -> str | None:
    """The UTC time of a valid RFC 3339 timestamp if it falls outside years 1-9999, else None.

    `2025-...+14:00` is fine; `0001-01-01T00:00:00+14:00` is 0000-12-31T10:00:00 in UTC,
    which no Python datetime (the lake's) can hold.
    """
    if "0002" <= ts < "9999" or ts.endswith("Z"):
        return None
    try:
        local = datetime.fromisoformat(ts)
    except ValueError:
        return None  # not a date-time: the schema's call
    offset = local.utcoffset()
    if offset is None:
        return None
    # datetime holds years 1-9999 only, so the sum is taken 400 years inside: a whole cycle
    # of the proleptic Gregorian calendar, with the same leap days.
    shift = 400 if local.year < 5000 else -400
    utc = local.replace(year=local.year + shift, tzinfo=None) - offset
    year = utc.year - shift
    if 1 <= year <= 9999:
        return None
    return f"{year:04d}-{utc:%m-%dT%H:%M:%S}{ts[19:-6]}"  # the fraction as written


def parse_strict(line: bytes) -> Any:
    """RFC 8259 JSON in UTF-8: no BOM, NaN, Infinity, lone surrogates or raw NULs."""
    if not line.strip():
        raise _BadJson("empty_line", "the line is empty")
    if line.startswith(b"\xef\xbb\xbf"):
        raise _BadJson("bom", "the line starts with a UTF-8 byte order mark")
    nul = line.find(b"\x00")
    if nul >= 0:
        raise _BadJson("nul_byte", f"NUL byte at column {nul + 1}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadJson("invalid_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _BadJson("too_deep", "nesting is too deep to parse") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        reason = "number_too_large" if "integer string conversion" in str(exc) else "invalid_json"
        raise _BadJson(reason, str(exc).split(";")[0]) from None
    _reject_surrogates(obj)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _reject_surrogates(obj: Any) -> None:
    try:
        orjson.dumps(obj)
    except orjson.JSONEncodeError as exc:
        if "surrogates" in str(exc) or "str is not valid UTF-8" in str(exc):
            raise _BadJson("invalid_json", "string holds a lone UTF-16 surrogate") from None
        # Anything else orjson cannot encode (integers past 64 bits) is the schema's call.


def _best_match(errors: Iterable[SchemaError]) -> SchemaError | None:
    from jsonschema.exceptions import best_match  # imported with the reference validators

    return best_match(errors)


def describe_error(error: SchemaError, event_type: str | None) -> Rejection:
    """Turn a jsonschema error into a rejection naming the field, the expectation and the value."""
    pointer = "".join(f"/{_escape(part)}" for part in error.absolute_path)
    keyword, expected = str(error.validator), error.validator_value
    found = _short(error.instance)
    show = f" (see `tally schema show {event_type}`)" if event_type else ""
    if keyword == "required":
        missing = next((name for name in expected if name not in error.instance), expected[0])
        return Rejection("missing_field", "required field is missing",
                         pointer=f"{pointer}/{_escape(missing)}", expected="present",
                         found="absent", hint=f"add \"{missing}\"{show}")
    if keyword in {"unevaluatedProperties", "additionalProperties"} and expected is False:
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = _first_unexpected(error, extra)
        return Rejection("unknown_field", "field is not in the schema",
                         pointer=f"{pointer}/{_escape(name)}", expected="no such field",
                         found=name, hint=f"remove it or fix its spelling{show}")
    text = _EXPECTATIONS.get(keyword, "{value}").format(value=_short(expected, 200))
    return Rejection("schema_violation", f"expected {text}, found {found}", pointer=pointer,
                     expected=text, found=found, hint=f"fix the value{show}")


def _first_unexpected(error: SchemaError, extra: list[str]) -> str:
    message = error.message
    for name in extra:
        if repr(name) in message:
            return name
    return extra[0] if extra else "?"


_EXPECTATIONS = {
    "type": "type {value}",
    "minimum": "a number >= {value}",
    "maximum": "a number <= {value}",
    "exclusiveMinimum": "a number > {value}",
    "exclusiveMaximum": "a number < {value}",
    "enum": "one of {value}",
    "const": "exactly {value}",
    "pattern": "text matching {value}",
    "format": "a valid {value}",
    "minLength": "at least {value} characters",
    "maxLength": "at most {value} characters",
    "maxItems": "at most {value} items",
    "maxProperties": "at most {value} fields",
    "anyOf": "one of {value}",
    "not": "a value that does not match {value}",
}


def _escape(part: object) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null", int: "integer", float: "number"}.get(type(value), "value")


def _short(value: Any, limit: int = FOUND_LIMIT) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
