"""A local index of each event table's `_id_hash` values and their dates, so that a
compaction matches new ids against the lake without reading every file's hash column.

The index only narrows the search; it never decides. It holds a superset of the hashes
in the table files it lists as covered (data files are immutable, and a name is never
reused), and the table's files it does not cover are read whenever it is asked. A hash
whose row has since been deleted only makes the rule look at that id, which it then
decides from the lake's own rows. So a stale, partial or lost index costs time, never an
event, and an unreadable one is thrown away and built again.

Layout, under `state/id_index/<event_type>/`: `index.json` (the table's id, the covered
files and the segments) and segments `<n>.arrow` of (`_id_hash`, `date`), one per run
that found uncovered files; at `MERGE_AT` segments, one is built anew from the table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import orjson
import polars as pl
from deltalake import DeltaTable

from pipeline.dedupe import ID_HASH
from pipeline.storage import Location

INDEX_DIR = "id_index"
MANIFEST = "index.json"
MERGE_AT = 16
SCHEMA = {ID_HASH: pl.Int64, "date": pl.Date}


@dataclass
class _Manifest:
    table_id: str
    covered: set[str] = field(default_factory=set)
    segments: list[str] = field(default_factory=list)


def index_dir(state: Path, event_type: str) -> Path:
    """Where the index of a type's table lives."""
    return state / INDEX_DIR / event_type


def lake_hashes(directory: Path, table: DeltaTable, table_dir: Location | Path) -> pl.LazyFrame:
    """(`_id_hash`, `date`) of every row of `table` (at `table_dir`), and perhaps of rows
    since deleted: the index in `directory` brought up to date with the table first."""
    if isinstance(table_dir, Path):
        table_dir = Location.local(table_dir)
    files = _current_files(table)
    manifest = _load(directory, str(table.metadata().id))
    fresh = sorted(set(files) - manifest.covered)
    # Built from every file the first time, and again in place of MERGE_AT segments (which
    # drops the hashes of files since removed); else only the files not covered are read.
    whole = not manifest.segments or len(manifest.segments) >= MERGE_AT
    paths = sorted(files) if whole else fresh
    rows = _read_hashes(table_dir, paths, files)
    try:
        if paths:
            name = _write_segment(directory, manifest, rows)
            manifest.segments = [name] if whole else [*manifest.segments, name]
        manifest.covered = set(files)
        _save(directory, manifest)
    except OSError:  # no room or no right to keep it: answer from the files this once
        if whole or not all((directory / s).is_file() for s in manifest.segments):
            return _read_hashes(table_dir, sorted(files), files)
        return pl.concat([*(_scan(directory / s) for s in manifest.segments), rows])
    return pl.concat([_scan(directory / s) for s in manifest.segments]
                     or [pl.LazyFrame(schema=SCHEMA)])


def forget(directory: Path) -> None:
    """Throw an index away (one that cannot be read); the next run builds it anew."""
    shutil.rmtree(directory, ignore_errors=True)


def _current_files(table: DeltaTable) -> dict[str, date | None]:
    """The table's data files (paths relative to it) and each one's date partition."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    if actions.is_empty():
        return {}
    dates = (actions.get_column("partition.date").cast(pl.Date)
             if "partition.date" in actions.columns
             else pl.Series([None] * actions.height, dtype=pl.Date))
    return dict(zip(actions.get_column("path").to_list(), dates.to_list(), strict=True))


def _read_hashes(root: Location, paths: list[str],
                 dates: dict[str, date | None]) -> pl.LazyFrame:
    """(`_id_hash`, `date`) of the rows of the data files `paths` of the table at `root`."""
    if not paths:
        return pl.LazyFrame(schema=SCHEMA)
    located = [root.file(path) for path in paths]  # the log's paths are URL-encoded
    dated = pl.LazyFrame({"_path": located, "date": [dates[p] for p in paths]},
                         schema={"_path": pl.String, "date": pl.Date})
    # Files of older schemas lack columns of newer ones: only `_id_hash` is read. No glob:
    # these are file names, never patterns. A path not matched keeps its hashes (date
    # null: `resolve` then reads every date).
    scan = pl.scan_parquet(located, schema={ID_HASH: pl.Int64}, extra_columns="ignore",
                           glob=False, include_file_paths="_path",
                           storage_options=root.storage_options)
    return (scan.drop_nulls(ID_HASH).join(dated, on="_path", how="left")
            .select(ID_HASH, "date"))


def _scan(path: Path) -> pl.LazyFrame:
    return pl.scan_ipc(path)


def _load(directory: Path, table_id: str) -> _Manifest:
    """The index's manifest; an empty one for another table, or one that cannot be read."""
    try:
        raw = orjson.loads((directory / MANIFEST).read_bytes())
        manifest = _Manifest(str(raw["table_id"]), set(raw["covered"]), list(raw["segments"]))
        for segment in manifest.segments:
            pl.read_ipc_schema(directory / segment)  # raises if missing or torn
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
        return _Manifest(table_id)
    return manifest if manifest.table_id == table_id else _Manifest(table_id)


def _write_segment(directory: Path, manifest: _Manifest, rows: pl.LazyFrame) -> str:
    """Write `rows` as a new segment (streamed: memory stays bounded); its name."""
    directory.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(s.split(".")[0]) for s in manifest.segments), default=0)
    name = f"{number}.arrow"
    temporary = directory / (name + ".tmp")
    rows.sink_ipc(temporary)
    os.replace(temporary, directory / name)
    return name


def _save(directory: Path, manifest: _Manifest) -> None:
    """Replace the manifest, then delete the segments it no longer names."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / (MANIFEST + ".tmp")
    temporary.write_bytes(orjson.dumps({"table_id": manifest.table_id,
                                        "covered": sorted(manifest.covered),
                                        "segments": manifest.segments}))
    os.replace(temporary, directory / MANIFEST)
    for stale in directory.iterdir():
        if stale.name != MANIFEST and stale.name not in manifest.segments:
            with contextlib.suppress(OSError):
                stale.unlink()
