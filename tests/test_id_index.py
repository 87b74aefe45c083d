"""pipeline.id_index: the local index of a table's id hashes only ever narrows; whatever
state it is in (new, behind, torn, of another table, unwritable), what it answers holds
every hash the table holds, with its date."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson
import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from pipeline import id_index
from pipeline.dedupe import ID_HASH
from pipeline.id_index import MANIFEST, lake_hashes


def append(table: Path, hashes: list[int], day: date) -> DeltaTable:
    """Append rows with these hashes on `day` to the table; the table, opened."""
    rows = pl.DataFrame({"event_id": [str(h) for h in hashes], ID_HASH: hashes,
                         "date": [day] * len(hashes)},
                        schema={"event_id": pl.String, ID_HASH: pl.Int64, "date": pl.Date})
    write_deltalake(str(table), rows, mode="append", partition_by=["date"])
    return DeltaTable(str(table))


def answer(index: Path, table: Path) -> set[tuple[int, date]]:
    found = lake_hashes(index, DeltaTable(str(table)), table).collect()
    assert found.columns == [ID_HASH, "date"]
    return set(found.iter_rows())


def table_rows(table: Path) -> set[tuple[int, date]]:
    return set(pl.scan_delta(str(table)).select(ID_HASH, "date").collect().iter_rows())


def test_the_first_answer_reads_the_table_and_later_ones_only_its_new_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table, index = tmp_path / "lake" / "t", tmp_path / "index"
    append(table, [1, 2], date(2026, 1, 1))
    append(table, [3], date(2026, 1, 2))
    assert answer(index, table) == table_rows(table)
    read: list[int] = []
    real = id_index._read_hashes
    monkeypatch.setattr(id_index, "_read_hashes",
                        lambda root, paths, dates: read.append(len(paths)) or real(
                            root, paths, dates))
    assert answer(index, table) == table_rows(table)
    append(table, [4, 5], date(2026, 3, 1))
    assert answer(index, table) == table_rows(table) | {(4, date(2026, 3, 1))}
    assert read == [0, 1]  # nothing new, then the one file the append added


def test_rows_since_deleted_may_stay_but_nothing_the_table_holds_is_missing(
        tmp_path: Path) -> None:
    table, index = tmp_path / "t", tmp_path / "index"
    append(table, [1, 2], date(2026, 1, 1))
    answer(index, table)
    DeltaTable(str(table)).delete(f"{ID_HASH} = 1")
    append(table, [1], date(2026, 2, 1))  # the same id again, on another day
    held = answer(index, table)
    assert table_rows(table) <= held
    assert (1, date(2026, 2, 1)) in held


@pytest.mark.parametrize("damage", ["manifest garbage", "segment truncated", "segment gone",
                                    "another table"])
def test_a_damaged_or_foreign_index_is_built_again(tmp_path: Path, damage: str) -> None:
    table, index = tmp_path / "t", tmp_path / "index"
    append(table, [1, 2], date(2026, 1, 1))
    answer(index, table)
    manifest = orjson.loads((index / MANIFEST).read_bytes())
    segment = index / manifest["segments"][0]
    if damage == "manifest garbage":
        (index / MANIFEST).write_bytes(b"{\"table_id\": ")
    elif damage == "segment truncated":
        segment.write_bytes(segment.read_bytes()[:40])
    elif damage == "segment gone":
        segment.unlink()
    else:  # the index of a table once at this path, whose hashes are not this one's
        manifest["table_id"] = "another"
        (index / MANIFEST).write_bytes(orjson.dumps(manifest))
        pl.DataFrame({ID_HASH: [999], "date": [date(2026, 1, 1)]}).write_ipc(segment)
    assert answer(index, table) == table_rows(table)


def test_an_index_built_anew_holds_no_hash_of_a_removed_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table, index = tmp_path / "t", tmp_path / "index"
    append(table, [1, 2], date(2026, 1, 1))
    answer(index, table)
    DeltaTable(str(table)).delete(f"{ID_HASH} = 1")
    assert (1, date(2026, 1, 1)) in answer(index, table)  # narrowing: a stale hash stays
    monkeypatch.setattr(id_index, "MERGE_AT", 1)
    assert answer(index, table) == table_rows(table) == {(2, date(2026, 1, 1))}


def test_segments_are_merged_into_one_past_the_limit(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(id_index, "MERGE_AT", 3)
    table, index = tmp_path / "t", tmp_path / "index"
    for day in range(1, 6):
        append(table, [day, 100 + day], date(2026, 1, day))
        assert answer(index, table) == table_rows(table)
    segments = orjson.loads((index / MANIFEST).read_bytes())["segments"]
    assert len(segments) <= 3
    assert sorted(p.name for p in index.iterdir()) == sorted([MANIFEST, *segments])


def test_an_index_that_cannot_be_written_still_answers(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    table, index = tmp_path / "t", tmp_path / "index"
    append(table, [1], date(2026, 1, 1))
    answer(index, table)
    append(table, [2], date(2026, 1, 2))

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(id_index, "_write_segment", full)
    assert answer(index, table) == table_rows(table)


def test_files_of_older_and_newer_schemas_are_read_together(tmp_path: Path) -> None:
    table, index = tmp_path / "t", tmp_path / "index"
    append(table, [1], date(2026, 1, 1))
    wider = pl.DataFrame({"event_id": ["2"], ID_HASH: [2], "date": [date(2026, 1, 2)],
                          "added_later": ["x"]})
    write_deltalake(str(table), wider, mode="append", partition_by=["date"],
                    schema_mode="merge")
    assert answer(index, table) == table_rows(table) == {(1, date(2026, 1, 1)),
                                                         (2, date(2026, 1, 2))}

