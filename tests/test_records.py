"""pipeline.records: result frames as JSON-ready records, table cells, totals, JSON, CSV and
Parquet, and the whole-file write every front end's output goes through."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from polars.testing.parametric import dataframes

from pipeline.records import (
    cell_text,
    csv_text,
    json_records,
    json_text,
    numeric,
    parquet_bytes,
    plain,
    totals_row,
    write_bytes,
)

SIX_DECIMALS = 1e-6

# ---------------------------------------------------------------- plain


def test_plain_writes_times_as_iso_text_and_drops_nan() -> None:
    assert plain(datetime(2026, 3, 1, 9, 30, tzinfo=UTC)) == "2026-03-01T09:30:00Z"
    plus_three = timezone(timedelta(hours=3))
    assert plain(datetime(2026, 3, 1, 9, 30, tzinfo=plus_three)) == "2026-03-01T09:30:00+03:00"
    assert plain(datetime(2026, 3, 1, 9, 30)) == "2026-03-01T09:30:00"
    assert plain(date(2026, 3, 1)) == "2026-03-01"
    assert plain(float("nan")) is None
    assert plain(0.1 + 0.2) == 0.3  # 0.30000000000000004 without the rounding
    assert plain([date(2026, 3, 1), [float("nan"), 1.23456789]]) == ["2026-03-01",
                                                                     [None, 1.234568]]
    for value in (7, "text", None, True):
        assert plain(value) is value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_plain_floats_sit_on_the_six_decimal_grid_within_half_a_step(value: float) -> None:
    rounded = plain(value)
    assert isinstance(rounded, float)
    assert float(f"{rounded:.6f}") == rounded
    assert abs(rounded - value) <= SIX_DECIMALS / 2 + 1e-12 * abs(value) + 1e-15


# ---------------------------------------------------------------- json_records


def test_json_records_convert_every_kind_of_column() -> None:
    frame = pl.DataFrame({
        "day": [date(2026, 3, 1), None],
        "last": [datetime(2026, 3, 1, 9, 30, tzinfo=UTC), None],
        "times": [[datetime(2026, 3, 2, tzinfo=UTC)], []],
        "cost_usd": [1 / 3, float("nan")],
        "share": pl.Series([0.1, None], dtype=pl.Float32),
        "tokens": [12, None],
        "name": ["a", None],
    })
    records = json_records(frame)
    # A Date column may stay dates (orjson writes them as ISO text): read it through plain.
    assert plain(records[0].pop("day")) == "2026-03-01" and records[1].pop("day") is None
    assert records == [
        {"last": "2026-03-01T09:30:00Z",
         "times": ["2026-03-02T00:00:00Z"], "cost_usd": 0.333333, "share": 0.1, "tokens": 12,
         "name": "a"},
        {"last": None, "times": [], "cost_usd": None, "share": None, "tokens": None,
         "name": None}]
    # the JSON of the records has the dates as ISO text
    assert json.loads(json_text(json_records(frame)))[0]["day"] == "2026-03-01"


def test_json_records_of_an_empty_frame() -> None:
    assert json_records(pl.DataFrame(schema={"agent": pl.String, "cost_usd": pl.Float64})) == []


rows = st.lists(st.fixed_dictionaries({
    "n": st.none() | st.integers(min_value=-(2 ** 62), max_value=2 ** 62),
    # Within a billion: above ~1e10, Polars' round(6) strays (576460752305.0 becomes
    # 576460752304.9999), far beyond any cost or ratio a report holds.
    "x": st.none() | st.floats(min_value=-1e9, max_value=1e9) | st.just(float("nan")),
    "t": st.none() | st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1),
                                  timezones=st.just(UTC)),
    "tags": st.lists(st.text(max_size=5), max_size=3),
    "s": st.none() | st.text(max_size=10),
}), max_size=8)
ROW_SCHEMA = {"n": pl.Int64, "x": pl.Float64, "t": pl.Datetime("us", "UTC"),
              "tags": pl.List(pl.String), "s": pl.String}


@settings(max_examples=60, deadline=None)
@given(rows)
def test_json_records_agree_with_plain_value_by_value(values: list[dict[str, Any]]) -> None:
    """A differential check: the vectorised conversion against `plain` on each value."""
    frame = pl.DataFrame(values, schema=ROW_SCHEMA)
    records = json_records(frame)
    assert len(records) == len(values)
    for record, row in zip(records, frame.to_dicts(), strict=True):
        assert list(record) == list(ROW_SCHEMA)
        for name, value in row.items():
            expected = plain(value)
            if name == "x" and expected is not None:
                # Polars rounds half-way cases its own way: both are within half a step of
                # the value, on the six-decimal grid, so at most one step apart.
                slack = 4 * math.ulp(value)
                assert abs(record[name] - value) <= SIX_DECIMALS / 2 + slack
                assert abs(record[name] - expected) <= SIX_DECIMALS + slack
                assert float(f"{record[name]:.6f}") == record[name]
            else:
                assert record[name] == expected, name


# ---------------------------------------------------------------- cell_text and numeric


@pytest.mark.parametrize(("column", "value", "text"), [
    ("events", None, "-"),
    ("cost_usd", None, "-"),
    ("cost_usd", 1234.567, "$1,234.57"),
    ("cache_cost_usd", 0.004, "$0.00"),
    ("cost_usd", 3, "$3.00"),
    ("events", 1234567, "1,234,567"),
    ("events", 0, "0"),
    ("estimated", True, "yes"),
    ("estimated", False, "no"),
    ("cache_hit_ratio", 0.125, "12.5%"),
    ("progress", 60.0, "60"),
    ("progress", 1234567.5, "1.23457e+06"),
    ("remaining", ["a.js", "b.js"], "a.js, b.js"),
    ("remaining", [], ""),
    ("day", date(2025, 8, 29), "2025-08-29"),
    ("last_update", datetime(2025, 8, 29, 13, tzinfo=UTC), "2025-08-29T13:00:00Z"),
    ("agent", "claude", "claude"),
])
def test_cell_text(column: str, value: Any, text: str) -> None:
    assert cell_text(column, value) == text


@given(st.integers(min_value=-(10 ** 15), max_value=10 ** 15))
def test_an_integer_cell_reads_back_as_the_integer(value: int) -> None:
    text = cell_text("total_tokens", value)
    assert int(text.replace(",", "")) == value
    assert all(len(group) == 3 for group in text.lstrip("-").split(",")[1:])


@given(st.floats(min_value=0, max_value=1e9))
def test_a_cost_cell_is_dollars_to_the_cent(value: float) -> None:
    text = cell_text("cost_usd", value)
    assert text.startswith("$") and len(text.rsplit(".", 1)[1]) == 2
    assert abs(float(text[1:].replace(",", "")) - value) <= 0.005 + 1e-9 * value


def test_numeric_columns() -> None:
    frame = pl.DataFrame({
        "i": pl.Series([1], dtype=pl.Int64), "u": pl.Series([1], dtype=pl.UInt32),
        "f": pl.Series([1.0], dtype=pl.Float32), "s": ["x"], "d": [date(2025, 1, 1)],
        "b": [True], "l": [[1]]})
    assert [c for c in frame.columns if numeric(frame, c)] == ["i", "u", "f"]


# ---------------------------------------------------------------- totals_row


def test_totals_row_sums_counts_and_costs_but_not_ratios_or_progress() -> None:
    frame = pl.DataFrame({
        "agent": ["claude", "codex", "gemini"],
        "day": ["2025-08-01", "2025-08-02", None],
        "events": [1, 2, 3],
        "cost_usd": [0.5, None, 0.25],
        "never_priced_cost_usd": pl.Series([None, None, None], dtype=pl.Float64),
        "cache_hit_ratio": [0.1, 0.2, 0.3],
        "progress": [10.0, 20.0, 30.0],
    })
    assert totals_row(frame, "agent") == {
        "agent": "total", "day": None, "events": 6, "cost_usd": 0.75,
        "never_priced_cost_usd": None, "cache_hit_ratio": None, "progress": None}


@given(st.lists(st.tuples(st.none() | st.integers(0, 10 ** 12),
                          st.none() | st.floats(0, 1e6)), max_size=10))
def test_totals_row_is_the_sum_of_the_present_values(values: list[tuple[Any, Any]]) -> None:
    frame = pl.DataFrame({"agent": [f"a{i}" for i in range(len(values))],
                          "total_tokens": [t for t, _ in values],
                          "cost_usd": [c for _, c in values]},
                         schema={"agent": pl.String, "total_tokens": pl.Int64,
                                 "cost_usd": pl.Float64})
    total = totals_row(frame, "agent")
    tokens = [t for t, _ in values if t is not None]
    costs = [c for _, c in values if c is not None]
    assert total["agent"] == "total"
    assert total["total_tokens"] == (sum(tokens) if tokens else None)
    if costs:
        assert total["cost_usd"] == pytest.approx(math.fsum(costs))
    else:
        assert total["cost_usd"] is None


# ---------------------------------------------------------------- json_text


def test_json_text_is_indented_json() -> None:
    value = [{"agent": "claude", "day": date(2025, 8, 29), "tokens": 3}]
    text = json_text(value)
    assert text.splitlines()[1] == "  {"
    assert json.loads(text) == [{"agent": "claude", "day": "2025-08-29", "tokens": 3}]
    assert json.loads(json_text({1: "one"})) == {"1": "one"}


def test_json_text_keeps_text_orjson_refuses() -> None:
    name = "caf\udce9.jsonl"  # a file name's undecodable byte, as os.fsdecode gives it
    text = json_text({"source": name})
    assert json.loads(text) == {"source": name}


@settings(max_examples=50, deadline=None)
@given(rows)
def test_json_text_of_records_reads_back_as_the_records(values: list[dict[str, Any]]) -> None:
    records = json_records(pl.DataFrame(values, schema=ROW_SCHEMA))
    back = json.loads(json_text(records))
    for record, read in zip(records, back, strict=True):
        # JSON has no NaN or infinity: none are left after json_records
        assert read == record


# ---------------------------------------------------------------- csv_text


def test_csv_text_header_and_values() -> None:
    frame = pl.DataFrame({
        "agent": ["claude", None], "tasks": [["a", "b"], []],
        "last": [datetime(2026, 3, 1, 9, 30, tzinfo=UTC), None],
        "cost_usd": [0.1234567, None], "events": [1, None]})
    assert csv_text(frame) == ("agent,tasks,last,cost_usd,events\n"
                               "claude,a; b,2026-03-01T09:30:00Z,0.123457,1\n"
                               ",,,,\n")
    assert csv_text(frame.clear()) == "agent,tasks,last,cost_usd,events\n"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.text(),
                          st.none() | st.integers(-(2 ** 63), 2 ** 63 - 1)), max_size=6))
def test_csv_text_reads_back_with_a_csv_reader(values: list[tuple[str, int | None]]) -> None:
    frame = pl.DataFrame({"name": [n for n, _ in values], "events": [e for _, e in values]},
                         schema={"name": pl.String, "events": pl.Int64})
    read = list(csv.reader(io.StringIO(csv_text(frame), newline="")))
    assert read[0] == ["name", "events"]
    assert read[1:] == [[n, "" if e is None else str(e)] for n, e in values]


def test_a_carriage_return_in_a_value_stays_in_its_cell() -> None:
    frame = pl.DataFrame({"task": ["a\rb", "c"]})
    read = list(csv.reader(io.StringIO(csv_text(frame), newline="")))
    assert read == [["task"], ["a\rb"], ["c"]]


# ---------------------------------------------------------------- parquet_bytes


def test_parquet_keeps_the_report_types() -> None:
    frame = pl.DataFrame({
        "agent": ["claude", None],
        "day": [date(2025, 8, 29), None],
        "last": [datetime(2025, 8, 29, 13, tzinfo=UTC), None],
        "events": pl.Series([3, None], dtype=pl.Int64),
        "share": pl.Series([0.5, None], dtype=pl.Float32),
        "cost_usd": [0.1234567891, None],
        "tasks": [["a", "b"], []],
        "done": [True, None]})
    data = parquet_bytes(frame)
    assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"
    back = pl.read_parquet(io.BytesIO(data))
    assert_frame_equal(back, frame)  # values and dtypes, time zone and all
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"


@settings(max_examples=40, deadline=None)
@given(dataframes(max_cols=4, max_size=6, excluded_dtypes=[pl.Object, pl.Categorical,
                                                           pl.Enum]))
def test_parquet_round_trip(frame: pl.DataFrame) -> None:
    back = pl.read_parquet(io.BytesIO(parquet_bytes(frame)))
    assert_frame_equal(back, frame)


# ---------------------------------------------------------------- write_bytes


def test_write_bytes_replaces_the_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_bytes(path, b"x" * 10_000)
    write_bytes(path, b"short")
    assert path.read_bytes() == b"short"  # nothing of the longer file is left
    write_bytes(path, b"")
    assert path.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_bytes_that_fails_leaves_the_previous_file_and_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.parquet"
    write_bytes(path, b"previous")

    def refuse(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write_bytes(path, b"next")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.parquet"]


def test_write_bytes_into_a_missing_directory_fails_without_a_trace(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_bytes(tmp_path / "missing" / "out.csv", b"a,b\n")
    assert list(tmp_path.iterdir()) == []


def test_write_bytes_gives_a_new_file_the_umasks_mode_and_keeps_an_old_ones(
        tmp_path: Path) -> None:
    mask = os.umask(0o027)
    try:
        write_bytes(tmp_path / "new.csv", b"a\n")
    finally:
        os.umask(mask)
    assert (tmp_path / "new.csv").stat().st_mode & 0o777 == 0o640
    kept = tmp_path / "kept.csv"
    kept.write_bytes(b"old")
    kept.chmod(0o604)
    write_bytes(kept, b"new")
    assert kept.read_bytes() == b"new" and kept.stat().st_mode & 0o777 == 0o604


def test_write_bytes_writes_through_a_symlink_and_into_a_pipe(tmp_path: Path) -> None:
    (tmp_path / "target.csv").write_bytes(b"old")
    (tmp_path / "link.csv").symlink_to("target.csv")
    write_bytes(tmp_path / "link.csv", b"new")
    assert (tmp_path / "link.csv").is_symlink()
    assert (tmp_path / "target.csv").read_bytes() == b"new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_bytes(fifo, b"through the pipe")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
