"""pipeline.files: a file is the one the checkpoint knows only when that is proven (same
inode and birth time, or the same bytes by CRC); a log deleted and written anew with the
same first line, even on the same inode, is a new file, read from its start."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import orjson
import polars as pl
from conftest import event_line, make_home

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import Home
from pipeline.stage import staged_files
from pipeline.tailer import Tailer

FIRST = b'{"event_type":"agent_token_usage","ts":"2025-03-01T12:00:00Z","agent":"a"}\n'


def alike(tag: str, n: int) -> bytes:
    """Lines that differ only in their id, placed first: their last 64 bytes are alike."""
    return orjson.dumps({"event_id": f"{tag}{n:05d}", "event_type": "agent_token_usage",
                         "ts": "2025-03-01T12:00:00Z", "agent": "a", "input_tokens": 1}) + b"\n"


def staged_ids(home: Home) -> list[str]:
    paths = [p for _, p in staged_files(home.stage, "agent_token_usage",
                                        load_checkpoint(home.state).watermark)]
    return pl.concat([pl.read_ipc(p) for p in paths])["event_id"].to_list() if paths else []


def tail(home: Home) -> int:
    with Tailer(home) as tailer:
        return tailer.poll().staged


def test_a_log_written_anew_with_the_same_first_line_is_read_from_its_start(
        home: Home) -> None:
    log = home.logs / "a.jsonl"
    log.write_bytes(FIRST + b"".join(alike("old", i) for i in range(49)))
    assert tail(home) == 50
    log.unlink()
    # Same first line, and the bytes before the old offset end alike: only the CRC of
    # everything read (or the birth time) tells the files apart.
    log.write_bytes(FIRST + b"".join(alike("new", i) for i in range(98)))
    assert tail(home) == 99
    ids = staged_ids(home)
    assert {f"new{i:05d}" for i in range(98)} <= set(ids)
    assert len(ids) == 50 + 99


def test_a_reused_inode_is_told_apart_by_birth_time_or_crc(home: Home) -> None:
    log = home.logs / "a.jsonl"
    log.write_bytes(FIRST + b"".join(alike("old", i) for i in range(10)))
    tail(home)
    log.unlink()
    log.write_bytes(FIRST + b"".join(alike("new", i) for i in range(20)))
    st = os.stat(log)
    for known_btime in (True, False):  # the file system keeps birth times, or not
        checkpoint = load_checkpoint(home.state)
        [key] = [k for k in checkpoint.files if not k.count("@")]
        checkpoint.files[key] = dataclasses.replace(
            checkpoint.files[key], dev=st.st_dev, ino=st.st_ino,  # as if reused
            btime=checkpoint.files[key].btime if known_btime else 0)
        save_checkpoint(home.state, checkpoint)
        assert tail(home) == (21 if known_btime else 0)  # read once, then nothing new
    assert {f"new{i:05d}" for i in range(20)} <= set(staged_ids(home))


def test_a_log_moved_to_another_inode_resumes_where_it_was(home: Home, tmp_path: Path) -> None:
    log = home.logs / "a.jsonl"
    first = [event_line() for _ in range(5)]
    log.write_bytes(b"".join(first))
    tail(home)
    moved = tmp_path / "elsewhere.jsonl"
    shutil.copyfile(log, moved)  # moved across devices: a copy, then the original deleted
    log.unlink()
    later = [event_line() for _ in range(3)]
    with open(moved, "ab") as handle:
        handle.write(b"".join(later))
    shutil.copyfile(moved, log)
    assert tail(home) == 3
    assert sorted(staged_ids(home)) == sorted(orjson.loads(x)["event_id"] for x in first + later)


def test_a_shorter_log_written_anew_under_the_old_name_is_new(home: Home) -> None:
    log = home.logs / "a.jsonl"
    log.write_bytes(FIRST + b"".join(alike("old", i) for i in range(30)))
    tail(home)
    log.unlink()
    log.write_bytes(FIRST + b"".join(alike("new", i) for i in range(4)))
    assert tail(home) == 5


def test_a_new_file_on_an_old_identity_gets_other_derived_ids(home: Home) -> None:
    log = home.logs / "a.jsonl"
    log.write_bytes(FIRST + FIRST.replace(b'"a"', b'"b"'))
    tail(home)
    log.unlink()
    log.write_bytes(FIRST + FIRST.replace(b'"a"', b'"c"'))
    tail(home)
    ids = staged_ids(home)
    assert len(ids) == len(set(ids)) == 4  # no id of the old file is reused


def test_forgetting_spares_the_files_another_reader_looks_after(tmp_path: Path) -> None:
    """`tally import` (logs=False) forgets no file of logs/, nor a tailer the files of a
    source it was not given."""
    from pipeline.checkpoint import FileState
    from pipeline.files import FileSet
    from pipeline.sources import Root

    home = make_home(tmp_path / "home")
    old = 0.0  # seen last in 1970
    states = {"log": FileState("log", "a.jsonl", 1, 1, last_seen=old),
              "ours": FileState("ours", "/src/p/s.jsonl", 1, 2, last_seen=old),
              "theirs": FileState("theirs", "/elsewhere/s.jsonl", 1, 3, last_seen=old)}
    importer = FileSet(home, lambda: states, lambda m: None, (Root("codex", "codex", "/src"),),
                       logs=False)
    assert importer.stale(states) == ["ours"]
    tailer = FileSet(home, lambda: states, lambda m: None)
    assert tailer.stale(states) == ["log"]
