"""Result frames as the JSON, CSV and Parquet that every front end returns: the CLI prints
them, the dashboard's API sends the same bytes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import stat
import tempfile
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # every command prints JSON through here; `tally tail` never loads Polars
    import polars as pl

_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def plain(value: Any) -> Any:
    """A JSON-ready value: dates as ISO text, floats without binary noise."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def json_records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as JSON-ready dicts (see `plain`)."""
    import polars as pl
    import polars.selectors as cs

    frame = frame.with_columns(cs.float().cast(pl.Float64).round(6).fill_nan(None))
    # Only datetimes and lists need `plain` once floats are rounded: a year's report has
    # 20k+ rows, too many to convert value by value.
    slow = [name for name, dtype in frame.schema.items()
            if isinstance(dtype, (pl.Datetime, pl.Date, pl.List))]
    records = frame.to_dicts()
    for record in records if slow else ():
        for name in slow:
            record[name] = plain(record[name])
    return records


def _is_cost(column: str) -> bool:
    return column.endswith("cost_usd")


def cell_text(column: str, value: Any) -> str:
    """How a value reads in a table: thousands separators, dollars, lists joined."""
    if value is None:
        return "-"
    if _is_cost(column):
        return f"${value:,.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.1%}" if column.endswith("ratio") else f"{value:,.6g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(plain(value))


def numeric(frame: pl.DataFrame, column: str) -> bool:
    """Whether a column holds numbers (right-aligned, summed in a totals row)."""
    return frame.schema[column].is_numeric()


def totals_row(frame: pl.DataFrame, label_column: str) -> dict[str, Any]:
    """Sums of the count and cost columns; a cost total is null when no row had a cost."""
    row: dict[str, Any] = {c: None for c in frame.columns}
    row[label_column] = "total"
    for column in frame.columns:
        if numeric(frame, column) and not column.endswith("ratio") and column != "progress":
            values = frame[column].drop_nulls()
            row[column] = values.sum() if len(values) else None
    return row


def json_text(value: Any) -> str:
    """A value as indented JSON (dates and anything else not JSON as their text)."""
    # orjson: a year's report is 20k+ records, which the json module takes 0.4 s to print.
    try:
        return orjson.dumps(value, option=_JSON_OPTIONS, default=str).decode()
    except orjson.JSONEncodeError:  # text orjson refuses (a file name's lone surrogates)
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def csv_text(frame: pl.DataFrame) -> str:
    """The frame as CSV: a header, then its JSON-ready values (lists joined with "; ")."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # A lone \r is no line terminator of ours, so csv would leave it bare: quote that row.
    quoting = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(frame.columns)
    for record in json_records(frame):
        row = ["" if v is None else "; ".join(map(str, v)) if isinstance(v, list) else v
               for v in record.values()]
        bare_return = any(isinstance(v, str) and "\r" in v for v in row)
        (quoting if bare_return else writer).writerow(row)
    return buffer.getvalue()


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """The frame as one Parquet file (zstd), typed as the report computed it."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    return buffer.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    """Write a report file: a regular file whole or not at all (a half-written report helps
    nobody), with the mode a new file gets; a pipe, device or symlink's target as it is."""
    try:
        st = os.stat(path)  # through a symlink: its target is what the user named
    except FileNotFoundError:
        st = None
    if (st is not None and not stat.S_ISREG(st.st_mode)) or path.is_symlink():
        with open(path, "wb") as handle:
            handle.write(data)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
