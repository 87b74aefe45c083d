"""pipeline.maintenance: native stderr held back on failure, files of writes that never
committed removed (and nothing else), vacuum counting the files it really deleted."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from pipeline.config import Home
from pipeline.maintenance import (
    is_storage_refusal,
    last_commit_ns,
    optimize_lake,
    panic_summary,
    remove_files_of_killed_writes,
    remove_uncommitted_files,
    vacuum_lake,
)

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
    assert remove_files_of_killed_writes(home) == 2
    assert remove_files_of_killed_writes(home) == 0


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
