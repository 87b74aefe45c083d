"""pipeline.tailer: complete lines only, bad input quarantined with its location, exactly once
across restarts and crashes, rotation/deletion/truncation, symlinks and odd files, the watchdog
loop, the CLI, and a Hypothesis state machine of producers, rotators and restarts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import event_line, make_home, stderr_on_a_terminal, tally_executable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from polars.testing import assert_frame_equal

import pipeline.batches as batches_module
import pipeline.files as files_module
import pipeline.reader as reader_module
import pipeline.tailer as tailer_module
from pipeline.checkpoint import load_checkpoint, read_watermark
from pipeline.cli import main as cli_main
from pipeline.config import Home
from pipeline.errors import LockTimeout, StorageError
from pipeline.follow import follow
from pipeline.lake import scan_events
from pipeline.stage import BatchId, batch_name, iter_quarantine, staged_files
from pipeline.status import tail_status
from pipeline.tailer import Tailer
from pipeline.workers import BlockSource, StagerPool, read_block

TYPE = "agent_token_usage"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def staged_rows(home: Home, event_type: str = TYPE) -> pl.DataFrame:
    """Every committed stage row of a type, duplicates kept (no dedupe)."""
    files = [path for _, path in staged_files(home.stage, event_type, read_watermark(home.state))]
    if not files:
        return pl.DataFrame({"event_id": []}, schema={"event_id": pl.String})
    return pl.concat([pl.read_ipc(path) for path in files],
                     how="diagonal_relaxed")


def staged_ids(home: Home, event_type: str = TYPE) -> list[str]:
    return staged_rows(home, event_type)["event_id"].to_list()


def assert_staged_once(home: Home, expected: set[str]) -> None:
    ids = staged_ids(home)
    assert len(ids) == len(set(ids)), f"staged twice: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert set(ids) == expected


def quarantined(home: Home) -> list[dict[str, Any]]:
    return list(iter_quarantine(home.quarantine, read_watermark(home.state)))


def line_id(line: bytes) -> str:
    return str(orjson.loads(line)["event_id"])


def ids_of(*lines: bytes) -> set[str]:
    return {line_id(line) for line in lines}


def append(path: Path, *chunks: bytes) -> None:
    with open(path, "ab") as handle:
        for chunk in chunks:
            handle.write(chunk)


def age(path_or_fd: Path | int, seconds: float = 3600.0) -> None:
    """Move a file's mtime into the past (by path, or by descriptor for a deleted file)."""
    then = time.time() - seconds
    os.utime(path_or_fd, (then, then))


def fingerprint16(first_line: bytes) -> str:
    return hashlib.sha256(first_line).hexdigest()[:16]


@contextlib.contextmanager
def running(home: Home, **kwargs: Any) -> Iterator[Tailer]:
    tailer = Tailer(home, **kwargs)
    try:
        yield tailer
    finally:
        tailer.close()


def poll_once(home: Home, **kwargs: Any) -> tailer_module.PollResult:
    with running(home, **kwargs) as tailer:
        return tailer.poll()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
               interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def small_home(tmp_path: Path) -> Home:
    """A home whose line limit is 200 bytes and whose idle timeout is 0.2 s."""
    return make_home(tmp_path / "home", "[tailer]\nmax_line_bytes = 200\nidle_seconds = 0.2\n")


# --------------------------------------------------------------------------------------------
# 1. reading: complete lines only, long lines, CRLF
# --------------------------------------------------------------------------------------------

def test_partial_last_line_waits_for_its_newline(home: Home) -> None:
    log = home.logs / "a.jsonl"
    first, second, third = event_line(), event_line(), event_line()
    append(log, first, second, third[:25])
    with running(home) as tailer:
        assert tailer.poll().staged == 2
        assert_staged_once(home, ids_of(first, second))
        append(log, third[25:-1])  # everything but the newline
        assert tailer.poll().staged == 0
        assert load_checkpoint(home.state).files[fingerprint_of_file(log)].offset == \
            len(first) + len(second)
        append(log, b"\n")
        assert tailer.poll().staged == 1
    assert_staged_once(home, ids_of(first, second, third))
    assert quarantined(home) == []


def fingerprint_of_file(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0] + b"\n"
    return hashlib.sha256(first).hexdigest()[:32]


def test_staged_rows_carry_source_and_offset(home: Home) -> None:
    (home.logs / "sub").mkdir()
    log = home.logs / "sub" / "a.jsonl"
    lines = [event_line() for _ in range(3)]
    append(log, *lines)
    poll_once(home)
    rows = staged_rows(home).sort("_offset")
    assert rows["_source"].to_list() == [os.path.join("sub", "a.jsonl")] * 3
    assert rows["_offset"].to_list() == [0, len(lines[0]), len(lines[0]) + len(lines[1])]
    assert rows["event_id"].to_list() == [line_id(line) for line in lines]


def test_long_line_complete_in_one_read(small_home: Home) -> None:
    home = small_home
    log = home.logs / "a.jsonl"
    before, after = event_line(), event_line()
    long_line = b'{"event_type":"agent_token_usage","pad":"' + b"x" * 300 + b'"}\n'
    append(log, before, long_line, after)
    result = poll_once(home)
    assert (result.staged, result.quarantined) == (2, 1)
    assert_staged_once(home, ids_of(before, after))
    [record] = quarantined(home)
    assert record["reason"] == "line_too_long"
    assert record["source"] == "a.jsonl"
    assert record["offset"] == len(before)
    assert record["length"] == len(long_line) - 1  # the line without its newline
    assert record["excerpt"] == long_line[:-1].decode()
    # the record locates the line exactly
    raw = log.read_bytes()
    assert raw[record["offset"]:record["offset"] + record["length"]] == long_line[:-1]


def test_long_line_written_across_polls(small_home: Home) -> None:
    home = small_home
    log = home.logs / "a.jsonl"
    before, after = event_line(), event_line()
    long_line = b'{"event_type":"agent_token_usage","pad":"' + b"y" * 500 + b'"}\n'
    with running(home) as tailer:
        append(log, before, long_line[:150])  # under the limit so far
        assert (tailer.poll().staged, quarantined(home)) == (1, [])
        append(log, long_line[150:400])  # now over the limit, still no newline
        result = tailer.poll()
        assert (result.staged, result.quarantined) == (0, 0)
        append(log, long_line[400:], after[:10])
        result = tailer.poll()
        assert (result.staged, result.quarantined) == (0, 1)
        append(log, after[10:])
        assert tailer.poll().staged == 1
    assert_staged_once(home, ids_of(before, after))
    [record] = quarantined(home)
    assert (record["reason"], record["offset"], record["length"]) == \
        ("line_too_long", len(before), len(long_line) - 1)
    assert record["excerpt_truncated"] is False


def test_long_line_bigger_than_a_read_chunk(small_home: Home) -> None:
    home = small_home
    log = home.logs / "a.jsonl"
    before, after = event_line(), event_line()
    size = reader_module.READ_CHUNK + 1000
    with running(home) as tailer:
        append(log, before, b"z" * size)
        assert (tailer.poll().staged, quarantined(home)) == (1, [])
        append(log, b"\n", after)
        result = tailer.poll()
    assert (result.staged, result.quarantined) == (1, 1)
    assert_staged_once(home, ids_of(before, after))
    [record] = quarantined(home)
    assert (record["reason"], record["offset"], record["length"]) == \
        ("line_too_long", len(before), size)
    assert record["excerpt"] == "z" * 1024
    assert record["excerpt_truncated"] is True


def test_crlf_line_endings(home: Home) -> None:
    log = home.logs / "win.jsonl"
    lines = [event_line()[:-1] + b"\r\n" for _ in range(3)]
    append(log, *lines)
    assert poll_once(home).staged == 3
    assert_staged_once(home, {line_id(line) for line in lines})
    assert staged_rows(home).sort("_offset")["_offset"].to_list() == \
        [0, len(lines[0]), 2 * len(lines[0])]


# --------------------------------------------------------------------------------------------
# 2. bad input: every case of guarantee 4, each quarantined with its location
# --------------------------------------------------------------------------------------------

def _valid_prefix() -> bytes:
    return b'{"event_type":"agent_token_usage","ts":"2025-03-01T12:00:00Z","agent":"claude"'


BAD_LINES: dict[str, tuple[bytes, str]] = {
    "invalid_json": (b'{"event_type": "agent_token_usage", oops}', "invalid_json"),
    "schema_violation": (_valid_prefix() + b',"input_tokens":-5}', "schema_violation"),
    "unknown_type": (b'{"event_type":"no_such_type","ts":"2025-03-01T12:00:00Z","agent":"a"}',
                     "unknown_event_type"),
    "over_size": (_valid_prefix() + b',"request_id":"' + b"r" * 20000 + b'"}', "line_too_long"),
    "invalid_utf8": (_valid_prefix() + b',"request_id":"caf\xe9 \xff"}', "invalid_utf8"),
    "nul_byte": (_valid_prefix() + b',"request_id":"a\x00b"}', "nul_byte"),
    "deep_nesting": (_valid_prefix() + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}", "too_deep"),
    "huge_number": (_valid_prefix() + b',"input_tokens":' + b"9" * 5000 + b"}",
                    "number_too_large"),
    "bom": (b"\xef\xbb\xbf" + _valid_prefix() + b"}", "bom"),
    "empty_line": (b"", "empty_line"),
    "blank_line": (b"   \t", "empty_line"),
    "not_an_object": (b"[1, 2, 3]", "not_object"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_input_is_quarantined_and_reading_goes_on(tmp_path: Path, case: str) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nmax_line_bytes = 16384\n")
    bad, reason = BAD_LINES[case]
    before, after = event_line(), event_line()
    log = home.logs / "mixed.jsonl"
    append(log, before, bad + b"\n", after)
    started = datetime.now().astimezone()
    result = poll_once(home)
    assert (result.staged, result.quarantined) == (2, 1)
    assert_staged_once(home, ids_of(before, after))
    [record] = quarantined(home)
    assert record["reason"] == reason
    assert record["source"] == "mixed.jsonl"
    assert record["offset"] == len(before)
    assert record["length"] == len(bad)
    assert log.read_bytes()[record["offset"]:record["offset"] + record["length"]] == bad
    excerpt = record["excerpt"]
    assert isinstance(excerpt, str) and "\x00" not in excerpt
    assert record["excerpt_truncated"] is (len(bad) > 1024)
    head = bad[:1024]
    if head.isascii() and b"\x00" not in head:
        assert excerpt == head.decode()
    assert len(excerpt) <= 4 * 1024  # escaping at most quadruples the 1024-byte cap
    if case == "invalid_utf8":
        assert "\\xff" in excerpt and "\\xe9" in excerpt
    if case == "nul_byte":
        assert "\\x00" in excerpt
    detected = datetime.fromisoformat(record["detected_at"])
    assert detected.tzinfo is not None and detected >= started.replace(microsecond=0)
    assert load_checkpoint(home.state).quarantined == 1


def test_many_bad_lines_in_a_row_do_not_stop_ingestion(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nmax_line_bytes = 16384\n")
    good = [event_line() for _ in range(len(BAD_LINES) + 1)]
    log = home.logs / "mixed.jsonl"
    chunks: list[bytes] = []
    for index, (bad, _reason) in enumerate(BAD_LINES.values()):
        chunks += [good[index], bad + b"\n"]
    chunks.append(good[-1])
    append(log, *chunks)
    result = poll_once(home)
    assert (result.staged, result.quarantined) == (len(good), len(BAD_LINES))
    assert_staged_once(home, ids_of(*good))
    records = sorted(quarantined(home), key=lambda r: r["offset"])
    assert [r["reason"] for r in records] == [reason for _bad, reason in BAD_LINES.values()]
    raw = log.read_bytes()
    for record, (bad, _reason) in zip(records, BAD_LINES.values(), strict=True):
        assert raw[record["offset"]:record["offset"] + record["length"]] == bad


def test_unstageable_row_is_quarantined_and_the_batch_still_staged(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.frames import FrameBuilder

    real_build = FrameBuilder.from_converted

    def build(self: FrameBuilder, rows: list[dict[str, Any]], sources: list[str],
              offsets: list[int]) -> pl.DataFrame:
        if any(row.get("agent") == "poison" for row in rows):
            raise ValueError("cannot type this row")
        return real_build(self, rows, sources, offsets)

    monkeypatch.setattr(FrameBuilder, "from_converted", build)
    good = [event_line(), event_line()]
    poison = event_line(agent="poison")
    append(home.logs / "a.jsonl", good[0], poison, good[1])
    result = poll_once(home)
    assert (result.staged, result.quarantined) == (2, 1)
    assert_staged_once(home, ids_of(*good))
    [record] = quarantined(home)
    assert (record["reason"], record["source"], record["offset"]) == \
        ("unstageable", "a.jsonl", len(good[0]))
    assert "cannot type this row" in record["message"]


def test_big_integer_in_metric_data_keeps_its_digits_through_the_tailer(home: Home) -> None:
    big = 123456789012345678901234567890
    line = (b'{"event_type":"metric","ts":"2025-03-01T12:00:00Z","agent":"a","name":"n",'
            b'"event_id":"big-1","data":{"big":' + str(big).encode() + b'}}\n')
    append(home.logs / "m.jsonl", line)
    assert poll_once(home).staged == 1
    [text] = staged_rows(home, "metric")["data"].to_list()
    assert json.loads(text) == {"big": big}


# --------------------------------------------------------------------------------------------
# 3. exactly once across restarts and crashes
# --------------------------------------------------------------------------------------------

def test_restart_stages_nothing_twice(home: Home) -> None:
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(5)]
    append(log, *first)
    assert poll_once(home).staged == 5
    assert poll_once(home).staged == 0
    second = [event_line() for _ in range(3)]
    append(log, *second)
    assert poll_once(home).staged == 3
    assert poll_once(home).staged == 0
    assert_staged_once(home, ids_of(*first, *second))
    frame = scan_events(home, TYPE)
    assert frame is not None
    assert frame.select(pl.len()).collect().item() == 8


def test_batches_split_by_batch_lines(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nbatch_lines = 10\n")
    lines = [event_line() for _ in range(35)]
    append(home.logs / "a.jsonl", *lines)
    result = poll_once(home)
    assert result.staged == 35 and result.batches >= 4
    assert load_checkpoint(home.state).batch == result.batches
    assert_staged_once(home, ids_of(*lines))


@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=60),
       room=st.integers(1, 80), line_bytes=st.integers(1, 2000),
       partial=st.binary(max_size=50).filter(lambda tail: b"\n" not in tail))
def test_cut_lines_ends_after_exactly_room_lines(lengths: list[int], room: int,
                                                 line_bytes: int, partial: bytes) -> None:
    lines = [b"x" * length + b"\n" for length in lengths]
    chunk = b"".join(lines) + partial  # a partial line past `end` is never counted
    end = len(chunk) - len(partial)
    cut, count = reader_module.cut_lines(chunk, end, room, line_bytes)
    taken = min(room, len(lines))
    assert count == taken
    assert cut == sum(map(len, lines[:taken]))


def test_poll_reports_bytes_committed_after_each_batch(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nbatch_lines = 10\n")
    lines = [event_line() for _ in range(35)]
    partial = b'{"event_type": "agent_tok'
    append(home.logs / "a.jsonl", *lines[:20], b"not json\n")
    append(home.logs / "b.jsonl", *lines[20:], partial)
    seen: list[tuple[int, int]] = []
    with Tailer(home) as tailer:
        result = tailer.poll(progress=lambda done, total: seen.append((done, total)))
    complete = sum(map(len, lines)) + len(b"not json\n")
    assert len(seen) == result.batches >= 4
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == result.bytes == complete
    assert {total for _, total in seen} == {complete + len(partial)}  # the partial line waits


def test_orphan_batches_above_the_watermark_are_deleted(home: Home) -> None:
    lines = [event_line() for _ in range(4)]
    append(home.logs / "a.jsonl", *lines)
    poll_once(home)
    stream, batch = load_checkpoint(home.state).watermark
    committed = home.stage / TYPE / batch_name(BatchId(stream, batch), "arrow")
    assert committed.exists()
    # what a kill between writing the batch and committing the checkpoint leaves behind
    orphan_stage = home.stage / TYPE / batch_name(BatchId(stream, batch + 1), "arrow")
    shutil.copy(committed, orphan_stage)
    (home.stage / "tool_call").mkdir(exist_ok=True)
    orphan_other = home.stage / "tool_call" / batch_name(BatchId(stream, batch + 2), "arrow")
    orphan_other.write_bytes(b"half a file")
    orphan_quarantine = home.quarantine / batch_name(BatchId(stream, batch + 1), "jsonl")
    orphan_quarantine.write_bytes(b'{"reason":"x"}\n')
    temp = home.stage / TYPE / f".{batch_name(BatchId(stream, batch + 1), 'arrow')}.tmp"
    temp.write_bytes(b"partial")
    # readers ignore them already
    assert_staged_once(home, ids_of(*lines))
    with running(home) as tailer:
        for leftover in (orphan_stage, orphan_other, orphan_quarantine, temp):
            assert not leftover.exists(), leftover
        assert committed.exists()
        more = event_line()
        append(home.logs / "a.jsonl", more)
        assert tailer.poll().staged == 1
    assert_staged_once(home, ids_of(*lines, more))


def test_crash_before_the_checkpoint_commit_replays_exactly_once(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(3)]
    append(log, *first)
    poll_once(home)
    second = [event_line() for _ in range(4)]
    append(log, *second, b"not json\n")

    def killed(state_dir: Path, prepared: Path) -> None:
        raise KeyboardInterrupt("simulated kill before the checkpoint rename")

    crashed = Tailer(home)
    monkeypatch.setattr(tailer_module, "publish_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        crashed.poll()
    crashed.close()
    monkeypatch.undo()
    # the batch's files exist, but above the watermark nobody reads them
    stream = load_checkpoint(home.state).stream
    assert (home.stage / TYPE / batch_name(BatchId(stream, 2), "arrow")).exists()
    assert_staged_once(home, ids_of(*first))
    assert quarantined(home) == []
    result = poll_once(home)
    assert (result.staged, result.quarantined) == (4, 1)
    assert_staged_once(home, ids_of(*first, *second))
    assert len(quarantined(home)) == 1


def test_the_checkpoint_is_published_only_after_every_file_of_its_batch(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's files are written in parallel; the slowest still precedes the commit."""
    events: list[str] = []
    lock = threading.Lock()

    def slowly(name: str, write: Callable[..., Path], delay: float) -> Callable[..., Path]:
        def wrapped(*args: Any) -> Path:
            time.sleep(delay)
            path = write(*args)
            with lock:
                events.append(f"{name} {path.name}")
            return path
        return wrapped

    def published(state_dir: Path, prepared: Path) -> None:
        with lock:
            events.append(f"checkpoint batch {orjson.loads(prepared.read_bytes())['batch']}")
        publish(state_dir, prepared)

    publish = tailer_module.publish_checkpoint
    monkeypatch.setattr(batches_module, "write_stage_bytes",
                        slowly("stage", batches_module.write_stage_bytes, 0.05))
    monkeypatch.setattr(batches_module, "write_quarantine",
                        slowly("quarantine", batches_module.write_quarantine, 0.1))
    monkeypatch.setattr(tailer_module, "publish_checkpoint", published)
    append(home.logs / "a.jsonl", event_line(), b"not json\n",
           event_line(event_type="tool_call", tool="grep", input_tokens=None,
                      output_tokens=None))
    poll_once(home)
    stream = load_checkpoint(home.state).stream
    assert sorted(events[:3]) == [f"quarantine b000000000001-{stream}.jsonl",
                                  f"stage b000000000001-{stream}.arrow",
                                  f"stage b000000000001-{stream}.arrow"]
    assert events[3:] == ["checkpoint batch 1"]
    assert load_checkpoint(home.state).watermark == (stream, 1)


def test_a_failed_write_leaves_the_checkpoint_and_the_next_poll_loses_nothing(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(3)]
    append(log, *first, b"not json\n")
    real_write = batches_module.write_stage_bytes

    def disk_full(*args: Any) -> Path:
        raise OSError(28, "No space left on device")

    with Tailer(home) as tailer:
        monkeypatch.setattr(batches_module, "write_stage_bytes", disk_full)
        with pytest.raises(StorageError, match="No space") as raised:
            tailer.poll()
        assert raised.value.exit_code == 74
        assert tailer.checkpoint.batch == 0 and tailer.checkpoint.files == {}
        assert load_checkpoint(home.state).batch == 0
        assert sorted(p.name for p in home.state.iterdir()) == [  # no temp file
            "checkpoint.json", "journal", "tailer.lock"]
        monkeypatch.setattr(batches_module, "write_stage_bytes", real_write)
        second = event_line()
        append(log, second)
        result = tailer.poll()  # the same tailer, once the disk has room again
    assert (result.staged, result.quarantined, result.batches) == (4, 1, 1)
    assert_staged_once(home, ids_of(*first, second))
    assert len(quarantined(home)) == 1


def test_a_failed_write_with_batches_in_flight_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers keep later batches in flight; a failed commit drops them, the next poll
    reads them again."""
    home = make_home(tmp_path / "home", "[tailer]\nbatch_lines = 50\nworkers = 1\n"
                                        "parallel_min_bytes = 1\n")
    lines = [event_line() for _ in range(400)]
    append(home.logs / "a.jsonl", *lines)
    failures = iter([OSError(28, "No space left on device")])

    def full_once(write: Callable[..., Any]) -> Callable[..., Any]:
        def maybe_fail(*args: Any) -> Any:
            failure = next(failures, None)
            if failure is not None:
                raise failure
            return write(*args)
        return maybe_fail

    # Blocks a worker staged are renamed into place; the others are written here.
    for name in ("write_stage_bytes", "rename_or_discard"):
        monkeypatch.setattr(batches_module, name, full_once(getattr(batches_module, name)))
    with Tailer(home) as tailer:
        with pytest.raises(StorageError, match="No space"):
            tailer.poll()
        assert load_checkpoint(home.state).batch == 0
        result = tailer.poll()
    assert (result.staged, result.batches) == (400, 8)
    assert_staged_once(home, ids_of(*lines))
    assert not list(home.stage.rglob("*.tmp"))  # the dropped batches' parts are deleted


def test_derived_event_id_is_deterministic(home: Home) -> None:
    log = home.logs / "anon.jsonl"
    lines = [event_line(event_id=None, input_tokens=n) for n in range(3)]
    append(log, *lines)
    poll_once(home)
    prefix = fingerprint16(lines[0])
    offsets = [0, len(lines[0]), len(lines[0]) + len(lines[1])]
    expected = {f"{prefix}-{offset}" for offset in offsets}
    assert_staged_once(home, expected)
    # forget everything derived and replay from the raw log
    shutil.rmtree(home.state)
    shutil.rmtree(home.stage)
    poll_once(home)
    assert_staged_once(home, expected)


# --------------------------------------------------------------------------------------------
# 4. rotation, deletion, truncation, idle rotated tails
# --------------------------------------------------------------------------------------------

def test_rename_and_create_rotation(home: Home) -> None:
    log = home.logs / "a.jsonl"
    producer = open(log, "ab", buffering=0)  # noqa: SIM115  (held across the rotation)
    written: list[bytes] = []
    try:
        with running(home) as tailer:
            for _ in range(3):
                written.append(event_line())
                producer.write(written[-1])
            assert tailer.poll().staged == 3
            os.rename(log, home.logs / "a.jsonl.1")
            for _ in range(2):  # the producer has not reopened yet
                written.append(event_line())
                producer.write(written[-1])
            fresh = [event_line() for _ in range(2)]
            append(log, *fresh)
            written += fresh
            tailer.poll()
            tailer.poll()
            assert_staged_once(home, ids_of(*written))
            late = event_line()  # one more straggler into the rotated file
            producer.write(late)
            written.append(late)
            tailer.poll()
        assert poll_once(home).staged == 0
    finally:
        producer.close()
    assert_staged_once(home, ids_of(*written))


def test_rotation_while_stopped_resumes_by_fingerprint(home: Home) -> None:
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(3)]
    append(log, *first)
    poll_once(home)
    tail = [event_line() for _ in range(2)]
    append(log, *tail)
    os.rename(log, home.logs / "a.jsonl.1")
    fresh = [event_line() for _ in range(2)]
    append(log, *fresh)
    assert poll_once(home).staged == 4
    assert_staged_once(home, ids_of(*first, *tail, *fresh))


def test_rename_to_a_non_matching_name_is_still_read(home: Home) -> None:
    log = home.logs / "a.jsonl"
    first = event_line()
    append(log, first)
    with running(home) as tailer:
        assert tailer.poll().staged == 1
        moved = home.logs / "a.archived"
        os.rename(log, moved)
        later = event_line()
        append(moved, later)
        assert tailer.poll().staged == 1
    assert_staged_once(home, ids_of(first, later))


def test_deleted_open_file_is_read_to_its_end(home: Home) -> None:
    log = home.logs / "a.jsonl"
    first = event_line()
    producer = open(log, "ab", buffering=0)  # noqa: SIM115
    try:
        producer.write(first)
        with running(home) as tailer:
            assert tailer.poll().staged == 1
            later = [event_line(), event_line()]
            for line in later:
                producer.write(line)
            log.unlink()
            assert tailer.poll().staged == 2
    finally:
        producer.close()
    assert_staged_once(home, ids_of(first, *later))


def test_deleted_file_state_is_dropped_once_idle(small_home: Home) -> None:
    home = small_home
    log = home.logs / "a.jsonl"
    append(log, event_line())
    with running(home) as tailer:
        tailer.poll()
        fingerprint = fingerprint_of_file(log)
        log.unlink()
        time.sleep(0.3)
        tailer.poll()
        assert fingerprint not in tailer.checkpoint.files
        assert tailer.poll().files == 0


def test_truncation_to_zero_then_new_lines(home: Home) -> None:
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(3)]
    append(log, *first)
    with running(home) as tailer:
        tailer.poll()
        os.truncate(log, 0)
        assert tailer.poll().staged == 0
        fresh = [event_line() for _ in range(2)]
        append(log, *fresh)
        assert tailer.poll().staged == 2
        assert tailer.poll().staged == 0
    assert poll_once(home).staged == 0
    assert_staged_once(home, ids_of(*first, *fresh))


@pytest.mark.parametrize("new_count", [1, 3, 6], ids=["shorter", "same-size", "longer"])
def test_truncate_and_rewrite_before_the_next_poll(home: Home, new_count: int) -> None:
    # The rewrite happens between two polls: the tailer never sees the empty file.
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(3)]
    append(log, *first)
    with running(home) as tailer:
        tailer.poll()
        fresh = [event_line() for _ in range(new_count)]
        with open(log, "wb") as handle:  # O_TRUNC keeps the inode
            handle.write(b"".join(fresh))
        assert tailer.poll().staged == new_count  # in the same poll, nothing left behind
    assert_staged_once(home, ids_of(*first, *fresh))


def alike_line() -> bytes:
    """A line whose last 64 bytes are the same as every other such line's (id up front)."""
    unique = line_id(event_line())
    return orjson.dumps({"event_id": unique, "event_type": "agent_token_usage",
                         "ts": "2025-03-01T12:00:00Z", "agent": "claude",
                         "input_tokens": 100, "output_tokens": 20}) + b"\n"


def test_rewrite_is_detected_when_lines_end_alike(home: Home) -> None:
    # The marker (the 64 bytes before the offset) cannot tell these files apart; the first
    # line can.
    log = home.logs / "a.jsonl"
    first = [alike_line() for _ in range(3)]
    append(log, *first)
    with running(home) as tailer:
        tailer.poll()
        fresh = [alike_line() for _ in range(5)]
        with open(log, "wb") as handle:
            handle.write(b"".join(fresh))
        assert tailer.poll().staged == 5
    assert_staged_once(home, ids_of(*first, *fresh))


def test_rewrite_with_the_same_first_line_resumes_after_it(home: Home) -> None:
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(4)]
    append(log, *first)
    with running(home) as tailer:
        tailer.poll()
        fresh = event_line()
        with open(log, "wb") as handle:
            handle.write(first[0] + fresh)
        tailer.poll()
        tailer.poll()
        assert_staged_once(home, ids_of(*first, fresh))
        later = event_line()
        append(log, later)
        assert tailer.poll().staged == 1
    assert_staged_once(home, ids_of(*first, fresh, later))


def test_copy_truncate_rotation(home: Home) -> None:
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(3)]
    append(log, *first)
    with running(home) as tailer:
        tailer.poll()
        unread = [event_line() for _ in range(2)]
        append(log, *unread)
        shutil.copyfile(log, home.logs / "a.jsonl.1")
        os.truncate(log, 0)
        fresh = [event_line() for _ in range(2)]
        append(log, *fresh)
        tailer.poll()
        tailer.poll()
    assert poll_once(home).staged == 0
    assert_staged_once(home, ids_of(*first, *unread, *fresh))


def test_copy_truncate_when_the_tailer_reads_past_the_copy(home: Home) -> None:
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(3)]
    append(log, *first)
    with running(home) as tailer:
        tailer.poll()
        shutil.copyfile(log, home.logs / "a.jsonl.1")
        after_copy = event_line()  # lands in the original after the copy was taken
        append(log, after_copy)
        assert tailer.poll().staged == 1
        os.truncate(log, 0)
        fresh = event_line()
        append(log, fresh)
        tailer.poll()
        tailer.poll()
    assert poll_once(home).staged == 0
    assert_staged_once(home, ids_of(*first, after_copy, fresh))


def test_truncated_tail_after_rotation_and_idle(small_home: Home) -> None:
    home = small_home
    log = home.logs / "a.jsonl"
    lines = [event_line(), event_line()]
    partial = event_line()[:30]
    append(log, *lines, partial)
    with running(home) as tailer:
        assert tailer.poll().staged == 2
        rotated = home.logs / "a.jsonl.1"
        os.rename(log, rotated)
        fresh = event_line()
        append(log, fresh)
        tailer.poll()
        assert quarantined(home) == []  # not idle yet (mtime is recent)
        age(rotated)
        tailer.poll()
    assert_staged_once(home, ids_of(*lines, fresh))
    [record] = quarantined(home)
    assert record["reason"] == "truncated_tail"
    assert record["source"] == "a.jsonl.1"
    assert record["offset"] == len(lines[0]) + len(lines[1])
    assert record["length"] == len(partial)
    assert record["excerpt"] == partial.decode()
    assert poll_once(home).quarantined == 0  # once only, also after a restart


def test_a_stopped_poll_never_quarantines_unread_lines_as_a_tail(small_home: Home) -> None:
    home = small_home
    log = home.logs / "a.jsonl"
    first = event_line()
    append(log, first)
    with running(home) as tailer:
        tailer.poll()
        unread = [event_line(), event_line()]
        partial = event_line()[:30]
        append(log, *unread, partial)
        os.rename(log, home.logs / "a.jsonl.1")
        age(home.logs / "a.jsonl.1")
        tailer.stop.set()  # SIGTERM arrived: the pass reads nothing more
        tailer.poll()
        assert quarantined(home) == []
        tailer.stop.clear()
        result = tailer.poll()
    assert (result.staged, result.quarantined) == (2, 1)
    assert_staged_once(home, ids_of(first, *unread))
    [record] = quarantined(home)
    assert (record["reason"], record["length"]) == ("truncated_tail", len(partial))


def test_truncated_tail_of_a_deleted_file(small_home: Home) -> None:
    home = small_home
    log = home.logs / "a.jsonl"
    first = event_line()
    partial = event_line()[:40]
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, first + partial)
        with running(home) as tailer:
            tailer.poll()
            log.unlink()
            tailer.poll()
            assert quarantined(home) == []
            age(fd)
            tailer.poll()
    finally:
        os.close(fd)
    [record] = quarantined(home)
    assert (record["reason"], record["offset"], record["length"]) == \
        ("truncated_tail", len(first), len(partial))


# found first / last in the scan, or no alias at all
@pytest.mark.parametrize("alias", [None, "0-alias.jsonl", "z-alias.jsonl"])
def test_live_file_with_partial_line_is_never_truncated_tail(small_home: Home,
                                                               alias: str | None) -> None:
    home = small_home
    log = home.logs / "a.jsonl"
    if alias:  # a symlink alias must not make the live file look rotated
        (home.logs / alias).symlink_to(log)
    first, second = event_line(), event_line()
    append(log, first, second[:20])
    with running(home) as tailer:
        tailer.poll()
        age(log)
        tailer.poll()
        tailer.poll()
        assert quarantined(home) == []
        append(log, second[20:])
        assert tailer.poll().staged == 1
    assert_staged_once(home, ids_of(first, second))


# --------------------------------------------------------------------------------------------
# 5. security and odd files
# --------------------------------------------------------------------------------------------

def test_symlink_leading_outside_logs_is_not_followed(home: Home, tmp_path: Path) -> None:
    outside = tmp_path / "secret.jsonl"
    outside.write_bytes(event_line() + event_line())
    (home.logs / "evil.jsonl").symlink_to(outside)
    (home.logs / "nested").mkdir()
    (home.logs / "nested" / "up.jsonl").symlink_to(Path("..") / ".." / ".." / "secret.jsonl")
    (home.logs / "outdir").symlink_to(tmp_path, target_is_directory=True)
    inside = event_line()
    append(home.logs / "ok.jsonl", inside)
    messages: list[str] = []
    with running(home, notify=messages.append) as tailer:
        tailer.poll()
        tailer.poll(only=[str(home.logs / "evil.jsonl")])  # a watchdog event for it
        tailer.poll()
    assert_staged_once(home, ids_of(inside))
    assert sum("evil.jsonl" in m and "outside" in m for m in messages) == 1  # warned once
    assert all(f.path != "evil.jsonl" for f in tail_status(home).files)


def test_symlink_to_a_file_inside_logs_is_read(home: Home) -> None:
    (home.logs / "data").mkdir()
    target = home.logs / "data" / "raw.log"  # not matched by the include patterns itself
    lines = [event_line(), event_line()]
    target.write_bytes(b"".join(lines))
    (home.logs / "alias.jsonl").symlink_to(Path("data") / "raw.log")
    assert poll_once(home).staged == 2
    assert_staged_once(home, ids_of(*lines))


def test_unreadable_file_is_reported_and_retried(home: Home) -> None:
    log = home.logs / "locked.jsonl"
    lines = [event_line(), event_line()]
    log.write_bytes(b"".join(lines))
    log.chmod(0)
    if os.access(log, os.R_OK):
        pytest.skip("running as a user who can read a mode-000 file (root)")
    messages: list[str] = []
    other = event_line()
    append(home.logs / "other.jsonl", other)
    with running(home, notify=messages.append) as tailer:
        tailer.poll()
        tailer.poll()
        assert_staged_once(home, ids_of(other))
        assert sum("locked.jsonl" in m for m in messages) == 1
        log.chmod(0o644)
        assert tailer.poll().staged == 2
    assert_staged_once(home, ids_of(other, *lines))


def test_open_failure_is_reported_and_retried(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as the mode-000 test, by refusing the open: runs as root too."""
    log = home.logs / "locked.jsonl"
    lines = [event_line(), event_line()]
    log.write_bytes(b"".join(lines))
    other = event_line()
    append(home.logs / "other.jsonl", other)
    real_open = os.open
    denied = {str(log)}

    def guarded_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    messages: list[str] = []
    with running(home, notify=messages.append) as tailer:
        monkeypatch.setattr(files_module.os, "open", guarded_open)
        tailer.poll()
        tailer.poll()
        assert_staged_once(home, ids_of(other))
        assert [m for m in messages if "locked.jsonl" in m] == \
            [f"{log}: cannot open (Permission denied); will retry"]
        denied.clear()
        assert tailer.poll().staged == 2
        monkeypatch.undo()
    assert_staged_once(home, ids_of(other, *lines))


def test_fifo_does_not_hang_the_tailer(home: Home) -> None:
    os.mkfifo(home.logs / "x.jsonl")
    line = event_line()
    append(home.logs / "real.jsonl", line)
    outcome: list[Any] = []

    def run() -> None:
        try:
            with running(home) as tailer:
                tailer.poll()
                tailer.poll(only=[str(home.logs / "x.jsonl")])
            outcome.append("ok")
        except BaseException as exc:  # pragma: no cover - reported below
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the FIFO so the thread can end, then fail
        with contextlib.suppress(OSError):
            fd = os.open(home.logs / "x.jsonl", os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        pytest.fail("the tailer hung on a FIFO")
    assert outcome == ["ok"]
    assert_staged_once(home, ids_of(line))


def test_file_swapped_for_a_fifo_between_stat_and_open(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    fifo = home.logs / "x.jsonl"
    os.mkfifo(fifo)
    regular = home.logs / "regular.bin"
    regular.write_bytes(b"{}\n")
    real_stat = os.stat

    def racing_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        # the name was a regular file when stat'ed, and a FIFO by the time it was opened
        return real_stat(regular if os.fspath(path) == str(fifo) else path, *args, **kwargs)

    line = event_line()
    append(home.logs / "real.jsonl", line)
    with running(home) as tailer:
        monkeypatch.setattr(files_module.os, "stat", racing_stat)
        tailer.poll()
        monkeypatch.undo()
    assert_staged_once(home, ids_of(line))


def test_event_content_never_becomes_a_path(home: Home, tmp_path: Path) -> None:
    hostile = [
        event_line(agent="../../etc", session_id="/etc/passwd", task="..\\..\\x",
                   model="../" * 50, request_id="a/b/../../../c"),
        orjson.dumps({"event_type": "../../../escaped", "ts": "2025-03-01T12:00:00Z",
                      "agent": "a"}) + b"\n",
        orjson.dumps({"event_type": "agent_token_usage/../../x", "ts": "2025-03-01T12:00:00Z",
                      "agent": "a"}) + b"\n",
    ]
    append(home.logs / "a.jsonl", *hostile)
    before = {p for p in tmp_path.rglob("*")}
    result = poll_once(home)
    assert (result.staged, result.quarantined) == (1, 2)
    created = {p for p in tmp_path.rglob("*")} - before
    schema_types = {"agent_token_usage", "budget_alert", "context_compiled", "metric",
                    "task_progress", "tool_call"}
    for path in created:
        relative = path.relative_to(home.root)
        assert relative.parts[0] in {"stage", "quarantine", "state"}, path
        if relative.parts[0] == "stage":
            assert relative.parts[1] in schema_types, path
        assert "etc" not in relative.parts and "escaped" not in str(relative)
    assert_staged_once(home, ids_of(hostile[0]))
    assert staged_rows(home)["agent"].to_list() == ["../../etc"]


# --------------------------------------------------------------------------------------------
# 6. follow (watchdog), the CLI, the lock, SIGTERM
# --------------------------------------------------------------------------------------------

@dataclass
class Follower:
    tailer: Tailer
    thread: threading.Thread
    statuses: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def stop(self, timeout: float = 10.0) -> None:
        self.tailer.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "follow() did not stop"
        self.tailer.close()
        assert self.errors == []


def start_follow(home: Home) -> Follower:
    tailer = Tailer(home)
    follower = Follower(tailer, threading.Thread(daemon=True))

    def run() -> None:
        try:
            follow(tailer, on_status=follower.statuses.append)
        except BaseException as exc:  # pragma: no cover - surfaced by stop()
            follower.errors.append(exc)

    follower.thread = threading.Thread(target=run, daemon=True)
    follower.thread.start()
    return follower


def test_follow_stages_appends_via_watchdog(tmp_path: Path) -> None:
    # rescans are an hour apart: only the watchdog observer can wake the reads
    home = make_home(tmp_path / "home", "[tailer]\nrescan_seconds = 3600\nstatus_interval = 0.1\n")
    (home.logs / "deep" / "er").mkdir(parents=True)
    follower = start_follow(home)
    try:
        time.sleep(0.3)  # the observer is watching
        written = [event_line() for _ in range(3)]
        append(home.logs / "a.jsonl", *written)
        assert wait_until(lambda: len(staged_ids(home)) == 3, timeout=5)
        nested = event_line()
        append(home.logs / "deep" / "er" / "b.jsonl", nested)
        written.append(nested)
        assert wait_until(lambda: len(staged_ids(home)) == 4, timeout=5)
        os.rename(home.logs / "a.jsonl", home.logs / "a.jsonl.1")
        fresh = event_line()
        append(home.logs / "a.jsonl", fresh)
        written.append(fresh)
        assert wait_until(lambda: len(staged_ids(home)) == 5, timeout=5)
        assert wait_until(lambda: bool(follower.statuses), timeout=5)
    finally:
        started = time.monotonic()
        follower.stop()
    assert time.monotonic() - started < 3, "stop must not wait for the next rescan"
    assert_staged_once(home, ids_of(*written))
    assert any("events/s" in s and "staged" in s for s in follower.statuses)


@pytest.mark.parametrize(("per_writer", "rotate_every"), [
    (3000, 700), pytest.param(40000, 4500, marks=pytest.mark.slow)], ids=["quick", "long"])
def test_follow_under_concurrent_writers_and_rotation(tmp_path: Path, per_writer: int,
                                                      rotate_every: int) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nrescan_seconds = 0.3\nbatch_lines = 500\n")
    written: list[set[str]] = [set() for _ in range(3)]

    def writer(index: int) -> None:
        name = f"w{index}.jsonl"
        fd = os.open(home.logs / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        generation = 0
        for n in range(1, per_writer + 1):
            line = event_line(event_id=f"w{index}-{n:06d}", input_tokens=n)
            os.write(fd, line)
            written[index].add(line_id(line))
            if n % rotate_every == 0:  # logrotate: shift .N, rename, reopen
                generation += 1
                for k in range(generation, 0, -1):
                    source = home.logs / (name if k == 1 else f"{name}.{k - 1}")
                    if source.exists():
                        os.rename(source, home.logs / f"{name}.{k}")
                os.write(fd, event_line(event_id=f"w{index}-late-{n}"))  # old fd, after rename
                written[index].add(f"w{index}-late-{n}")
                os.close(fd)
                fd = os.open(home.logs / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if n % 50 == 0:
                time.sleep(0.001)
        os.close(fd)

    follower = start_follow(home)
    try:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        expected = set().union(*written)
        assert wait_until(lambda: len(set(staged_ids(home))) == len(expected), timeout=30)
    finally:
        follower.stop()
    assert_staged_once(home, expected)
    assert quarantined(home) == []


def test_follow_on_a_home_that_was_never_initialised(tmp_path: Path) -> None:
    from pipeline.config import load_home

    home = load_home(tmp_path / "fresh")  # no `tally init`: no logs/ yet
    follower = start_follow(home)
    try:
        line = event_line()
        assert wait_until(home.logs.is_dir, timeout=5)
        append(home.logs / "a.jsonl", line)
        assert wait_until(lambda: len(staged_ids(home)) == 1, timeout=5)
    finally:
        follower.stop()
    assert_staged_once(home, ids_of(line))


def test_follow_rescan_picks_up_what_events_missed(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nrescan_seconds = 0.2\n")
    follower = start_follow(home)
    try:
        line = event_line()
        append(home.logs / "a.jsonl", line)
        assert wait_until(lambda: len(staged_ids(home)) == 1, timeout=5)
    finally:
        follower.stop()
    assert_staged_once(home, ids_of(line))


def test_second_tailer_on_the_same_home_times_out(home: Home) -> None:
    with running(home):
        started = time.monotonic()
        with pytest.raises(LockTimeout) as raised:
            Tailer(home, lock_timeout=0.3)
        assert time.monotonic() - started >= 0.25
        assert f"pid {os.getpid()}" in str(raised.value)
    poll_once(home)  # released on close


def test_cli_tail_once_and_status(home: Home) -> None:
    runner = CliRunner()
    lines = [event_line() for _ in range(4)]
    append(home.logs / "a.jsonl", *lines, b"garbage\n", event_line()[:10])
    result = runner.invoke(cli_main, ["tail", "--once", "--home", str(home.root)])
    assert result.exit_code == 0, result.output
    assert "staged 4 events" in result.output and "quarantined 1 lines" in result.output
    assert_staged_once(home, ids_of(*lines))
    result = runner.invoke(cli_main, ["status", "--format", "json", "--home", str(home.root)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    size = (home.logs / "a.jsonl").stat().st_size
    [entry] = report["files"]
    assert entry == {"path": "a.jsonl", "offset": size - 10, "size": size, "lag": 10}
    assert report["staged_waiting"] == 4
    assert report["staged_total"] == 4
    assert report["quarantined_total"] == 1
    assert report["batch"] == 1
    assert datetime.fromisoformat(report["last_checkpoint"]).tzinfo is not None
    table = runner.invoke(cli_main, ["status", "--home", str(home.root)])
    assert table.exit_code == 0 and "a.jsonl" in table.output and "waiting" in table.output


def test_cli_status_of_an_empty_home(home: Home) -> None:
    result = CliRunner().invoke(cli_main, ["status", "--format", "json", "--home",
                                           str(home.root)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["files"] == [] and report["staged_waiting"] == 0
    assert report["last_checkpoint"] is None


def test_cli_tail_while_locked_exits_75(home: Home) -> None:
    with running(home):
        result = CliRunner().invoke(cli_main, ["tail", "--once", "--home", str(home.root)])
    assert result.exit_code == 75
    assert "another tailer is running" in result.output


def test_cli_tail_once_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nbatch_lines = 500\n")
    append(home.logs / "a.jsonl", *[event_line() for _ in range(3000)])
    stdout, shown = stderr_on_a_terminal("tail", "--once", "--home", str(home.root))
    assert "staged 3,000 events" in stdout
    assert "catching up" in shown and "100%" in shown
    quiet_home = make_home(tmp_path / "quiet", "[tailer]\nbatch_lines = 500\n")
    append(quiet_home.logs / "a.jsonl", *[event_line() for _ in range(3000)])
    _, shown = stderr_on_a_terminal("tail", "--once", "--quiet", "--home", str(quiet_home.root))
    assert shown == ""
    append(home.logs / "a.jsonl", *[event_line() for _ in range(1000)])
    piped = CliRunner().invoke(cli_main, ["tail", "--once", "--home", str(home.root)])
    assert piped.exit_code == 0 and "staged 1,000 events" in piped.output
    assert "catching up" not in piped.output  # not a terminal: no bar


def test_sigterm_stops_tail_cleanly(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nrescan_seconds = 0.2\n")
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(3)]
    append(log, *first)
    process = subprocess.Popen([tally_executable(), "tail", "--home", str(home.root)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: len(staged_ids(home)) == 3, timeout=20), \
            process.stderr.read1().decode() if process.poll() is not None else "no progress"
        second = [event_line() for _ in range(2)]
        append(log, *second)
        assert wait_until(lambda: len(staged_ids(home)) == 5, timeout=10)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err.decode()
    assert b"staged 5 events" in out
    checkpoint = load_checkpoint(home.state)
    [state] = checkpoint.files.values()
    assert state.offset == log.stat().st_size
    assert checkpoint.staged == 5 and checkpoint.updated_at
    assert not list(home.state.glob(".*.tmp"))
    assert poll_once(home).staged == 0
    assert_staged_once(home, ids_of(*first, *second))


# --------------------------------------------------------------------------------------------
# 7. a Hypothesis state machine: producers, rotation, truncation, deletion, restarts
# --------------------------------------------------------------------------------------------

SLOTS = ("a", "b")


class _Killed(BaseException):
    """A simulated kill -9 inside the tailer."""


@dataclass
class ModelLine:
    event_id: str
    complete: bool = True
    must_arrive: bool = True
    consumed: bool = False  # complete and reachable at a catch-up: the tailer has it


@dataclass
class ModelFile:
    """One inode: its producer's descriptor, where it is, and what was written into it."""

    fd: int
    slot: str
    name: str | None  # None once deleted
    lines: list[ModelLine] = field(default_factory=list)
    partial: bytes = b""  # the rest of the last line, not written yet

    @property
    def open_line(self) -> ModelLine | None:
        return self.lines[-1] if self.lines and not self.lines[-1].complete else None


class TailerMachine(RuleBasedStateMachine):
    """Modelled on Vector's file-watcher model tests: the model knows which lines must arrive.

    A line may be lost only when its file was deleted (or replaced by a rotation) or truncated
    before a catch-up consumed it; every other line must arrive, exactly once. Partial lines
    never reach the quarantine here: idle_seconds is an hour and truncation cuts them away.
    """

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="tally-sm-"))
        self.home = make_home(self.root / "home", "[tailer]\nidle_seconds = 3600\n")
        self.tailer: Tailer | None = Tailer(self.home)
        self.files: list[ModelFile] = []
        self.live: dict[str, ModelFile] = {}
        self.written: set[str] = set()
        self.counter = 0

    # ------------------------------------------------------------ helpers

    def _new_file(self, slot: str) -> ModelFile:
        path = self.home.logs / f"{slot}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        model = ModelFile(fd, slot, path.name)
        self.files.append(model)
        self.live[slot] = model
        return model

    def _line(self) -> tuple[str, bytes]:
        self.counter += 1
        event_id = f"sm-{self.counter:06d}"
        return event_id, event_line(event_id=event_id, input_tokens=self.counter)

    def _write(self, model: ModelFile, data: bytes) -> None:
        assert os.write(model.fd, data) == len(data)

    def _finish(self, model: ModelFile) -> None:
        line = model.open_line
        if line is not None:
            self._write(model, model.partial)
            model.partial = b""
            line.complete = True
            line.must_arrive = line.must_arrive and model.name is not None

    def _lose_unconsumed(self, model: ModelFile) -> None:
        for line in model.lines:
            if not line.consumed:
                line.must_arrive = False

    def _unlink(self, model: ModelFile) -> None:
        assert model.name is not None
        (self.home.logs / model.name).unlink()
        self._lose_unconsumed(model)
        model.name = None

    # ------------------------------------------------------------ rules

    def _append_lines(self, model: ModelFile, count: int) -> None:
        self._finish(model)
        for _ in range(count):
            event_id, line = self._line()
            self._write(model, line)
            model.lines.append(ModelLine(event_id, must_arrive=model.name is not None))
            self.written.add(event_id)

    @rule(slot=st.sampled_from(SLOTS), count=st.integers(1, 4))
    def write(self, slot: str, count: int) -> None:
        self._append_lines(self.live.get(slot) or self._new_file(slot), count)

    @rule(slot=st.sampled_from(SLOTS), cut=st.integers(1, 60))
    def write_partial(self, slot: str, cut: int) -> None:
        model = self.live.get(slot) or self._new_file(slot)
        self._finish(model)
        event_id, line = self._line()
        self._write(model, line[:cut])
        model.partial = line[cut:]
        model.lines.append(ModelLine(event_id, complete=False))
        self.written.add(event_id)

    @precondition(lambda self: any(m.open_line for m in self.files))
    @rule(data=st.data())
    def finish_partial(self, data: st.DataObject) -> None:
        candidates = [m for m in self.files if m.open_line]
        self._finish(data.draw(st.sampled_from(candidates)))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def write_to_rotated(self, data: st.DataObject) -> None:
        """A producer that has not reopened yet keeps writing to its old inode."""
        candidates = [m for m in self.files if m.name is not None and m not in
                      self.live.values()]
        if not candidates:
            return
        self._append_lines(data.draw(st.sampled_from(candidates)), 1)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def rotate(self, data: st.DataObject) -> None:
        """logrotate: x.jsonl.1 -> x.jsonl.2 (replacing it), x.jsonl -> x.jsonl.1, new x.jsonl."""
        slot = data.draw(st.sampled_from(sorted(self.live)))
        logs = self.home.logs
        by_name = {m.name: m for m in self.files if m.name is not None}
        oldest = by_name.get(f"{slot}.jsonl.2")
        if oldest is not None:  # replaced by the rename below: deleted
            self._lose_unconsumed(oldest)
            oldest.name = None
        middle = by_name.get(f"{slot}.jsonl.1")
        if middle is not None:
            os.rename(logs / f"{slot}.jsonl.1", logs / f"{slot}.jsonl.2")
            middle.name = f"{slot}.jsonl.2"
        current = self.live.pop(slot)
        os.rename(logs / f"{slot}.jsonl", logs / f"{slot}.jsonl.1")
        current.name = f"{slot}.jsonl.1"
        self._new_file(slot)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), count=st.integers(0, 4))
    def truncate(self, data: st.DataObject, count: int) -> None:
        """Truncate a live file in place (copytruncate, `: > file`), then maybe write anew."""
        model = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        os.ftruncate(model.fd, 0)
        self._lose_unconsumed(model)
        if model.open_line is not None:  # the half-written line was cut away: never finished
            model.open_line.complete = True
            model.partial = b""
        self._append_lines(model, count)

    @precondition(lambda self: any(m.name is not None for m in self.files))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        candidates = [m for m in self.files if m.name is not None]
        model = data.draw(st.sampled_from(candidates))
        if self.live.get(model.slot) is model:
            del self.live[model.slot]
        self._unlink(model)

    @rule()
    def restart_tailer(self) -> None:
        assert self.tailer is not None
        self.tailer.close()
        self.tailer = Tailer(self.home)

    @rule()
    def crash_before_commit(self) -> None:
        """kill -9 after a batch's files are written, before its checkpoint is renamed."""
        assert self.tailer is not None
        original = tailer_module.publish_checkpoint

        def killed(*args: Any) -> None:
            raise _Killed

        tailer_module.publish_checkpoint = killed
        try:
            with contextlib.suppress(_Killed):
                self.tailer.poll()
        finally:
            tailer_module.publish_checkpoint = original
        self.tailer.close()
        self.tailer = Tailer(self.home)

    @rule()
    def catch_up(self) -> None:
        assert self.tailer is not None
        self.tailer.poll()
        for model in self.files:
            if model.name is None:
                continue
            for line in model.lines:
                if line.complete:
                    line.consumed = True
        self.check_staged()

    # ------------------------------------------------------------ invariants

    def check_staged(self) -> None:
        """Staged ids: written by someone, each once, and every line the tailer has had its
        chance at (complete and reachable at a catch-up) and that must arrive, arrived."""
        ids = staged_ids(self.home)
        counts: dict[str, int] = {}
        for event_id in ids:
            counts[event_id] = counts.get(event_id, 0) + 1
        assert not {i for i, n in counts.items() if n > 1}, "an event was staged twice"
        assert set(ids) <= self.written, "staged an event nobody wrote"
        assert quarantined(self.home) == [], quarantined(self.home)[:3]
        missing = {line.event_id for m in self.files for line in m.lines
                   if line.consumed and line.must_arrive} - set(ids)
        assert not missing, f"lost {sorted(missing)}"

    @invariant()
    def staged_exactly_once(self) -> None:
        if self.counter:
            self.check_staged()

    def teardown(self) -> None:
        if self.tailer is not None:
            self.tailer.close()
        for model in self.files:
            with contextlib.suppress(OSError):
                os.close(model.fd)
        shutil.rmtree(self.root, ignore_errors=True)


QUICK = settings(max_examples=60, stateful_step_count=30, deadline=None,
                 suppress_health_check=list(HealthCheck))
THOROUGH = settings(max_examples=120, stateful_step_count=40, deadline=None,
                    suppress_health_check=list(HealthCheck))


def test_state_machine_quick() -> None:
    run_state_machine_as_test(TailerMachine, settings=QUICK)


@pytest.mark.slow
def test_state_machine_thorough() -> None:
    run_state_machine_as_test(TailerMachine, settings=THOROUGH)


# --------------------------------------------------------------------------------------------
# worker processes for catch-ups
# --------------------------------------------------------------------------------------------

def _every_stage_row(home: Home) -> dict[str, pl.DataFrame]:
    return {t: staged_rows(home, t).sort("_source", "_offset")
            for t in ("agent_token_usage", "task_progress", "tool_call", "metric",
                      "context_compiled")}


class _CountingPool(StagerPool):
    """StagerPool, recording itself in `started` and counting the blocks handed to it."""

    started: list[_CountingPool]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.submitted = 0
        self.closed = False
        self.started.append(self)

    def submit(self, *args: Any) -> Any:
        self.submitted += 1
        return super().submit(*args)

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[_CountingPool]:
    """The worker pools tailers start in the test, in order."""
    started: list[_CountingPool] = []
    monkeypatch.setattr(_CountingPool, "started", started, raising=False)
    monkeypatch.setattr(tailer_module, "StagerPool", _CountingPool)
    return started


def test_workers_stage_the_same_as_one_process(tmp_path: Path,
                                               pools: list[_CountingPool]) -> None:
    from bench.generate import write_log

    logs = tmp_path / "logs"
    logs.mkdir()
    write_log(logs, 12_000, seed=5, files=3, invalid_ratio=0.01)
    homes = {}
    for workers in (0, 2):
        home = make_home(tmp_path / f"home-{workers}", "[tailer]\nbatch_lines = 1500\n"
                         f"workers = {workers}\nparallel_min_bytes = 1\n")
        for path in logs.iterdir():
            shutil.copy(path, home.logs / path.name)
        with running(home) as tailer:
            result = tailer.poll()
            assert tailer._pool is None  # caught up: the workers are stopped
        assert len(pools) == (1 if workers else 0)
        assert result.staged + result.quarantined == 12_000
        assert not list(home.stage.rglob("*.tmp"))  # every worker's part became a batch file
        homes[workers] = home
    assert pools[0].submitted >= 8 and pools[0].closed
    one, many = (_every_stage_row(homes[w]) for w in (0, 2))
    for event_type, frame in one.items():
        assert frame.height > 0
        assert_frame_equal(many[event_type], frame)

    def records(home: Home) -> list[tuple[str, int, str]]:
        return sorted((r["source"], r["offset"], r["reason"]) for r in quarantined(home))

    assert records(homes[0]) == records(homes[2]) and len(records(homes[0])) > 50
    # With workers a batch ends with its file too: no batch of two files' blocks is merged.
    assert load_checkpoint(homes[2].state).batch == 9 > load_checkpoint(homes[0].state).batch
    for path in homes[2].stage.rglob("*.arrow"):
        assert pl.read_ipc(path)["_source"].n_unique() == 1


def test_a_block_moved_under_a_worker_is_checked_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pools: list[_CountingPool]) -> None:
    source_of = BlockSource.of

    def misread(block: bytes, *where: Any) -> BlockSource:  # as if rewritten meanwhile
        return source_of(block[::-1], *where)

    monkeypatch.setattr(tailer_module.BlockSource, "of", misread)
    home = make_home(tmp_path / "home", "[tailer]\nworkers = 1\nparallel_min_bytes = 1\n"
                     "batch_lines = 7\n")
    lines = [event_line() for _ in range(30)]
    append(home.logs / "a.jsonl", *lines)
    notes: list[str] = []
    with running(home, notify=notes.append) as tailer:
        assert tailer.poll().staged == 30
    # The workers stay for every block: the file changed, not them.
    assert len(pools) == 1 and pools[0].submitted == 5 and not notes
    assert_staged_once(home, ids_of(*lines))
    assert not list(home.stage.rglob("*.tmp"))


class _LazyFuture(Future[Any]):
    """A check that runs only when the tailer waits for it: never done before that."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        super().__init__()
        self._compute = compute

    def result(self, timeout: float | None = None) -> Any:
        if not super().done():
            self.set_result(self._compute())
        return super().result(timeout)


class _LazyPool:
    """StagerPool's interface, checking each block in this process once it is waited for."""

    def __init__(self, schemas: Any, workers: int, stage_dir: Path, **_: Any) -> None:
        from pipeline.events import Validator
        from pipeline.frames import BlockStager

        self.stager = BlockStager(Validator(schemas))

    def submit(self, where: BlockSource, source: str, id_prefix: str,
               limit: int) -> Future[Any]:
        return _LazyFuture(lambda: self.stager.stage(read_block(where), where.position,
                                                     source, id_prefix, limit))

    def close(self) -> None:
        pass


def test_the_next_file_is_read_while_the_previous_files_batches_are_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nworkers = 2\nparallel_min_bytes = 1\n"
                     "batch_lines = 10\n")
    lines = {name: [event_line() for _ in range(30)] for name in ("a.jsonl", "b.jsonl")}
    for name, written in lines.items():
        append(home.logs / name, *written)
    monkeypatch.setattr(tailer_module, "StagerPool", _LazyPool)
    order: list[str] = []
    submit, commit = Tailer._submit, Tailer._commit_batch

    def submitted(self: Tailer, handle: Any, *args: Any) -> None:
        order.append(f"read {Path(handle.path).name}")
        submit(self, handle, *args)

    def committed(self: Tailer, pending: Any, result: Any) -> None:
        order.append("commit")
        commit(self, pending, result)

    monkeypatch.setattr(Tailer, "_submit", submitted)
    monkeypatch.setattr(Tailer, "_commit_batch", committed)
    with running(home) as tailer:
        assert tailer.poll().staged == 60
    # a.jsonl's three batches are still in flight when b.jsonl's first block is read
    first_of_b = order.index("read b.jsonl")
    assert order[:first_of_b] == ["read a.jsonl"] * 3
    assert order.count("commit") == 6
    assert_staged_once(home, ids_of(*lines["a.jsonl"], *lines["b.jsonl"]))
    assert {state.path: state.offset for state in load_checkpoint(home.state).files.values()} == {
        name: (home.logs / name).stat().st_size for name in lines}


@pytest.mark.parametrize("workers", [0, 1])
def test_the_tailer_loads_polars_only_to_type_lines_itself(tmp_path: Path, workers: int) -> None:
    """With workers typing every line, a tailer's pass never loads Polars (0.14 s, 35 MB),
    not even for several files (a file's last lines end a batch). (`tally tail --once`
    then counts the budgets, with Polars, if it committed a batch: test_monitor.)"""
    home = make_home(tmp_path / "home", f"[tailer]\nworkers = {workers}\n"
                     "parallel_min_bytes = 1\nbatch_lines = 200\n")
    for name in ("a", "b", "c"):
        append(home.logs / f"{name}.jsonl", *(event_line() for _ in range(250)))
    code = ("import sys\nfrom pipeline.config import load_home\n"
            "from pipeline.tailer import Tailer\n"
            f"with Tailer(load_home({str(home.root)!r})) as tailer:\n    tailer.poll()\n"
            "print('polars' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == [str(workers == 0)]
    assert load_checkpoint(home.state).staged == 750


def test_a_dead_worker_is_replaced_by_checking_in_process(tmp_path: Path,
                                                         pools: list[_CountingPool]) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nworkers = 1\nparallel_min_bytes = 1\n"
                     "batch_lines = 5\n")
    lines = [event_line() for _ in range(60)]
    append(home.logs / "a.jsonl", *lines)
    notes: list[str] = []

    killed: list[int] = []

    def kill_the_workers(done: int, total: int) -> None:  # after the first batch's commit
        if not killed:
            killed.extend(pools[0]._executor._processes)
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    with running(home, notify=notes.append) as tailer:
        assert tailer.poll(progress=kill_the_workers).staged == 60
        assert tailer._pool is None
    assert killed and len(pools) == 1 and pools[0].submitted >= 3
    assert_staged_once(home, ids_of(*lines))
    assert any("worker died" in note for note in notes)


def test_a_batch_of_long_lines_is_read_as_one_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pools: list[_CountingPool]) -> None:
    """Blocks of one batch are merged at commit in the tailer (Polars loaded there): reads
    sized to the batch's lines leave one block a batch, however long the lines."""
    monkeypatch.setattr(tailer_module, "READ_CHUNK", 4096)  # about 12 lines a read, at least
    home = make_home(tmp_path / "home", "[tailer]\nworkers = 1\nparallel_min_bytes = 1\n"
                     "batch_lines = 100\nmax_line_bytes = 2000\n")
    lines = [event_line() for _ in range(1000)]
    append(home.logs / "a.jsonl", *lines)
    with running(home) as tailer:
        result = tailer.poll()
    assert (result.staged, result.batches) == (1000, 10)
    assert pools[0].submitted <= result.batches + 2  # the first reads learn the line length
    assert_staged_once(home, ids_of(*lines))


def test_one_long_line_does_not_size_the_next_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pools: list[_CountingPool]) -> None:
    monkeypatch.setattr(tailer_module, "READ_CHUNK", 4096)
    home = make_home(tmp_path / "home", "[tailer]\nworkers = 1\nparallel_min_bytes = 1\n"
                     "batch_lines = 100\nmax_line_bytes = 400000\n")
    log = home.logs / "a.jsonl"
    long_line = event_line()[:-1] + b" " * 300_000 + b"\n"  # JSON allows the spaces
    append(log, long_line)
    lines = [event_line() for _ in range(4000)]  # 576 kB
    reads: list[int] = []
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        reads.append(length)
        return real_pread(fd, length, offset)

    with running(home) as tailer:
        assert tailer.poll().staged == 1  # a block of that one line
        append(log, *lines)
        monkeypatch.setattr(reader_module.os, "pread", pread)
        assert tailer.poll().staged == 4000
    # Sized by the long line, a read would take all 576 kB left (100 lines of 300 kB wanted).
    assert max(reads) <= 400_001
    assert_staged_once(home, ids_of(long_line, *lines))


@pytest.mark.parametrize(("per_file", "threshold", "started"),
                         [(3500, 0.9, True), (3500, 1.1, False), (40, 0.9, False)],
                         ids=["together", "not_enough", "files_too_small"])
def test_workers_start_when_the_files_together_hold_enough_to_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pools: list[_CountingPool],
        per_file: int, threshold: float, started: bool) -> None:
    """Many agents' files, none large alone, are a large catch-up together; files too small
    to fill a block for a worker (under WORKER_MIN_FILE_BYTES) do not count."""
    monkeypatch.setattr(tailer_module, "WORKER_MIN_FILE_BYTES", 100_000)  # 700 lines here
    logs = {name: [event_line() for _ in range(per_file)] for name in ("a", "b", "c", "d")}
    sizes = {name: sum(map(len, lines)) for name, lines in logs.items()}
    home = make_home(tmp_path / "home", "[tailer]\nworkers = 1\n"
                     f"parallel_min_bytes = {int(sum(sizes.values()) * threshold)}\n")
    assert max(sizes.values()) < home.tailer.parallel_min_bytes
    assert (min(sizes.values()) >= tailer_module.WORKER_MIN_FILE_BYTES) == (per_file > 40)
    for name, lines in logs.items():
        append(home.logs / f"{name}.jsonl", *lines)
    assert poll_once(home).staged == 4 * per_file
    assert len(pools) == (1 if started else 0)
    assert all(pool.submitted == 4 for pool in pools)  # a block a file, a batch a file
    assert_staged_once(home, ids_of(*(line for lines in logs.values() for line in lines)))


def test_workers_stay_while_a_backlog_remains_and_stop_once_caught_up(
        tmp_path: Path, pools: list[_CountingPool]) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nworkers = 1\nparallel_min_bytes = 1\n"
                     "batch_lines = 10\n")
    log = home.logs / "a.jsonl"
    first, late = [event_line() for _ in range(30)], event_line()
    append(log, *first)

    def append_once(done: int, total: int) -> None:  # written while the pass reads
        if not late_written:
            late_written.append(True)
            append(log, late)

    late_written: list[bool] = []
    with running(home) as tailer:
        assert tailer.poll(progress=append_once).staged == 30
        assert tailer._pool is not None and not pools[0].closed  # the late line is unread
        assert tailer.poll().staged == 1
        assert tailer._pool is None and pools[0].closed
        append(log, event_line())
        tailer.poll()
        assert len(pools) == 2  # a new backlog (over this home's 1 byte) starts them again
    assert load_checkpoint(home.state).staged == 32
