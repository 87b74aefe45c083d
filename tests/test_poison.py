"""pipeline.poison: rows the lake cannot take are found exactly, the rest is kept, and a
failure that is not a row's is never blamed on rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import polars as pl
import pytest
from conftest import make_home
from deltalake import write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.poison import (
    PROBE_BUDGET,
    quarantine_unwritable,
    scratch_probe,
    split_writable,
)
from pipeline.stage import iter_quarantine

TS_FORMAT = "%Y-%m-%dT%H:%M:%S%:z"


def rows(stamps: list[str]) -> pl.DataFrame:
    """Staged rows with the given timestamps (offset ns the row's index) and their dates."""
    frame = pl.DataFrame({
        "event_id": [f"e{i}" for i in range(len(stamps))],
        "ts": stamps,
        "input_tokens": list(range(len(stamps))),
        "_source": ["a.jsonl"] * len(stamps),
        "_offset": [i * 100 for i in range(len(stamps))],
    }).with_columns(pl.col("ts").str.to_datetime(TS_FORMAT, time_unit="us", time_zone="UTC"))
    return frame.with_columns(pl.col("ts").dt.date().alias("date"))


GOOD = "2025-03-01T12:00:00+00:00"


def test_times_outside_the_years_one_to_9999_are_split_out() -> None:
    data = rows([GOOD, "0001-01-01T00:00:00+14:00", GOOD, "9999-12-31T23:00:00-05:00"])
    kept, refused = split_writable(data)
    assert kept["event_id"].to_list() == ["e0", "e2"]
    assert [(r.offset, r.reason) for r in refused] == [(100, "ts_out_of_range"),
                                                       (300, "ts_out_of_range")]
    assert orjson.loads(refused[0].row)["ts"].startswith("0000-12-31")


def refusing(marked: set[int]) -> Callable[[pl.DataFrame], None]:
    """A probe that refuses any rows holding one of the `marked` input_tokens values."""
    def probe(frame: pl.DataFrame) -> None:
        if set(frame["input_tokens"].to_list()) & marked:
            raise ValueError("cannot write this value")
    return probe


@settings(max_examples=40, deadline=None)
@given(size=st.integers(2, 300), data=st.data())
def test_halving_finds_exactly_the_refused_rows(size: int, data: st.DataObject) -> None:
    marked = set(data.draw(st.lists(st.integers(0, size - 1), max_size=3, unique=True)))
    frame = rows([GOOD] * size)
    kept, refused = split_writable(frame, refusing(marked))
    blamed = marked if len(marked) < size else set()  # all refused: not the rows' doing
    assert {r.offset // 100 for r in refused} == blamed
    assert all(r.reason == "unwritable" and "cannot write" in r.message for r in refused)
    assert sorted(kept["input_tokens"].to_list()) == sorted(set(range(size)) - blamed)


def test_a_failure_of_every_row_is_not_blamed_on_rows() -> None:
    frame = rows([GOOD] * 5)
    kept, refused = split_writable(frame, refusing(set(range(5))))
    assert refused == [] and kept.height == 5


def test_running_out_of_trials_blames_no_row() -> None:
    size = PROBE_BUDGET * 2
    everywhere = set(range(0, size, 2))  # half the rows: far more trials than the budget
    kept, refused = split_writable(rows([GOOD] * size), refusing(everywhere))
    assert refused == [] and kept.height == size


def test_the_scratch_probe_writes_real_delta_tables_and_cleans_up() -> None:
    written: list[str] = []

    def write(uri: str, frame: pl.DataFrame) -> None:
        write_deltalake(uri, frame, mode="append", partition_by=["date"])
        written.append(uri)

    probe, cleanup = scratch_probe(write)
    probe(rows([GOOD, GOOD]))
    probe(rows([GOOD]))
    assert len(set(written)) == 2 and all(Path(uri).is_dir() for uri in written)
    cleanup()
    assert not any(Path(uri).exists() for uri in written)


def test_refused_rows_go_to_the_quarantine_with_their_origin(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    _, refused = split_writable(rows([GOOD, "0001-01-01T00:00:00+01:00"]))
    path = quarantine_unwritable(home, refused)
    assert path.parent == home.quarantine and path.name.startswith("compaction-")
    [record] = list(iter_quarantine(home.quarantine))
    assert (record["source"], record["offset"], record["reason"]) == (
        "a.jsonl", 100, "ts_out_of_range")


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00"])
def test_the_edges_of_the_range_are_kept(stamp: str) -> None:
    kept, refused = split_writable(rows([stamp]))
    assert refused == [] and kept.height == 1
    assert kept["ts"].cast(pl.String)[0].startswith(stamp[:4])
