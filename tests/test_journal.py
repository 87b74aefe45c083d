"""pipeline.journal: each batch's log ranges read back as written, the last line of a
batch number winning, torn lines skipped, segments pruned once their batches are gone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import event_line

import pipeline.journal as journal
from pipeline.config import Home
from pipeline.journal import JournalWriter, Range, batch_ranges, prune, segments
from pipeline.stage import BatchId
from pipeline.tailer import Tailer


def ranges(n: int) -> list[Range]:
    return [Range(f"fp{n}", "a.jsonl", n * 100, n * 100 + 100, n), Range(
        "other@1:2", "sub/b.jsonl", 0, n, None)]


def test_ranges_read_back_as_written(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, "aa")
    for n in range(1, 4):
        writer.append(BatchId("aa", n), ranges(n))
    writer.close()
    assert batch_ranges(tmp_path, BatchId("aa", 2)) == ranges(2)
    assert batch_ranges(tmp_path, BatchId("aa", 9)) is None
    assert batch_ranges(tmp_path, BatchId("bb", 2)) is None


def test_a_batch_written_again_after_a_crash_reads_as_its_last_line(tmp_path: Path) -> None:
    first = JournalWriter(tmp_path, "aa")
    first.append(BatchId("aa", 1), ranges(1))
    first.append(BatchId("aa", 2), ranges(2))  # never committed: the tailer died
    first.close()
    second = JournalWriter(tmp_path, "aa")  # the next tailer reads batch 2 again
    again = [Range("fp2", "a.jsonl", 200, 250, 7)]
    second.append(BatchId("aa", 2), again)
    second.close()
    assert batch_ranges(tmp_path, BatchId("aa", 2)) == again


def test_a_torn_line_loses_no_other_batch(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, "aa")
    writer.append(BatchId("aa", 1), ranges(1))
    [(_, _, path)] = segments(tmp_path)
    with open(path, "ab") as handle:
        handle.write(b'{"batch": 2, "ran')  # a full disk cut this write short
    writer.append(BatchId("aa", 3), ranges(3))
    writer.close()
    assert batch_ranges(tmp_path, BatchId("aa", 1)) == ranges(1)
    assert batch_ranges(tmp_path, BatchId("aa", 3)) == ranges(3)
    assert batch_ranges(tmp_path, BatchId("aa", 2)) is None


def test_paths_that_are_not_utf8_survive(tmp_path: Path) -> None:
    odd = os.fsdecode(b"bad\xff.jsonl")
    writer = JournalWriter(tmp_path, "aa")
    writer.append(BatchId("aa", 1), [Range("fp", odd, 0, 10, 1)])
    writer.close()
    assert batch_ranges(tmp_path, BatchId("aa", 1)) == [Range("fp", odd, 0, 10, 1)]


def test_segments_rotate_and_are_pruned_once_their_batches_left_the_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "SEGMENT_BATCHES", 3)
    old = JournalWriter(tmp_path, "0d")
    old.append(BatchId("0d", 1), ranges(1))
    old.close()
    writer = JournalWriter(tmp_path, "aa")
    for n in range(1, 8):
        writer.append(BatchId("aa", n), ranges(n))
    assert [(s, first) for s, first, _ in segments(tmp_path)] == [
        ("0d", 1), ("aa", 1), ("aa", 4), ("aa", 7)]
    # Batches 5 and 6 are still staged; the newest segment (7) is being appended to.
    assert prune(tmp_path, {BatchId("aa", 5), BatchId("aa", 6)}, current="aa") == 2
    assert [(s, first) for s, first, _ in segments(tmp_path)] == [("aa", 4), ("aa", 7)]
    writer.append(BatchId("aa", 8), ranges(8))  # still open: its appends are not lost
    writer.close()
    assert batch_ranges(tmp_path, BatchId("aa", 8)) == ranges(8)
    assert batch_ranges(tmp_path, BatchId("aa", 1)) is None


def test_the_tailer_journals_what_each_batch_read(tmp_path: Path) -> None:
    from conftest import make_home

    home: Home = make_home(tmp_path / "home", "[tailer]\nbatch_lines = 2\n")
    lines = [event_line() for _ in range(5)]
    (home.logs / "a.jsonl").write_bytes(b"".join(lines))
    with Tailer(home) as tailer:
        tailer.poll()
        stream, identity = tailer.checkpoint.stream, next(iter(tailer.checkpoint.files))
    ends = [len(b"".join(lines[:n])) for n in (2, 4, 5)]
    for number, (start, end) in enumerate(zip([0, *ends], ends, strict=False), start=1):
        [logged] = batch_ranges(home.state, BatchId(stream, number)) or []
        assert (logged.identity, logged.path, logged.start, logged.end) == (
            identity, "a.jsonl", start, end)
