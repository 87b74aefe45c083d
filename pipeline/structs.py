"""Event lines decoded and checked in C: msgspec structs compiled from the schemas.

The catch-up path for the common case. A line of a compiled type that msgspec accepts is
one the reference accepts too, with the same values: the compiler takes only keywords
whose msgspec meaning is the same or stricter (an integer written 5.0 is refused here and
accepted by the reference, so it takes the slower path and is still staged), and leaves
a type it cannot express whole to the other paths. Two checks msgspec cannot make are
the caller's or run here per row: the shape, calendar and UTC year of the envelope's
timestamps (decoded as plain strings; the caller checks their column), and the value type
of each key of an object that declares some keys and types the rest
(`CompiledType.row_checks`).
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import is_, itemgetter, not_
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec.structs import astuple

from pipeline.schemas import SchemaSet

# Keywords that say nothing about validity.
_NOTES = frozenset({"description", "title", "default", "$comment", "examples", "deprecated",
                    "readOnly", "writeOnly"})
_TOP_LEVEL = _NOTES | {"$schema", "$id", "$defs", "type", "required", "properties",
                       "additionalProperties", "unevaluatedProperties"}
_BOUNDS = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}
_LENGTHS = {"minLength": "min_length", "maxLength": "max_length"}
_ITEMS = {"minItems": "min_length", "maxItems": "max_length"}
_PROPERTIES = {"minProperties": "min_length", "maxProperties": "max_length"}
_INT64 = (-(2**63), 2**63 - 1)
_ANY_KINDS: frozenset[type] = frozenset({str, int, float, bool, type(None), list, dict})
# Whatever msgspec raises (its own errors, UnicodeDecodeError, RecursionError on deep
# nesting) only means the line is not one it vouches for: the checker decides.
_DECODE_ERRORS = Exception
DECODE_SLICE_LINES = 1000


RowCheck = Callable[[Any], bool]


class NotCompilable(Exception):
    """A schema uses something the compiler does not express exactly."""


@dataclass(frozen=True)
class CompiledType:
    """One event type's struct, and what is checked or converted outside msgspec."""

    event_type: str
    struct: type[msgspec.Struct]
    fields: tuple[str, ...]  # the struct's fields in order: a row is `astuple` of a struct
    as_text: tuple[str, ...]  # anyOf fields stored as text: integers become their digits
    row_checks: Mapping[str, RowCheck] = field(default_factory=dict)


@dataclass
class DecodedColumns:
    """Decoded lines of one type: a column per field, and each line's index in the chunk."""

    columns: dict[str, list[Any]]
    indexes: list[int]
    # Text columns (anyOf integer or string) that hold integers and no strings: left as
    # integers, for Polars to write as digits (a sixth of the time of str() on each).
    integer_text: frozenset[str] = frozenset()


@dataclass
class DecodedChunk:
    """What a chunk decoded to: columns by type, and the lines left for the other paths."""

    by_type: dict[str, DecodedColumns] = field(default_factory=dict)
    left: list[int] = field(default_factory=list)


class StructDecoder:
    """Decodes lines of the compiled types; every other line is left to the caller."""

    def __init__(self, schemas: SchemaSet) -> None:
        self.compiled: dict[str, CompiledType] = {}
        for event_type in schemas.types:
            versions = schemas.versions(event_type)
            if len(versions) != 1:
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
        chunk = DecodedChunk()
        # A slice's structs are still in the CPU cache when their columns are taken out:
        # 12-20 % faster than decoding a whole block of 10,000 lines first.
        for start in range(0, len(lines), DECODE_SLICE_LINES):
            self._decode_slice(lines[start:start + DECODE_SLICE_LINES], start, chunk)
        chunk.left.sort()  # row checks add theirs type by type
        for event_type, decoded in chunk.by_type.items():
            _integers_as_text(self.compiled[event_type], decoded)
        return chunk

    def _decode_slice(self, lines: list[bytes], first: int, chunk: DecodedChunk) -> None:
        """Decode lines numbered from `first` into `chunk`."""
        try:
            objects: list[Any] = list(map(self._decode, lines))
        except _DECODE_ERRORS:
            objects = list(map(self._decode_or_none, lines))
        kinds = list(map(type, objects))
        positions: Sequence[int] = range(first, first + len(objects))
        # Types by size, each taken out of the rest (C loops: no per-line bytecode), so the
        # common type is looked for in every line and the rare ones in what remains: 40 %
        # less than a pass over the whole slice per type.
        counts = sorted(((kinds.count(struct), struct) for struct in self._by_struct),
                        key=itemgetter(0), reverse=True)
        for count, struct in counts:
            if not count:
                break
            if count == len(kinds):
                found, indexes, positions = objects, list(positions), []
            else:
                mine = list(map(is_, kinds, repeat(struct)))
                found, indexes = list(compress(objects, mine)), list(compress(positions, mine))
                rest = list(map(not_, mine))
                objects, kinds = list(compress(objects, rest)), list(compress(kinds, rest))
                positions = list(compress(positions, rest))
            self._add(self._by_struct[struct], found, indexes, chunk)
        chunk.left += positions  # lines of types not compiled, or not decoded

    def _add(self, compiled: CompiledType, found: list[Any], indexes: list[int],
             chunk: DecodedChunk) -> None:
        """Add decoded objects of one type, found at `indexes`, to `chunk` as columns."""
        if compiled.row_checks:
            found, indexes = self._checked(compiled, found, indexes, chunk.left)
            if not found:
                return
        columns = _columns(compiled, found)
        decoded = chunk.by_type.get(compiled.event_type)
        if decoded is None:
            chunk.by_type[compiled.event_type] = DecodedColumns(columns, indexes)
            return
        for name, values in columns.items():
            decoded.columns[name] += values
        decoded.indexes += indexes

    @staticmethod
    def _checked(compiled: CompiledType, found: list[Any], indexes: list[int],
                 left: list[int]) -> tuple[list[Any], list[int]]:
        """The objects passing the row checks; the others' indexes go to `left`."""
        passed = [all(check(getattr(obj, name)) for name, check in compiled.row_checks.items())
                  for obj in found]
        if all(passed):
            return found, indexes
        left += (index for index, ok in zip(indexes, passed, strict=True) if not ok)
        return (list(compress(found, passed)), list(compress(indexes, passed)))

    def _decode_or_none(self, line: bytes) -> Any:
        try:
            return self._decode(line)
        except _DECODE_ERRORS:
            return None


def _columns(compiled: CompiledType, found: list[Any]) -> dict[str, list[Any]]:
    if not found:
        return {name: [] for name in compiled.fields}
    # Rows as tuples, transposed in C: a third of the time of one `attrgetter` map per field.
    transposed = zip(*map(astuple, found), strict=True)
    return dict(zip(compiled.fields, map(list, transposed), strict=True))


def _integers_as_text(compiled: CompiledType, decoded: DecodedColumns) -> None:
    """Integers in text columns become their digits: here where strings are beside them,
    else by Polars (`integer_text`)."""
    integers = set()
    for name in compiled.as_text:
        kinds = set(map(type, decoded.columns[name]))
        if int in kinds and str in kinds:
            decoded.columns[name] = [str(v) if type(v) is int else v
                                     for v in decoded.columns[name]]
        elif int in kinds:
            integers.add(name)
    decoded.integer_text = frozenset(integers)


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
    timestamp = schemas.resolve(dict(schemas.envelope["properties"]["ts"]))
    required_fields: list[tuple[str, Any]] = []
    optional_fields: list[tuple[str, Any, None]] = []
    as_text, row_checks = [], {}
    try:
        for name, spec in properties.items():
            if name == "event_type":
                continue  # the tag
            if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
                raise NotCompilable(f"field name {name!r}")
            # The envelope's timestamp decodes as a string; the caller checks its column
            # (FAST_TIMESTAMP, the calendar and the UTC year; stricter than the schema).
            kind, check = (str, None) if spec == timestamp else _property(spec)
            if "anyOf" in spec:
                as_text.append(name)
            if check is not None:
                row_checks[name] = check
            if name in required:
                required_fields.append((name, kind))
            else:  # absent is None; no compiled property allows an explicit null
                optional_fields.append((name, kind, None))
        struct = msgspec.defstruct(f"Compiled_{event_type}", [*required_fields, *optional_fields],
                                   tag_field="event_type", tag=event_type,
                                   forbid_unknown_fields=True, gc=False)
        msgspec.json.Decoder(struct)  # refuses unions msgspec cannot tell apart
    except (TypeError, ValueError) as exc:  # what msgspec.Meta or defstruct refuse
        raise NotCompilable(str(exc)) from None
    return CompiledType(event_type, struct, struct.__struct_fields__,
                        tuple(as_text), row_checks)


def _property(spec: Mapping[str, Any]) -> tuple[Any, RowCheck | None]:
    """The msgspec type of one top-level property, and a check per value msgspec cannot
    make itself (declared fields of an object with extras)."""
    keys = set(spec) - _NOTES
    if keys == {"const"}:
        value = spec["const"]
        if type(value) not in (str, int):
            raise NotCompilable("const")
        return Literal[value], None
    if keys == {"enum"}:
        values = tuple(spec["enum"])
        if not values or any(type(v) is not str for v in values):
            raise NotCompilable("enum")
        return Literal[values], None
    if keys == {"anyOf"}:
        if sorted(_kind_name(dict(b)) for b in spec["anyOf"]) != ["integer", "string"]:
            raise NotCompilable("anyOf")  # the one union stored as text without loss
        return _value(spec)[1], None
    kind = spec.get("type")
    if kind == "array":
        return _array(spec), None
    if kind == "object":
        return _object(spec)
    if kind not in ("string", "integer", "number", "boolean"):
        raise NotCompilable(f"type {kind!r}")
    return _value(spec)[1], None


def _kind_name(spec: Mapping[str, Any]) -> str:
    kind = spec.get("type")
    return kind if isinstance(kind, str) else "?"


def _array(spec: Mapping[str, Any]) -> Any:
    rest = _without_notes(dict(spec))
    del rest["type"]
    kinds, item = _value(rest.pop("items", {}))
    if not kinds <= {str, int, bool}:  # floats and ints would share a column's type
        raise NotCompilable("array items")
    return _constrained(list[item], rest, _ITEMS)  # type: ignore[valid-type]


def _object(spec: Mapping[str, Any]) -> tuple[Any, RowCheck | None]:
    """A free-form map (stored as JSON text), or declared fields plus typed extras (stored
    as a struct): both decode to a dict; the second needs a check per key."""
    rest = _without_notes(dict(spec))
    del rest["type"]
    declared = {n: _value(s) for n, s in rest.pop("properties", {}).items()}
    extra = rest.pop("additionalProperties", True)
    extra_kinds: frozenset[type] = frozenset()
    extra_type: Any = None
    if extra is True:
        extra_kinds, extra_type = _ANY_KINDS, Any
    elif extra is not False:
        extra_kinds, extra_type = _value(extra)
    if not declared:
        if extra is False:
            raise NotCompilable("an object that allows nothing")
        return _constrained(dict[str, extra_type], rest, _PROPERTIES), None
    if extra is True:
        raise NotCompilable("declared fields beside free-form extras")
    by_kind: dict[type, Any] = {}
    for kinds, python in [*declared.values(), (extra_kinds, extra_type)]:
        for kind in kinds:
            branch = _branch(python, kind)
            if by_kind.setdefault(kind, branch) != branch:
                raise NotCompilable("two bounds for one kind of value")
    value: Any = Union[tuple(by_kind.values())]  # noqa: UP007
    allowed = {name: kinds for name, (kinds, _) in declared.items()}

    def check(found: dict[str, Any] | None) -> bool:
        if found is None:
            return True
        return all(type(v) in allowed.get(k, extra_kinds) for k, v in found.items())

    return _constrained(dict[str, value], rest, _PROPERTIES), check


def _branch(python: Any, kind: type) -> Any:
    """The member of a value type that takes values of Python type `kind`."""
    members = getattr(python, "__args__", None) if getattr(python, "__origin__", None) is \
        Union else None
    for member in members or (python,):
        base = getattr(member, "__origin__", member)
        if base is kind or (member is None and kind is type(None)):
            return member
    raise NotCompilable("union member")


def _value(spec: Mapping[str, Any]) -> tuple[frozenset[type], Any]:
    """A scalar value (or an anyOf or list of scalar types): the Python types it may
    decode to, and its msgspec type."""
    rest = _without_notes(dict(spec))
    if set(rest) == {"anyOf"}:
        parts = [_value(branch) for branch in rest["anyOf"]]
        kinds = frozenset().union(*(k for k, _ in parts))
        if sum(len(k) for k, _ in parts) != len(kinds):
            raise NotCompilable("anyOf branches overlap")
        return kinds, Union[tuple(p for _, p in parts)]  # noqa: UP007
    kind = rest.pop("type", None)
    if isinstance(kind, list):
        if rest:
            raise NotCompilable("constraints on a list of types")
        parts = [_value({"type": k}) for k in kind]
        return frozenset().union(*(k for k, _ in parts)), Union[tuple(p for _, p in parts)]  # noqa: UP007
    if kind == "string":  # any format or pattern is refused: msgspec's differ
        return frozenset({str}), _constrained(str, rest, _LENGTHS)
    if kind == "integer":
        return frozenset({int}), _constrained(int, _integer_bounds(rest), _BOUNDS)
    if kind == "number":
        # An integer stays an integer: exact against the bounds, exact in JSON text.
        whole = _constrained(int, _integer_bounds(rest), _BOUNDS)
        fraction = _constrained(float, _float_bounds(rest), _BOUNDS)
        return frozenset({int, float}), Union[whole, fraction]  # noqa: UP007
    if kind == "boolean" and not rest:
        return frozenset({bool}), bool
    if kind == "null" and not rest:
        return frozenset({type(None)}), None
    raise NotCompilable(f"value {spec!r}")


def _integer_bounds(spec: Mapping[str, Any]) -> dict[str, int]:
    """Bounds for integers: exact, and clamped to 64 bits (msgspec's limit; stricter)."""
    rounded = {"minimum": math.ceil, "maximum": math.floor,
               "exclusiveMinimum": math.floor, "exclusiveMaximum": math.ceil}
    bounds = {k: rounded[k](v) for k, v in _finite_bounds(spec).items()}
    for name, value in bounds.items():
        lower = name in ("minimum", "exclusiveMinimum")
        if (value > _INT64[1]) if lower else (value < _INT64[0]):
            raise NotCompilable("no 64-bit integer meets the bounds")
        bounds[name] = min(max(value, _INT64[0]), _INT64[1])
    return bounds


def _float_bounds(spec: Mapping[str, Any]) -> dict[str, float]:
    """Bounds for floats, only where a double holds them exactly (msgspec compares doubles)."""
    bounds = _finite_bounds(spec)
    if any(float(v) != v for v in bounds.values()):
        raise NotCompilable("a bound a double cannot hold")
    return {k: float(v) for k, v in bounds.items()}


def _finite_bounds(spec: Mapping[str, Any]) -> dict[str, int | float]:
    if set(spec) - set(_BOUNDS) or any(
            type(v) not in (int, float) or not math.isfinite(v) for v in spec.values()):
        raise NotCompilable("bounds")
    return dict(spec)


def _without_notes(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _NOTES}


def _constrained(python: Any, spec: Mapping[str, Any], names: Mapping[str, str]) -> Any:
    if set(spec) - set(names):
        raise NotCompilable(f"keywords {sorted(set(spec) - set(names))}")
    if any(type(v) is bool for v in spec.values()):
        raise NotCompilable("a boolean where a number belongs")
    meta = {names[k]: v for k, v in spec.items()}
    return Annotated[python, msgspec.Meta(**meta)] if meta else python
