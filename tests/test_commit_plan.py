"""pipeline.commit_plan: stage files counted and cut into commits."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from pipeline.commit_plan import Budget, chunks, count_rows, file_rows, highest_batches
from pipeline.ledger import app_id
from pipeline.stage import BatchId


@given(st.lists(st.integers(0, 50), max_size=30), st.integers(1, 120))
def test_files_are_cut_in_order_into_commits_of_about_the_budget(rows: list[int],
                                                                 per_commit: int) -> None:
    files = [(BatchId("s", n + 1), Path(f"f{n}")) for n in range(len(rows))]
    budget = Budget({path: count for (_, path), count in zip(files, rows, strict=True)},
                    per_commit)
    cut = chunks(files, budget)
    assert [f for chunk in cut for f in chunk] == files
    sizes = [sum(budget.rows[p] for _, p in chunk) for chunk in cut]
    assert all(size >= per_commit for size in sizes[:-1])  # every commit but the last is full
    # ... and none takes a file more than it needs.
    assert all(size - budget.rows[chunk[-1][1]] < per_commit
               for size, chunk in zip(sizes, cut, strict=True))


def test_each_stream_records_its_highest_batch_under_the_hosts_app_id() -> None:
    files = [(BatchId("aa", 3), Path("x")), (BatchId("aa", 7), Path("y")),
             (BatchId("bb", 2), Path("z"))]
    assert highest_batches(files, "h1") == {app_id("aa", "h1"): 7, app_id("bb", "h1"): 2}


def test_rows_are_read_from_the_files_and_vanished_files_leave_the_plan(tmp_path: Path) -> None:
    kept = tmp_path / "b1-s.arrow"
    pl.DataFrame({"x": range(5)}).write_ipc(kept)
    gone = tmp_path / "b2-s.arrow"
    plan = {"t": [(BatchId("s", 1), kept), (BatchId("s", 2), gone)]}
    restaged: list[object] = []
    assert count_rows(None, plan, restaged) == {kept: 5}  # type: ignore[arg-type]
    assert plan == {"t": [(BatchId("s", 1), kept)]} and restaged == []
    assert file_rows(kept) == 5
