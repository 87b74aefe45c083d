"""pipeline.maintenance: native stderr held back on failure, files of writes that never
committed removed (and nothing else), vacuum counting the files it really deleted, small
files merged past a threshold (and nothing else), and the deltalake pin."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.table import TableOptimizer
from deltalake.transaction import CommitProperties, Transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import Home
from pipeline.errors import LakeError
from pipeline.maintenance import (
    RUN_MARKER,
    is_storage_refusal,
    killed_writes_removed,
    last_commit_ns,
    optimize_lake,
    optimize_small_files,
    panic_summary,
    remove_uncommitted_files,
    vacuum_lake,
)
from pipeline.storage import Location

PANIC = """thread 'tokio-rt-worker' (1208) panicked at /cargo/object_store-0.13.2/src/buffered.rs:369:41:
called `Result::unwrap()` on an `Err` value: Generic { store: "LocalFileSystem", source: UnableToCopyDataToFile { source: Os { code: 28, kind: StorageFull, message: "No space left on device" } } }
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace
"""  # noqa: E501  (as delta-rs prints it)


def test_the_panic_summary_is_the_line_that_says_what_went_wrong() -> None:
    assert "No space left on device" in panic_summary(PANIC)
    assert panic_summary("thread 'main' panicked at x.rs:1:1:\nindex out of bounds\n") == (
        "index out of bounds")
    assert is_storage_refusal(RuntimeError("boom"), panic_summary(PANIC))
    assert not is_storage_refusal(RuntimeError("schema mismatch"), "index out of bounds")
    assert is_storage_refusal(OSError(28, "No space left on device"), "")


def table_with_commits(path: Path, commits: int) -> DeltaTable:
    for i in range(commits):
        write_deltalake(str(path), pa.table({"x": [i, i + 1], "date": ["2025-01-01"] * 2}),
                        mode="append", partition_by=["date"])
    return DeltaTable(str(path))


def stray(table_dir: Path, name: str, age_seconds: float = 0.0) -> Path:
    """A Parquet file no commit references, as a killed or failed write leaves."""
    source = next(table_dir.rglob("*.parquet"))
    target = source.parent / name
    shutil.copyfile(source, target)
    if age_seconds:
        then = time.time() - age_seconds
        os.utime(target, (then, then))
    return target


def test_files_newer_than_the_last_commit_and_unreferenced_are_removed(tmp_path: Path) -> None:
    table = table_with_commits(tmp_path / "t", 3)
    referenced = {Path(uri.removeprefix("file://")) for uri in table.file_uris()}
    fresh = stray(tmp_path / "t", "part-killed.parquet")
    old = stray(tmp_path / "t", "part-old.parquet", age_seconds=3600)  # vacuum's business
    assert remove_uncommitted_files(tmp_path / "t", last_commit_ns(table)) == 1
    assert not fresh.exists() and old.exists()
    assert all(path.exists() for path in referenced)
    assert DeltaTable(str(tmp_path / "t")).to_pyarrow_table().num_rows == 6


def test_every_table_of_a_home_is_cleaned_of_killed_writes(home: Home) -> None:
    for name in ("agent_token_usage", "tool_call"):
        table_with_commits(home.lake / name, 2)
        stray(home.lake / name, "part-killed.parquet")
    tables = [Location.local(home.lake / name) for name in ("agent_token_usage", "tool_call")]
    with killed_writes_removed(home, tables) as removed:  # the run before finished
        assert removed == 0
    (home.state / RUN_MARKER).touch()  # the run before was killed
    with killed_writes_removed(home, tables) as removed:
        assert removed == 2
    assert not (home.state / RUN_MARKER).exists()


def test_vacuum_counts_only_files_it_deleted(home: Home) -> None:
    table_with_commits(home.lake / "agent_token_usage", 4)
    assert vacuum_lake(home, retention_hours=0) == {"agent_token_usage": 0}
    assert optimize_lake(home) == {"agent_token_usage": 4}
    replaced = [p for p in (home.lake / "agent_token_usage").rglob("*.parquet")]
    replaced.sort(key=lambda p: p.stat().st_mtime_ns)
    replaced[0].unlink()  # one of the four replaced files is gone already
    assert vacuum_lake(home, retention_hours=0) == {"agent_token_usage": 3}
    assert vacuum_lake(home, retention_hours=0) == {"agent_token_usage": 0}
    assert len(list((home.lake / "agent_token_usage").rglob("*.parquet"))) == 1


def test_a_stale_optimize_is_rejected_and_rows_are_not_doubled(tmp_path: Path) -> None:
    # deltalake 1.6.6 commits the second optimize too: every row twice (hence the pin)
    table_with_commits(tmp_path / "t", 4)
    first, stale = DeltaTable(str(tmp_path / "t")), DeltaTable(str(tmp_path / "t"))
    assert first.optimize.compact()["numFilesRemoved"] == 4
    with pytest.raises(CommitFailedError):
        stale.optimize.compact()
    table = DeltaTable(str(tmp_path / "t"))
    assert (table.version(), pl.read_delta(str(tmp_path / "t")).height) == (4, 8)


def test_a_stale_optimize_of_small_files_merges_nothing_and_leaves_no_files(
        tmp_path: Path) -> None:
    table_with_commits(tmp_path / "t", 4)
    first, stale = DeltaTable(str(tmp_path / "t")), DeltaTable(str(tmp_path / "t"))
    assert optimize_small_files(first, max_files=2, target_bytes=1 << 20) == 4
    # Another host merged them first: nothing to do, as a later run would find.
    assert optimize_small_files(stale, max_files=2, target_bytes=1 << 20) == 0
    assert pl.read_delta(str(tmp_path / "t")).height == 8
    assert len(list((tmp_path / "t").rglob("*.parquet"))) == 5  # the stale merge's are gone


def test_a_failed_optimize_leaves_no_files_behind(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    table = table_with_commits(tmp_path / "t", 4)

    def fails_after_writing(*args: object, **kwargs: object) -> None:
        stray(tmp_path / "t", "part-merged.parquet")
        raise DeltaError("Generic error: No space left on device (os error 28)")

    monkeypatch.setattr(TableOptimizer, "compact", fails_after_writing)
    with pytest.raises(LakeError, match="No space left on device"):
        optimize_small_files(table, 2, 1 << 20)
    assert not list((tmp_path / "t").rglob("part-merged.parquet"))
    assert len(list((tmp_path / "t").rglob("*.parquet"))) == 4


# What tally does with a table in one process: write, merge small files, read with Polars
# (as `scan_events` does) and with pyarrow over a native file system.
WRITE_READ_AND_EXIT = """
import sys
import polars as pl
import pyarrow as pa
import pyarrow.fs as fs
from deltalake import DeltaTable, write_deltalake
from pipeline.maintenance import optimize_small_files
path = sys.argv[1]
for day in range(1, 6):
    write_deltalake(path, pa.table({"x": list(range(1000)), "date": [f"2025-01-0{day}"] * 1000}),
                    mode="append", partition_by=["date"])
table = DeltaTable(path)
optimize_small_files(table, 1, 1 << 20)
local = fs.SubTreeFileSystem(path, fs.LocalFileSystem())
print(pl.read_delta(path).height, pl.scan_delta(path).select(pl.len()).collect().item(),
      table.to_pyarrow_table(filesystem=local).num_rows,
      table.to_pyarrow_dataset(filesystem=local).count_rows())
"""


def test_a_process_that_wrote_and_read_a_table_exits_cleanly(tmp_path: Path) -> None:
    # A pyarrow dataset over deltalake's own file system (`to_pyarrow_table()` or
    # `to_pyarrow_dataset()` without `filesystem=`) can abort the process at exit with 134,
    # "terminate called without an active exception" (delta-rs #2184): a few runs in a
    # hundred on a busy machine, with deltalake 1.6.3 as with 1.6.6. These reads do not.
    for run in range(1, 4):
        done = subprocess.run([sys.executable, "-c", WRITE_READ_AND_EXIT, str(tmp_path / "t")],
                              capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout.split() == [str(run * 5000)] * 4


# ---------------------------------------------------------------- small files merged


def appended(path: Path, files: dict[str, int], app: str = "tally-stage-s1") -> DeltaTable:
    """A table partitioned by date where day d got one small file in each of the first
    files[d] commits; commit n records Transaction(app, n)."""
    for n in range(1, max(files.values()) + 1):
        days = [day for day, count in files.items() if count >= n]
        rows = pa.table({"x": [n * 100 + i for i in range(len(days))],
                         "date": pa.array([date.fromisoformat(d) for d in days], pa.date32())})
        write_deltalake(str(path), rows, mode="append", partition_by=["date"],
                        commit_properties=CommitProperties(
                            app_transactions=[Transaction(app, n)]))
    return DeltaTable(str(path))


def files_by_day(table: DeltaTable) -> dict[str, set[str]]:
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    days: dict[str, set[str]] = {}
    for action in actions:
        days.setdefault(str(action["partition.date"]), set()).add(action["path"])
    return days


def rows(table: DeltaTable) -> pl.DataFrame:
    return pl.read_delta(table.table_uri).sort("x")


def test_partitions_past_the_threshold_are_merged_and_no_other(tmp_path: Path) -> None:
    table = appended(tmp_path / "t", {"2025-01-01": 40, "2025-01-02": 40, "2025-01-03": 16})
    before, files = rows(table), files_by_day(table)
    assert optimize_small_files(table, max_files=16, target_bytes=1 << 20) == 80
    after = DeltaTable(str(tmp_path / "t"))
    assert after.version() == table.version() == 40  # one commit, the table object follows
    merged = files_by_day(after)
    assert (len(merged["2025-01-01"]), len(merged["2025-01-02"])) == (1, 1)
    assert merged["2025-01-03"] == files["2025-01-03"]  # at the threshold: untouched
    assert rows(after).equals(before)
    assert after.transaction_version("tally-stage-s1") == 40
    assert optimize_small_files(after, max_files=16, target_bytes=1 << 20) == 0
    assert DeltaTable(str(tmp_path / "t")).version() == 40  # nothing to do: no commit


def test_stream_transactions_of_every_app_stay(tmp_path: Path) -> None:
    appended(tmp_path / "t", {"2025-01-01": 3}, app="tally-stage-a")
    table = appended(tmp_path / "t", {"2025-01-01": 5}, app="tally-stage-b")
    table.create_checkpoint()  # the transactions then live in the checkpoint
    assert optimize_small_files(table, max_files=4, target_bytes=1 << 20) == 8
    after = DeltaTable(str(tmp_path / "t"))
    assert (after.transaction_version("tally-stage-a"),
            after.transaction_version("tally-stage-b")) == (3, 5)


def test_days_before_the_settled_date_are_merged_from_two_files(tmp_path: Path) -> None:
    table = appended(tmp_path / "t", {"2025-01-01": 1, "2025-01-02": 2, "2025-01-03": 3})
    files = files_by_day(table)
    settled = date(2025, 1, 3)
    assert optimize_small_files(table, 16, 1 << 20, settled_before=settled) == 2
    merged = files_by_day(DeltaTable(str(tmp_path / "t")))
    assert len(merged["2025-01-02"]) == 1
    assert merged["2025-01-01"] == files["2025-01-01"]  # one file: nothing to merge
    assert merged["2025-01-03"] == files["2025-01-03"]  # not settled, under the threshold


def test_files_of_half_the_target_or_more_do_not_count(tmp_path: Path) -> None:
    table = appended(tmp_path / "t", {"2025-01-01": 20})
    smallest = min(pa.table(table.get_add_actions(flatten=True))["size_bytes"].to_pylist())
    assert optimize_small_files(table, 16, target_bytes=2 * smallest) == 0
    assert optimize_small_files(table, 16, target_bytes=2 * smallest + 2) == 20


def test_zero_turns_it_off(tmp_path: Path) -> None:
    table = appended(tmp_path / "t", {"2025-01-01": 20})
    assert optimize_small_files(table, 0, 1 << 20, settled_before=date(2026, 1, 1)) == 0
    assert DeltaTable(str(tmp_path / "t")).version() == 19


def test_an_unpartitioned_table_is_one_partition(tmp_path: Path) -> None:
    for n in range(5):
        write_deltalake(str(tmp_path / "t"), pa.table({"x": [n]}), mode="append")
    table = DeltaTable(str(tmp_path / "t"))
    assert optimize_small_files(table, 5, 1 << 20) == 0
    assert optimize_small_files(table, 4, 1 << 20, settled_before=date(2026, 1, 1)) == 5
    assert sorted(pl.read_delta(str(tmp_path / "t"))["x"]) == [0, 1, 2, 3, 4]


def test_a_table_partitioned_by_two_columns_is_refused(tmp_path: Path) -> None:
    for n in range(3):
        write_deltalake(str(tmp_path / "t"), pa.table({"x": [n], "a": ["a"], "b": ["b"]}),
                        mode="append", partition_by=["a", "b"])
    with pytest.raises(LakeError, match="partitioned by a, b"):
        optimize_small_files(DeltaTable(str(tmp_path / "t")), 1, 1 << 20)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counts=st.lists(st.integers(1, 7), min_size=1, max_size=4), max_files=st.integers(1, 5))
def test_every_partition_ends_at_most_at_the_threshold(tmp_path: Path, counts: list[int],
                                                       max_files: int) -> None:
    path = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
    table = appended(path, {f"2025-02-{i + 1:02d}": n for i, n in enumerate(counts)})
    before, files = rows(table), files_by_day(table)
    removed = optimize_small_files(table, max_files, 1 << 20)
    after = DeltaTable(str(path))
    merged = files_by_day(after)
    assert removed == sum(n for n in counts if n > max_files)
    assert all(len(paths) <= max_files for paths in merged.values())
    assert {day: paths for day, paths in merged.items() if len(files[day]) <= max_files} == {
        day: paths for day, paths in files.items() if len(paths) <= max_files}
    assert rows(after).equals(before)
    assert after.transaction_version("tally-stage-s1") == max(counts)


def data_files(table_dir: Path) -> int:
    return sum(1 for path in table_dir.glob("date=*/*.parquet"))


KILLED_OPTIMIZE = """
import sys
from deltalake import DeltaTable
from pipeline.maintenance import optimize_small_files
optimize_small_files(DeltaTable(sys.argv[1]), 1, 1 << 20)
"""


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_an_optimize_killed_at_any_point_loses_and_doubles_nothing(tmp_path: Path,
                                                                    seed: int) -> None:
    """SIGKILL in the middle of writing merged files (even seeds), or at a random moment."""
    path = tmp_path / "t"
    table = appended(path, {f"2025-01-{day:02d}": 30 for day in range(1, 21)})
    before = rows(table)
    run = subprocess.Popen([sys.executable, "-c", KILLED_OPTIMIZE, str(path)])
    if seed % 2 == 0:
        while data_files(path) == 600 and run.poll() is None:
            time.sleep(0.001)
    else:
        time.sleep(random.Random(seed).uniform(0.0, 2.5))
    run.kill()
    run.wait()
    after = DeltaTable(str(path))
    merged = after.version() == 30
    assert after.version() in (29, 30)  # not merged yet, or merged in one commit
    assert rows(after).equals(before)
    assert after.transaction_version("tally-stage-s1") == 30
    removed = remove_uncommitted_files(path, last_commit_ns(after))  # the killed write's
    assert removed == 0 if merged else removed >= (1 if seed % 2 == 0 else 0)
    assert data_files(path) == (620 if merged else 600)  # the replaced ones stay (vacuum's)
    assert optimize_small_files(after, 1, 1 << 20) == (0 if merged else 600)
    assert len(files_by_day(DeltaTable(str(path)))) == 20
    assert rows(DeltaTable(str(path))).equals(before)
