"""The stage: validated events as typed Arrow IPC batches, and rejected lines as quarantine JSONL.

A tailer batch N writes `stage/<type>/b<N>.arrow` for each event type it saw and
`quarantine/b<N>.jsonl` for its rejects, then moves the checkpoint's batch watermark to N.
Files above the watermark are leftovers of a crash: never read, deleted by the next tailer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from pipeline.events import Rejection
from pipeline.schemas import SchemaSet, load_schemas

TS_TYPE = pl.Datetime("us", "UTC")
# The schema's pattern guarantees this shape; naming it is 13x faster than inferring it.
TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"
SOURCE_COLUMNS: dict[str, pl.DataType] = {"_source": pl.String(), "_offset": pl.Int64()}
EXCERPT_BYTES = 1024
_BATCH_FILE = re.compile(r"^b(?P<batch>[0-9]{12})\.(?:arrow|jsonl)$")

Converter = Callable[[Any], Any]


def batch_name(batch: int, suffix: str) -> str:
    """File name of a batch: b000000000042.arrow."""
    return f"b{batch:012d}.{suffix}"


def batch_number(path: Path) -> int | None:
    """The batch number in a stage or quarantine file name, None for anything else."""
    match = _BATCH_FILE.match(path.name)
    return int(match["batch"]) if match else None


# ---------------------------------------------------------------- schema to columns


def column_type(spec: Mapping[str, Any], schemas: SchemaSet) -> pl.DataType:
    """The Polars type a property is stored as."""
    spec = schemas.resolve(dict(spec))
    if spec.get("format") == "date-time":
        return TS_TYPE
    if "anyOf" in spec or "enum" in spec or "const" in spec:
        return pl.String()
    kind = spec.get("type")
    if kind == "integer":
        return pl.Int64()
    if kind == "number":
        return pl.Float64()
    if kind == "boolean":
        return pl.Boolean()
    if kind == "array":
        return pl.List(column_type(spec.get("items", {}), schemas))
    if kind == "object" and "properties" in spec:
        fields = {n: column_type(s, schemas) for n, s in spec["properties"].items()}
        return pl.Struct({**fields, "extra": pl.String()})
    return pl.String()  # strings, and free-form maps kept as JSON text


def stage_schema(event_type: str, schemas: SchemaSet | None = None) -> dict[str, pl.DataType]:
    """Columns of a type across all its versions (later versions add nullable columns)."""
    schemas = schemas or load_schemas()
    columns: dict[str, pl.DataType] = {}
    for version in schemas.versions(event_type):
        for name, spec in schemas.properties(event_type, version).items():
            columns.setdefault(name, column_type(spec, schemas))
    columns["schema_version"] = pl.Int64()
    return {**columns, **SOURCE_COLUMNS}


def _converters(event_type: str, schemas: SchemaSet) -> dict[str, Converter]:
    # Only nested fields need Python work per row; flat types convert column-wise.
    converters: dict[str, Converter] = {}
    for name, dtype in stage_schema(event_type, schemas).items():
        if isinstance(dtype, pl.Struct):
            declared = {f.name for f in dtype.fields} - {"extra"}
            converters[name] = _struct_converter(declared)
        elif dtype == pl.String and name not in SOURCE_COLUMNS:
            spec = schemas.properties(event_type).get(name, {})
            if spec.get("type") == "object":
                converters[name] = json_text
    return converters


def json_text(value: Any) -> str:
    """A free-form value as compact JSON text (big integers included)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers past 64 bits, which orjson refuses
        return json.dumps(value, separators=(",", ":"))


def _struct_converter(declared: set[str]) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        extra = {k: v for k, v in value.items() if k not in declared}
        fixed = {k: v for k, v in value.items() if k in declared}
        fixed["extra"] = json_text(extra) if extra else None
        return fixed

    return convert


class FrameBuilder:
    """Turns parsed events of one type into a typed DataFrame (ts parsed, sources attached)."""

    def __init__(self, event_type: str, schemas: SchemaSet | None = None) -> None:
        schemas = schemas or load_schemas()
        self.event_type = event_type
        self.schema = stage_schema(event_type, schemas)
        self._raw_schema = {
            name: pl.String() if dtype == TS_TYPE else dtype
            for name, dtype in self.schema.items() if name not in SOURCE_COLUMNS
        }
        self._converters = _converters(event_type, schemas)
        self._timestamps = [n for n, d in self.schema.items() if d == TS_TYPE]

    def build(self, rows: list[dict[str, Any]], sources: list[str],
              offsets: list[int]) -> pl.DataFrame:
        """A typed frame of the rows; `sources`/`offsets` give each row's origin."""
        for name, convert in self._converters.items():
            for row in rows:
                if name in row:
                    row[name] = convert(row[name])
        frame = pl.from_dicts(rows, schema=self._raw_schema, strict=False)
        return frame.with_columns(
            *(pl.col(n).str.to_datetime(TS_FORMAT, time_unit="us", time_zone="UTC")
              for n in self._timestamps),
            pl.col("schema_version").fill_null(1),
            pl.Series("_source", sources, dtype=pl.String),
            pl.Series("_offset", offsets, dtype=pl.Int64),
        )


# ---------------------------------------------------------------- durable files


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write via `write(handle)` to a temp file, fsync it, rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing half-written behind
        raise


def write_stage_frame(stage_dir: Path, batch: int, frame: pl.DataFrame) -> Path:
    """Write one type's frame of a batch durably (the caller fsyncs the directory)."""
    event_type = str(frame["event_type"][0])
    path = stage_dir / event_type / batch_name(batch, "arrow")
    write_atomic(path, lambda handle: frame.write_ipc(handle, compression="lz4"))
    return path


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


def write_quarantine(quarantine_dir: Path, batch: int, records: list[dict[str, Any]]) -> Path:
    """Write a batch's rejected-line records durably (the caller fsyncs the directory)."""
    path = quarantine_dir / batch_name(batch, "jsonl")
    body = b"".join(orjson.dumps(r) + b"\n" for r in records)
    write_atomic(path, lambda handle: handle.write(body))
    return path


# ---------------------------------------------------------------- reading the stage


def batch_files(directory: Path, suffix: str, up_to: int | None = None,
                after: int = 0) -> list[tuple[int, Path]]:
    """(batch, path) of committed batch files in a directory, ascending."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob(f"b*.{suffix}"):
        number = batch_number(path)
        if number is not None and number > after and (up_to is None or number <= up_to):
            found.append((number, path))
    return sorted(found)


def staged_files(stage_dir: Path, event_type: str, up_to: int,
                 after: int = 0) -> list[tuple[int, Path]]:
    """Committed stage files of one type (batches in `after < b <= up_to`), ascending."""
    return batch_files(stage_dir / event_type, "arrow", up_to=up_to, after=after)


def scan_stage_files(files: list[Path],
                     schema: Mapping[str, pl.DataType] | None = None) -> pl.LazyFrame | None:
    """A lazy scan of the given stage files, conformed to `schema` when given."""
    if not files:
        return None
    combined = pl.concat([pl.scan_ipc(path) for path in files], how="diagonal_relaxed")
    return combined if schema is None else conform(combined, schema)


def conform(frame: pl.LazyFrame, schema: Mapping[str, pl.DataType]) -> pl.LazyFrame:
    """Select exactly `schema`'s columns in order, adding missing ones as nulls."""
    present = frame.collect_schema()
    return frame.select(
        pl.col(name).cast(dtype) if name in present else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    )


def remove_orphans(directories: Iterable[Path], above: int) -> list[Path]:
    """Delete batch files newer than the committed watermark (left by a crash)."""
    removed = []
    for directory in directories:
        for suffix in ("arrow", "jsonl"):
            for _, path in batch_files(directory, suffix, after=above):
                path.unlink(missing_ok=True)
                removed.append(path)
        for tmp in directory.glob(".b*.tmp") if directory.is_dir() else ():
            tmp.unlink(missing_ok=True)
    return removed


def iter_quarantine(quarantine_dir: Path, up_to: int | None = None) -> Iterator[dict[str, Any]]:
    """Every quarantine record of committed batches."""
    for _, path in batch_files(quarantine_dir, "jsonl", up_to=up_to):
        with open(path, "rb") as handle:
            for line in handle:
                yield orjson.loads(line)
