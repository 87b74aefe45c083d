"""Flat event types decoded and checked in C: msgspec structs compiled from the schemas.

The catch-up path for the common case. A line of a compiled type that msgspec accepts is
one the reference accepts too, with the same values: the compiler takes only keywords
whose msgspec meaning is the same or stricter (an integer written 5.0 is refused here and
accepted by the reference, so it takes the slower path and is still staged), and leaves
a type it cannot express whole to the other paths. The timestamp's shape and calendar
are not checked here: the caller checks them on the column (`CompiledType.timestamps`).
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, is_, not_
from typing import Annotated, Any, Literal, Union

import msgspec

from pipeline.schemas import SchemaSet

# Keywords that say nothing about validity.
_NOTES = frozenset({"description", "title", "default", "$comment", "examples", "deprecated",
                    "readOnly", "writeOnly"})
_TOP_LEVEL = _NOTES | {"$schema", "$id", "$defs", "type", "required", "properties",
                       "additionalProperties", "unevaluatedProperties"}
_BOUNDS = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}
_LENGTHS = {"minLength": "min_length", "maxLength": "max_length"}
# Whatever msgspec raises (its own errors, UnicodeDecodeError, RecursionError on deep
# nesting) only means the line is not one it vouches for: the checker decides.
_DECODE_ERRORS = Exception


class NotCompilable(Exception):
    """A schema uses something the compiler does not express exactly."""


@dataclass(frozen=True)
class CompiledType:
    """One event type's struct: its fields in order and which hold timestamps."""

    event_type: str
    struct: type[msgspec.Struct]
    fields: tuple[str, ...]
    timestamps: tuple[str, ...]
    as_text: tuple[str, ...]  # anyOf fields stored as text: integers become their digits

    @property
    def getters(self) -> dict[str, attrgetter[Any]]:
        """A getter per field (a column is one `map` of it, in C)."""
        return {name: attrgetter(name) for name in self.fields}


@dataclass
class DecodedColumns:
    """Decoded lines of one type: a column per field, and each line's index in the chunk."""

    columns: dict[str, list[Any]]
    indexes: list[int]


@dataclass
class DecodedChunk:
    """What a chunk decoded to: columns by type, and the lines left for the other paths."""

    by_type: dict[str, DecodedColumns] = field(default_factory=dict)
    left: list[int] = field(default_factory=list)


class StructDecoder:
    """Decodes lines of the compiled types; every other line is left to the caller."""

    def __init__(self, schemas: SchemaSet, exclude: frozenset[str] = frozenset()) -> None:
        self.compiled: dict[str, CompiledType] = {}
        for event_type in schemas.types:
            versions = schemas.versions(event_type)
            if event_type in exclude or len(versions) != 1:
                continue
            try:
                self.compiled[event_type] = compile_type(
                    event_type, schemas.flattened(event_type, versions[0]), schemas)
            except NotCompilable:
                continue
        # Types not compiled decode to an empty placeholder (unknown fields skipped), so
        # their lines are told apart without the cost of an exception.
        placeholders = [msgspec.defstruct(f"Other_{i}", [], tag_field="event_type", tag=t,
                                          gc=False)
                        for i, t in enumerate(schemas.types) if t not in self.compiled]
        self._by_struct = {c.struct: c for c in self.compiled.values()}
        structs = [c.struct for c in self.compiled.values()] + placeholders
        self._decode = msgspec.json.Decoder(
            Union[tuple(structs)] if structs else Any).decode  # noqa: UP007

    def decode(self, lines: list[bytes]) -> DecodedChunk:
        """Decode a chunk of lines (no newlines)."""
        try:
            objects: list[Any] = list(map(self._decode, lines))
        except _DECODE_ERRORS:
            objects = list(map(self._decode_or_none, lines))
        kinds = list(map(type, objects))
        positions = range(len(objects))
        chunk = DecodedChunk()
        for struct, compiled in self._by_struct.items():
            mine = list(map(is_, kinds, repeat(struct)))  # C loops: no per-line bytecode
            found = list(compress(objects, mine))
            if found:
                chunk.by_type[compiled.event_type] = DecodedColumns(
                    _columns(compiled, found), list(compress(positions, mine)))
        if len(chunk.by_type) != 1 or sum(map(len, (
                c.indexes for c in chunk.by_type.values()))) != len(objects):
            compiled_kind = self._by_struct.__contains__
            chunk.left = list(compress(positions, map(not_, map(compiled_kind, kinds))))
        return chunk

    def _decode_or_none(self, line: bytes) -> Any:
        try:
            return self._decode(line)
        except _DECODE_ERRORS:
            return None


def _columns(compiled: CompiledType, found: list[Any]) -> dict[str, list[Any]]:
    columns = {name: list(map(getter, found)) for name, getter in compiled.getters.items()}
    for name in compiled.as_text:
        columns[name] = [str(v) if type(v) is int else v for v in columns[name]]
    columns["event_type"] = [compiled.event_type] * len(found)
    return columns


# ------------------------------------------------------------------------ the compiler


def compile_type(event_type: str, flat: Mapping[str, Any], schemas: SchemaSet) -> CompiledType:
    """A tagged struct for one flattened type schema, or NotCompilable."""
    if set(flat) - _TOP_LEVEL or flat.get("type") != "object":
        raise NotCompilable("top-level keywords")
    if flat.get("additionalProperties", True) is not False and flat.get(
            "unevaluatedProperties", True) is not False:
        raise NotCompilable("open objects")
    properties = {name: schemas.resolve(dict(spec)) for name, spec in flat["properties"].items()}
    if properties.get("event_type") != {"const": event_type}:
        raise NotCompilable("event_type is not a constant")
    required = set(flat.get("required", ()))
    if not required <= set(properties):
        raise NotCompilable("required names a field without a schema")
    fields: list[tuple[Any, ...]] = []
    timestamps, as_text = [], []
    timestamp = schemas.resolve(dict(schemas.envelope["properties"]["ts"]))
    for name, spec in properties.items():
        if name == "event_type":
            continue  # the tag
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise NotCompilable(f"field name {name!r}")
        if spec.get("format") == "date-time":
            if spec != timestamp:
                raise NotCompilable(f"{name}: a date-time other than the envelope's")
            timestamps.append(name)
        kind = _field_type(spec)
        if "anyOf" in spec:
            as_text.append(name)
        # Absent is None; an explicit null is refused, since no compiled type allows null.
        fields.append((name, kind) if name in required else (name, kind, None))
    fields.sort(key=len)
    struct = msgspec.defstruct(f"Compiled_{event_type}", fields, tag_field="event_type",
                               tag=event_type, forbid_unknown_fields=True, gc=False)
    return CompiledType(event_type, struct, tuple(f[0] for f in fields), tuple(timestamps),
                        tuple(as_text))


def _field_type(spec: Mapping[str, Any]) -> Any:
    """The msgspec type of one property; NotCompilable for anything it would not match."""
    keys = set(spec) - _NOTES
    if keys == {"const"}:
        value = spec["const"]
        if type(value) not in (str, int):
            raise NotCompilable("const")
        return Literal[value]
    if keys == {"enum"}:
        values = tuple(spec["enum"])
        if not values or any(type(v) is not str for v in values):
            raise NotCompilable("enum")
        return Literal[values]
    if keys == {"anyOf"}:
        branches = [_scalar(dict(b)) for b in spec["anyOf"]]
        kinds = [b[0] for b in branches]
        if sorted(kinds) != ["integer", "string"]:
            raise NotCompilable("anyOf")  # the one union stored as text without loss
        return Union[tuple(b[1] for b in branches)]  # noqa: UP007
    return _scalar(dict(spec))[1]


def _scalar(spec: dict[str, Any]) -> tuple[str, Any]:
    kind = spec.pop("type", None)
    for note in _NOTES & set(spec):
        del spec[note]
    if kind == "string":
        if spec.get("format") == "date-time":
            # The envelope's timestamp (compile_type made sure): the caller checks it on the
            # column with FAST_TIMESTAMP and the calendar, stricter than the schema.
            for checked_later in ("format", "pattern", "not"):
                spec.pop(checked_later, None)
        return "string", _constrained(str, spec, _LENGTHS)
    if kind in ("integer", "number"):
        python = int if kind == "integer" else float
        if any(type(v) not in (int, float) or type(v) is bool for v in spec.values()):
            raise NotCompilable("bounds")
        return kind, _constrained(python, spec, _BOUNDS)
    if kind == "boolean" and not spec:
        return "boolean", bool
    raise NotCompilable(f"type {kind!r}")


def _constrained(python: type, spec: dict[str, Any], names: Mapping[str, str]) -> Any:
    if set(spec) - set(names):
        raise NotCompilable(f"keywords {sorted(set(spec) - set(names))}")
    meta = {names[k]: v for k, v in spec.items()}
    return Annotated[python, msgspec.Meta(**meta)] if meta else python

