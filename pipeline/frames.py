"""Events typed into Polars frames: the stage's columns, and blocks of lines checked and typed.

The tailer's per-line work after validation, done in its process or in workers
(pipeline.workers); the files the frames go to are `pipeline.stage`'s.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from pipeline.events import FAST_TIMESTAMP, Rejection, Validator
from pipeline.intake import (
    BlockChecker,
    convert_nested,
    convert_nested_column,
    quarantine_record,
    split_block,
)
from pipeline.schemas import SchemaSet, load_schemas
from pipeline.stage import BatchId, StagedBlock, write_stage_bytes
from pipeline.structs import DecodedColumns, StructDecoder

TS_TYPE = pl.Datetime("us", "UTC")
# The schema's pattern guarantees this shape; naming it is 13x faster than inferring it.
TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"
SOURCE_COLUMNS: dict[str, pl.DataType] = {"_source": pl.String(), "_offset": pl.Int64()}
_GOOD = "__timestamps_ok"
# The lake's times are Python datetimes: UTC years 1-9999. Parsing floors to the
# microsecond, so a time passes these bounds exactly when its UTC year is in range.
_TS_BOUNDS = (datetime(1, 1, 1, tzinfo=UTC),
              datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
# A typing query's key: the columns present, and the format of each timestamp (None: TS_FORMAT).
_Columns = tuple[frozenset[str], tuple[str | None, ...]]
# Polars parses a format of fixed fields and literals in ~100 ns a value; one with `%.f` or
# an offset (TS_FORMAT) goes through chrono at ~400. So a block whose first timestamp has
# a common UTC shape (no fraction, milli- or microseconds; Z or +00:00) tries its format.
_UTC_ZONES = ("Z", "+00:00")
_FRACTIONS = {"": "", ".ddd": ".%3f", ".dddddd": ".%6f"}  # digits written d
_DIGITS_AS_D = str.maketrans("0123456789", "d" * 10)
# Decoding saves per line and costs per event type in a block (a Polars query each): it
# pays from about 1,500 lines, so catch-up blocks decode and a live tail's few lines do not.
DECODE_FROM_LINES = 2000


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


def nested_fields(event_type: str, schemas: SchemaSet) -> dict[str, frozenset[str] | None]:
    """Fields needing conversion before staging: struct fields (their declared names) and
    free-form maps (None, kept as JSON text). Flat types convert column-wise in Polars."""
    nested: dict[str, frozenset[str] | None] = {}
    for name, dtype in stage_schema(event_type, schemas).items():
        if isinstance(dtype, pl.Struct):
            nested[name] = frozenset(f.name for f in dtype.fields) - {"extra"}
        elif dtype == pl.String and name not in SOURCE_COLUMNS and (
                schemas.properties(event_type).get(name, {}).get("type") == "object"):
            nested[name] = None
    return nested


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
        self.nested = nested_fields(event_type, schemas)
        self._timestamps = [n for n, d in self.schema.items() if d == TS_TYPE]
        self._typings: dict[_Columns, list[pl.Expr]] = {}
        self._event_id_at = list(self._raw_schema).index("event_id")

    def build(self, rows: list[dict[str, Any]], sources: list[str],
              offsets: list[int]) -> pl.DataFrame:
        """A typed frame of parsed rows; `sources`/`offsets` give each row's origin."""
        convert_nested(rows, self.nested)
        return self.from_converted(rows, sources, offsets)

    def from_converted(self, rows: list[dict[str, Any]], sources: list[str],
                       offsets: list[int]) -> pl.DataFrame:
        """A typed frame of rows whose nested fields are converted already."""
        return self._typed(pl.from_dicts(rows, schema=self._raw_schema, strict=False),
                           sources, offsets)

    def from_decoded(self, decoded: DecodedColumns, starts: list[int], source: str,
                     id_prefix: str) -> tuple[pl.DataFrame, list[int]]:
        """The typed frame of decoded columns, less the rows whose timestamps fail the
        check (FAST_TIMESTAMP, the calendar and the UTC years); those rows' line indexes
        come back."""
        job = self.prepare(decoded, starts, source, id_prefix)
        return job.finish(job.query().collect(engine="in-memory"))

    def prepare(self, decoded: DecodedColumns, starts: list[int], source: str,
                id_prefix: str) -> TypingJob:
        """The frame of decoded columns and its typing query, to run (with other types')
        and then `finish`."""
        # Only columns holding a value become Series: each costs ~40 µs however short.
        present = {name: values for name, values in decoded.columns.items()
                   if name in self._raw_schema and _holds_a_value(values)}
        for name, declared in self.nested.items():
            if name in present:
                present[name] = convert_nested_column(present[name], declared)
        offsets = list(map(starts.__getitem__, decoded.indexes))
        frame = pl.DataFrame([*(pl.Series(name, values, dtype=pl.Int64).cast(pl.String)
                                if name in decoded.integer_text
                                else pl.Series(name, values, dtype=self._raw_schema[name])
                                for name, values in present.items()),
                              pl.Series("_offset", offsets, dtype=pl.Int64)])
        shapes = tuple(shape_format(present[name]) if name in present else None
                       for name in self._timestamps)
        return TypingJob(self, frame, (frozenset(present), shapes), source, id_prefix,
                         decoded.indexes)

    def _typing(self, columns: _Columns, source: str, id_prefix: str) -> list[pl.Expr]:
        """The typing query's columns for frames holding the present columns of `columns`,
        with timestamps parsed by its formats (None: TS_FORMAT).

        Built once per set of columns: a block pays Polars' expression building (~0.3 ms a
        type) only for its event ids and source, which differ from file to file.
        """
        present, shapes = columns
        cached = self._typings.get(columns)
        if cached is None:
            parsed = {name: self._parsed(name, strict=False, shape=shape)
                      for name, shape in zip(self._timestamps, shapes, strict=True)}
            cached = self._typings[columns] = [
                *(parsed[name] if name in parsed and name in present
                  else self._decoded_column(name, dtype, name in present)
                  for name, dtype in self._raw_schema.items()),
                pl.col("_offset"),
                pl.all_horizontal(True, *(
                    pl.col(n).is_null() | (pl.col(n).str.contains(FAST_TIMESTAMP["pattern"])
                                           & parsed[n].is_not_null()
                                           & parsed[n].is_between(*_TS_BOUNDS))
                    for n in self._timestamps if n in present)).alias(_GOOD),
            ]
        derived = pl.lit(id_prefix) + pl.col("_offset").cast(pl.String)
        event_id = pl.col("event_id").fill_null(derived) if "event_id" in present else derived
        typing = list(cached)
        typing[self._event_id_at] = event_id.alias("event_id")
        typing.insert(len(self._raw_schema), pl.lit(source, pl.String).alias("_source"))
        return typing

    def _decoded_column(self, name: str, dtype: pl.DataType, present: bool) -> pl.Expr:
        if name == "event_type":
            return pl.lit(self.event_type, pl.String).alias(name)
        if name == "event_id":  # derived where the producer gave none: set per block
            return pl.lit(None, pl.String).alias(name)
        if name == "schema_version":
            return (pl.col(name).fill_null(1) if present else pl.lit(1, pl.Int64)).alias(name)
        if not present:
            return pl.lit(None, self.schema[name]).alias(name)
        return pl.col(name)

    def _typed(self, frame: pl.DataFrame, sources: list[str], offsets: list[int]) -> pl.DataFrame:
        return frame.with_columns(
            *(self._parsed(n, strict=True) for n in self._timestamps),
            pl.col("schema_version").fill_null(1),
            pl.Series("_source", sources, dtype=pl.String),
            pl.Series("_offset", offsets, dtype=pl.Int64),
        )

    @staticmethod
    def _parsed(name: str, strict: bool, shape: str | None = None) -> pl.Expr:
        """A timestamp column parsed: by TS_FORMAT, or by a `shape_format` (nulls where
        a value has another shape)."""
        # No cache: it pays when values repeat, and event times barely do (a third slower).
        if shape is None:
            return pl.col(name).str.to_datetime(TS_FORMAT, time_unit="us", time_zone="UTC",
                                                strict=strict, cache=False)
        return pl.col(name).str.to_datetime(shape, time_unit="us", strict=strict, cache=False
                                            ).dt.replace_time_zone("UTC")

    def from_converted_or_quarantine(self, rows: list[dict[str, Any]], sources: list[str],
                                     offsets: list[int],
                                     ) -> tuple[pl.DataFrame | None, list[dict[str, Any]]]:
        """The typed frame; if some rows cannot be typed, the others plus a quarantine
        record (`unstageable`) for each of those."""
        try:
            return self.from_converted(rows, sources, offsets), []
        except Exception:
            pass
        frames, rejected = [], []
        for row, source, offset in zip(rows, sources, offsets, strict=True):
            try:
                frames.append(self.from_converted([row], [source], [offset]))
            except Exception as exc:
                rejection = Rejection("unstageable", f"valid JSON that cannot be typed: {exc}")
                rejected.append(quarantine_record(source, offset, repr(row).encode(), rejection))
        return (pl.concat(frames) if frames else None), rejected


@dataclass
class TypingJob:
    """A type's frame of decoded columns and its typing query (typing, event ids, the
    timestamp check), not yet run: a block runs its types' queries in one Polars run."""

    builder: FrameBuilder
    frame: pl.DataFrame
    columns: _Columns
    source: str
    id_prefix: str
    indexes: list[int]  # each row's line index in the block

    def query(self, columns: _Columns | None = None) -> pl.LazyFrame:
        """The typing query; `columns` another key for the same frame (other formats)."""
        typing = self.builder._typing(columns or self.columns, self.source, self.id_prefix)
        return self.frame.lazy().select(typing)

    def finish(self, typed: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
        """The typed frame (the query's result) less the rows whose timestamps fail the
        check, and those rows' line indexes."""
        good = typed.drop_in_place(_GOOD)
        present, shapes = self.columns
        if not good.all() and any(shapes):  # another shape, or a bad value: the full format
            general = (present, (None,) * len(shapes))
            typed = self.query(general).collect(engine="in-memory")
            good = typed.drop_in_place(_GOOD)
        if good.all():
            return typed, []
        failed = [index for index, ok in zip(self.indexes, good, strict=True) if not ok]
        return typed.filter(good), failed


def run_typing(jobs: list[TypingJob]) -> list[pl.DataFrame | None]:
    """Each job's query result, None where its query fails.

    One Polars run for all: a run costs ~0.3 ms however small (planning, threads), and a
    block holds five types or so. In memory: the streaming engine (Polars' default)
    costs more on frames this size.
    """
    try:
        return list(pl.collect_all([job.query() for job in jobs], engine="in-memory"))
    except Exception:  # find which: the others still type
        return [_collected_or_none(job.query()) for job in jobs]


def _collected_or_none(query: pl.LazyFrame) -> pl.DataFrame | None:
    try:
        return query.collect(engine="in-memory")
    except Exception:
        return None


class BlockStager:
    """Checks a block of lines and types its events: the tailer's work per block, done in
    its own process or in a worker (see pipeline.workers)."""

    def __init__(self, validator: Validator, decode_from: int | None = DECODE_FROM_LINES) -> None:
        schemas = validator.schemas
        self.builders = {t: FrameBuilder(t, schemas) for t in schemas.types}
        nested = {t: builder.nested for t, builder in self.builders.items()}
        self.checker = BlockChecker(validator, nested)
        # None: never decode (the checker alone, as the tests' reference path)
        self.decode_from = decode_from
        self.decoder = None if decode_from is None else StructDecoder(schemas)

    def stage(self, block: bytes, position: int, source: str, id_prefix: str,
              limit: int, part_paths: Callable[[str], Path] | None = None) -> StagedBlock:
        """Check `block` (complete lines read at `position`) and type what is valid.

        Each type's frame becomes Arrow IPC bytes, or with `part_paths` a file at
        `part_paths(event_type)` (a worker's: see pipeline.workers).

        In a block of `decode_from` lines or more, lines of the compiled types are decoded
        straight to columns; the rest, and any line the decoder refuses, go through the
        checker, where the reference decides.
        """
        lines, starts = split_block(block, position)
        frames: dict[str, list[pl.DataFrame]] = {}
        left: range | list[int] = range(len(lines))
        if self.decode_from is not None and len(lines) >= self.decode_from:
            left = self._decode(lines, starts, source, id_prefix, limit, frames)
        checked = self.checker.check_lines([lines[i] for i in left], [starts[i] for i in left],
                                           source, id_prefix, limit)
        staged = StagedBlock(rejected=checked.rejected)
        for event_type, typed in checked.rows.items():
            frame, unstageable = self.builders[event_type].from_converted_or_quarantine(
                typed.rows, [source] * len(typed.offsets), typed.offsets)
            staged.rejected.extend(unstageable)
            if frame is not None and frame.height:
                frames.setdefault(event_type, []).append(frame)
        whole = {event_type: pieces[0] if len(pieces) == 1 else pl.concat(pieces).sort("_offset")
                 for event_type, pieces in frames.items()}
        if part_paths is None:
            staged.frames = ipc_files(whole)
        else:
            staged.parts = {event_type: part_paths(event_type) for event_type in whole}
            write_ipc_files({staged.parts[t]: frame for t, frame in whole.items()})
        staged.counts = {event_type: frame.height for event_type, frame in whole.items()}
        return staged

    def stage_events(self, events: list[dict[str, Any]], sources: list[str],
                     offsets: list[int], rejected: list[dict[str, Any]]) -> StagedBlock:
        """Type events made by importers (each with the file and offset of the log line it
        came from): one frame per type for a whole batch of files. An event the schemas
        refuse goes to the quarantine, as a line would."""
        validator = self.checker.validator
        staged = StagedBlock(rejected=list(rejected))
        kept: list[int] = list(range(len(events)))
        if not validator.accepts_all(events):
            kept = []
            for index, event in enumerate(events):
                line = orjson.dumps(event)
                verdict = validator.validate(line)
                if isinstance(verdict, Rejection):
                    staged.rejected.append(quarantine_record(sources[index], offsets[index],
                                                             line, verdict))
                else:
                    kept.append(index)
        by_type: dict[str, list[int]] = {}
        for index in kept:
            by_type.setdefault(events[index]["event_type"], []).append(index)
        frames = {}
        for event_type, indexes in by_type.items():
            builder = self.builders[event_type]
            rows = [events[i] for i in indexes]
            convert_nested(rows, builder.nested)
            frame, unstageable = builder.from_converted_or_quarantine(
                rows, [sources[i] for i in indexes], [offsets[i] for i in indexes])
            staged.rejected.extend(unstageable)
            if frame is not None and frame.height:
                frames[event_type] = frame
        staged.frames = ipc_files(frames)
        staged.counts = {event_type: frame.height for event_type, frame in frames.items()}
        return staged

    def _decode(self, lines: list[bytes], starts: list[int], source: str, id_prefix: str,
                limit: int, frames: dict[str, list[pl.DataFrame]]) -> list[int]:
        """Type what the decoder vouches for into `frames`; the indexes of the other lines."""
        assert self.decoder is not None
        if lines and max(map(len, lines)) > limit:  # too long whatever it holds: the checker's
            lines = [b"" if len(line) > limit else line for line in lines]
        decoded = self.decoder.decode(lines)
        left = decoded.left
        jobs = []
        # What cannot be typed goes to the checker, whose path types row by row and
        # quarantines.
        for event_type, columns in decoded.by_type.items():
            try:
                jobs.append(self.builders[event_type].prepare(columns, starts, source, id_prefix))
            except Exception:
                left += columns.indexes
        for job, typed in zip(jobs, run_typing(jobs), strict=True):
            try:
                if typed is None:
                    raise ValueError("its typing query failed")
                frame, failed = job.finish(typed)
            except Exception:
                left += job.indexes
                continue
            if frame.height:
                frames[job.builder.event_type] = [frame]
            left += failed
        return sorted(left)


def shape_format(values: list[Any]) -> str | None:
    """A fast format for timestamps shaped like the first one, if a common UTC shape.

    Polars' fast parser is loose (it takes `2025-8-01`, or a leading space), but every
    value it parses that also passes FAST_TIMESTAMP's pattern is of exactly this shape,
    and then its time is TS_FORMAT's.
    """
    first = next((value for value in values if value is not None), None)
    if not isinstance(first, str):
        return None
    zone = next((zone for zone in _UTC_ZONES if first.endswith(zone)), None)
    fraction = None if zone is None else _FRACTIONS.get(
        first[19:-len(zone)].translate(_DIGITS_AS_D))
    return None if fraction is None else f"%Y-%m-%dT%H:%M:%S{fraction}{zone}"


def _holds_a_value(values: list[Any]) -> bool:
    # list.count meets None by identity in C: 25x faster than a scan for `is not None`
    # over a column of absent values, the case that scans the whole column.
    return bool(values) and (values[0] is not None or values.count(None) != len(values))


def ipc_bytes(frame: pl.DataFrame) -> bytes:
    """A frame as an uncompressed Arrow IPC file (written once, read soon, then deleted).

    LZ4 would pass a fifth of the bytes between processes and to disk, but it made the
    catch-up at most 5 % faster and compaction, which reads every file, 12 % slower.
    """
    return ipc_files({"": frame})[""]


def ipc_files(frames: Mapping[str, pl.DataFrame]) -> dict[str, bytes]:
    """Frames as uncompressed Arrow IPC files (see `ipc_bytes`), by the same keys."""
    buffers = {key: io.BytesIO() for key in frames}
    _sink_ipc([(buffers[key], frame) for key, frame in frames.items()])
    return {key: buffer.getvalue() for key, buffer in buffers.items()}


def write_ipc_files(frames: Mapping[Path, pl.DataFrame]) -> None:
    """Write frames to files as uncompressed Arrow IPC (not synced); if that fails, none
    of the files is left."""
    try:
        _sink_ipc(list(frames.items()))
    except BaseException:
        for path in frames:
            path.unlink(missing_ok=True)
        raise


def _sink_ipc(targets: list[tuple[Path | io.BytesIO, pl.DataFrame]]) -> None:
    # One run of Polars' streaming engine, which `write_ipc` starts once a frame: a start
    # costs ~0.3 ms however small the frame.
    pl.collect_all([frame.lazy().sink_ipc(target, compression="uncompressed", lazy=True)
                    for target, frame in targets], engine="streaming")


def concat_ipc(parts: list[bytes | Path]) -> bytes:
    """One Arrow IPC file of several frames' (IPC bytes or files), in order."""
    # Files are read whole, not mapped: the caller deletes them next.
    return ipc_bytes(pl.concat([pl.read_ipc(io.BytesIO(
        part if isinstance(part, bytes) else part.read_bytes())) for part in parts]))


def write_stage_frame(stage_dir: Path, batch: BatchId, frame: pl.DataFrame) -> Path:
    """Write one type's frame of a batch durably (the caller fsyncs the directory)."""
    return write_stage_bytes(stage_dir, batch, str(frame["event_type"][0]), ipc_bytes(frame))


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
