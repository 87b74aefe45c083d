"""pipeline.stage: batch file bookkeeping (watermark, orphans), atomic writes and quarantine
records."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import pipeline.stage as stage
from pipeline.checkpoint import Watermark
from pipeline.events import Rejection
from pipeline.intake import quarantine_record
from pipeline.stage import (
    BatchId,
    batch_files,
    batch_id,
    batch_name,
    iter_quarantine,
    part_path,
    remove_orphans,
    write_atomic,
    write_quarantine,
)

STREAM = "0123456789abcdef"
OTHER = "fedcba9876543210"

# --------------------------------------------------------------------------------------------
# batch files, orphans, atomic writes
# --------------------------------------------------------------------------------------------

def test_batch_names_round_trip() -> None:
    assert batch_name(BatchId(STREAM, 42), "arrow") == f"b000000000042-{STREAM}.arrow"
    assert batch_name(BatchId("", 42), "arrow") == "b000000000042.arrow"  # a legacy home's
    for batch in (BatchId(STREAM, 42), BatchId("", 42)):
        assert batch_id(Path(batch_name(batch, "jsonl"))) == batch
    for name in ("b42.arrow", "b000000000042.parquet", ".b000000000042.arrow.tmp",
                 "xb000000000042.arrow", "b000000000042.arrow.bak",
                 f"b000000000042-{STREAM.upper()}.arrow", "b000000000042-.arrow"):
        assert batch_id(Path(name)) is None, name


def _touch_batches(directory: Path, suffix: str, batches: range, stream: str = STREAM) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        (directory / batch_name(BatchId(stream, batch), suffix)).write_bytes(b"x")


def _numbers(found: list[tuple[BatchId, Path]], stream: str = STREAM) -> list[int]:
    return [b.number for b, _ in found if b.stream == stream]


def test_batch_files_filters_and_sorts(tmp_path: Path) -> None:
    _touch_batches(tmp_path, "arrow", range(1, 6))
    _touch_batches(tmp_path, "arrow", range(7, 9), stream=OTHER)
    (tmp_path / "notes.arrow").write_bytes(b"")
    (tmp_path / batch_name(BatchId(STREAM, 9), "jsonl")).write_bytes(b"")
    everything = batch_files(tmp_path, "arrow")
    assert [b for b, _ in everything] == (
        [BatchId(STREAM, n) for n in range(1, 6)] + [BatchId(OTHER, n) for n in (7, 8)])
    assert all(path.name == batch_name(b, "arrow") for b, path in everything)
    committed = batch_files(tmp_path, "arrow", Watermark(STREAM, 3))
    assert _numbers(committed) == [1, 2, 3]
    # the batches of another stream were committed under a checkpoint since replaced
    assert _numbers(committed, OTHER) == [7, 8]
    assert _numbers(batch_files(tmp_path, "arrow", Watermark(OTHER, 7)), OTHER) == [7]
    assert batch_files(tmp_path / "missing", "arrow") == []


def test_remove_orphans_only_touches_files_above_the_watermark(tmp_path: Path) -> None:
    usage, quarantine = tmp_path / "stage" / "agent_token_usage", tmp_path / "quarantine"
    _touch_batches(usage, "arrow", range(1, 7))
    _touch_batches(quarantine, "jsonl", range(1, 7))
    keep = [usage / "README", usage / "b1.arrow", quarantine / "notes.jsonl",
            usage / batch_name(BatchId(OTHER, 9), "arrow"),  # committed in an earlier stream
            quarantine / batch_name(BatchId("", 9), "jsonl")]
    for path in keep:
        path.write_bytes(b"keep")
    temps = [usage / f".{batch_name(BatchId(STREAM, 7), 'arrow')}.tmp",
             quarantine / f".{batch_name(BatchId(STREAM, 2), 'jsonl')}.tmp",
             usage / ".part-4242-3.tmp"]  # a worker's part, never renamed into a batch
    for path in temps:
        path.write_bytes(b"partial")
    watermark = Watermark(STREAM, 4)
    removed = remove_orphans([usage, quarantine, tmp_path / "stage" / "absent"], watermark)
    assert sorted(p.name for p in removed) == sorted(
        [batch_name(BatchId(STREAM, b), "arrow") for b in (5, 6)]
        + [batch_name(BatchId(STREAM, b), "jsonl") for b in (5, 6)])
    assert _numbers(batch_files(usage, "arrow")) == [1, 2, 3, 4]
    assert _numbers(batch_files(quarantine, "jsonl")) == [1, 2, 3, 4]
    assert all(path.exists() for path in keep)
    assert not any(path.exists() for path in temps)
    assert remove_orphans([usage, quarantine], watermark) == []


def test_a_stage_part_is_a_temp_file_no_reader_sees(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    part = part_path(stage, "metric", "77-0")
    assert part == stage / "metric" / ".part-77-0.tmp" and part.parent.is_dir()
    part.write_bytes(b"arrow bytes")
    assert batch_files(stage / "metric", "arrow") == []
    assert remove_orphans([stage / "metric"], Watermark(STREAM, 0)) == []
    assert not part.exists()


def test_write_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.bin"
    write_atomic(target, lambda handle: handle.write(b"one"))
    write_atomic(target, lambda handle: handle.write(b"two"))
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_write_atomic_failure_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    write_atomic(target, lambda handle: handle.write(b"committed"))

    def half_then_fail(handle: Any) -> None:
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"committed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_write_atomic_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"")  # os.replace cannot put a file over this directory
    with pytest.raises(OSError):
        write_atomic(target, lambda handle: handle.write(b"x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_write_atomic_fsyncs_before_the_rename(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(stage.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(stage.os, "replace",
                        lambda a, b: (calls.append("replace"), real_replace(a, b)))
    write_atomic(tmp_path / "f", lambda handle: handle.write(b"x"))
    assert calls == ["fsync", "replace"]


# --------------------------------------------------------------------------------------------
# quarantine records
# --------------------------------------------------------------------------------------------

REJECTION = Rejection("invalid_json", "bad", pointer="/x")


def test_quarantine_batches_round_trip(tmp_path: Path) -> None:
    records = [quarantine_record("a.jsonl", i, b"bad", REJECTION) for i in range(3)]
    write_quarantine(tmp_path, BatchId(STREAM, 1), records[:2])
    write_quarantine(tmp_path, BatchId(STREAM, 2), records[2:])
    assert list(iter_quarantine(tmp_path)) == records
    assert list(iter_quarantine(tmp_path, Watermark(STREAM, 1))) == records[:2]
    assert not list(tmp_path.glob(".*.tmp"))
