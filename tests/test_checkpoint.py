"""pipeline.checkpoint: the checkpoint round-trips, is committed atomically, and the process lock
is exclusive across processes, times out, and dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

import pipeline.stage as stage
from pipeline.checkpoint import (
    CHECKPOINT,
    SPARE,
    Checkpoint,
    FileState,
    ProcessLock,
    Watermark,
    decode_path,
    encode_path,
    load_checkpoint,
    prepare_checkpoint,
    publish_checkpoint,
    read_watermark,
    recover_checkpoint,
    save_checkpoint,
)
from pipeline.errors import DamagedFile, LockTimeout


def sample() -> Checkpoint:
    files = {
        "f" * 32: FileState("f" * 32, "a.jsonl", dev=2049, ino=123456, offset=4096,
                            marker="0123456789abcdef", first_path="a.jsonl",
                            last_seen=1_700_000_000.25, btime=1_700_000_000_123_456_789,
                            crc=0xDEADBEEF, crcs=[[2048, 17], [4096, 0xDEADBEEF]]),
        "e" * 32: FileState("e" * 32, "sub/b.jsonl.1", dev=2049, ino=7, offset=0,
                            first_path="sub/b.jsonl"),
    }
    return Checkpoint(batch=17, files=files, staged=1234, quarantined=5,
                      updated_at="2025-03-01T12:00:00.000+00:00", stream="5eed")


def test_round_trip_through_json() -> None:
    checkpoint = sample()
    raw = checkpoint.to_json()
    assert isinstance(orjson.loads(raw), dict)
    assert Checkpoint.from_json(raw) == checkpoint


def test_save_and_load(tmp_path: Path) -> None:
    fresh, again = load_checkpoint(tmp_path), load_checkpoint(tmp_path)
    assert (fresh.batch, fresh.files, fresh.staged, fresh.quarantined) == (0, {}, 0, 0)
    # each fresh checkpoint is a new stream: its batch numbers repeat none the lake holds
    assert len(fresh.stream) == 16 and fresh.stream != again.stream
    assert read_watermark(tmp_path).batch == 0
    checkpoint = sample()
    checkpoint.updated_at = ""
    save_checkpoint(tmp_path, checkpoint)
    assert checkpoint.updated_at  # stamped on save
    loaded = load_checkpoint(tmp_path)
    assert loaded == checkpoint
    assert loaded.watermark == read_watermark(tmp_path) == Watermark("5eed", 17)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


def test_leftover_temp_file_does_not_affect_load(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, sample())
    # a crash in the middle of the next save leaves a half-written temp file
    (tmp_path / f".{CHECKPOINT}.tmp").write_bytes(b'{"batch": 99, "files": {"tru')
    assert load_checkpoint(tmp_path).batch == 17
    newer = sample()
    newer.batch = 18
    save_checkpoint(tmp_path, newer)
    assert load_checkpoint(tmp_path).batch == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == [SPARE, CHECKPOINT]  # no temp file


def test_commits_write_over_the_previous_checkpoints_file(tmp_path: Path) -> None:
    """After the first two commits no commit creates or frees a file: they alternate
    between two inodes (cheap on ext4 without a journal, where new inodes are not)."""
    inodes = []
    for batch in range(1, 8):
        checkpoint = sample()
        checkpoint.batch = batch
        save_checkpoint(tmp_path, checkpoint)
        assert load_checkpoint(tmp_path).batch == batch
        inodes.append((tmp_path / CHECKPOINT).stat().st_ino)
    assert len(set(inodes)) == 2 and inodes[2:] == inodes[:2] * 2 + inodes[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SPARE, CHECKPOINT]


def test_a_spare_that_names_the_live_checkpoint_is_never_written(tmp_path: Path) -> None:
    """A publish stopped between its link and its rename leaves the spare as a second
    name of the live checkpoint: the next commit must not write its temp file over it."""
    save_checkpoint(tmp_path, sample())
    os.link(tmp_path / CHECKPOINT, tmp_path / SPARE)
    newer = sample()
    newer.batch = 18
    prepared = prepare_checkpoint(tmp_path, newer)
    assert load_checkpoint(tmp_path).batch == 17  # untouched until published
    publish_checkpoint(tmp_path, prepared)
    assert load_checkpoint(tmp_path).batch == 18


def test_save_interrupted_before_the_rename_keeps_the_old_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, sample())

    def killed(src: object, dst: object) -> None:
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(stage.os, "replace", killed)
    newer = sample()
    newer.batch = 18
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, newer)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).batch == 17


def test_save_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
        events.append(f"fsync-{kind}")
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append("rename")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(stage.os, "fsync", fsync)
    monkeypatch.setattr(stage.os, "replace", replace)
    save_checkpoint(tmp_path, sample())
    assert events == ["fsync-file", "rename", "fsync-dir"]


# --------------------------------------------------------------------------------------------
# ProcessLock
# --------------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline.checkpoint import ProcessLock
    lock = ProcessLock(Path(sys.argv[1]), "tailer").acquire(timeout=float(sys.argv[2]))
    print("locked", flush=True)
    sys.stdin.read()  # hold until the parent closes our stdin
    lock.release()
    print("released", flush=True)
""")


def spawn_holder(path: Path, timeout: float = 0.0) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(timeout)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tailer.lock"
    holder = spawn_holder(path)
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as raised:
            ProcessLock(path, "tailer").acquire(timeout=0.5, poll=0.05)
        waited = time.monotonic() - started
        assert 0.45 <= waited < 5
        assert f"pid {holder.pid}" in str(raised.value)
        assert raised.value.exit_code == 75
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "released"
        holder.wait(timeout=10)
    with ProcessLock(path, "tailer").acquire() as lock:
        assert path.read_text() == f"pid {os.getpid()}"
        assert lock is not None


def test_lock_waits_for_a_holder_that_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "tailer.lock"
    first = ProcessLock(path, "tailer").acquire()
    # the child waits up to 10 s; we release after a moment
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "10"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        time.sleep(0.3)
        assert process.poll() is None
        first.release()
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "locked"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=10)


def test_lock_dies_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "tailer.lock"
    holder = spawn_holder(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    lock = ProcessLock(path, "tailer").acquire(timeout=2)
    lock.release()


def test_lock_in_the_same_process_is_exclusive_and_releasable(tmp_path: Path) -> None:
    path = tmp_path / "tailer.lock"
    with ProcessLock(path, "compactor").acquire():
        with pytest.raises(LockTimeout) as raised:
            ProcessLock(path, "compactor").acquire()
        assert "another compactor is running" in str(raised.value)
    again = ProcessLock(path, "compactor").acquire()
    again.release()
    again.release()  # idempotent


def test_held_fds_lists_every_lock_this_process_holds(tmp_path: Path) -> None:
    before = set(ProcessLock.held_fds())
    with ProcessLock(tmp_path / "a.lock", "a").acquire() as first, \
            ProcessLock(tmp_path / "b.lock", "b").acquire():
        held = set(ProcessLock.held_fds()) - before
        assert len(held) == 2
        first.release()
        assert len(set(ProcessLock.held_fds()) - before) == 1
    assert set(ProcessLock.held_fds()) == before


# ------------------------------------------------------------------ damage and recovery


def committed_twice(state_dir: Path) -> Checkpoint:
    """Two commits: the live checkpoint (batch 2) and the spare (batch 1) beside it."""
    checkpoint = Checkpoint(stream="ab12", files={"fp": FileState("fp", "a.jsonl", 1, 2, 10)})
    for batch in (1, 2):
        checkpoint.batch = batch
        save_checkpoint(state_dir, checkpoint)
    return checkpoint


@pytest.mark.parametrize("damage", [b"", b"{\"batch\": 2, \"fil", b"\x00\xff", b"[1, 2]",
                                    b'{"batch": "two", "stream": "ab12"}',
                                    b'{"files": {"fp": {"path": "a"}}}'])
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path: Path, damage: bytes) -> None:
    committed_twice(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(damage)
    with pytest.raises(DamagedFile) as raised:
        load_checkpoint(tmp_path)
    assert str(tmp_path / CHECKPOINT) in raised.value.message
    assert "\n" not in raised.value.message and "tally tail" in (raised.value.hint or "")


def test_readers_of_a_damaged_checkpoint_count_every_batch_of_its_stream(
        tmp_path: Path) -> None:
    committed_twice(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"garbage")
    watermark = read_watermark(tmp_path)
    assert watermark.stream == "ab12" and watermark.batch >= 2**62
    (tmp_path / SPARE).write_bytes(b"garbage")
    with pytest.raises(DamagedFile):
        read_watermark(tmp_path)


def test_the_tailer_resumes_from_the_checkpoint_before_a_damaged_one(tmp_path: Path) -> None:
    committed_twice(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"garbage")
    resumed, told = recover_checkpoint(tmp_path)
    assert (resumed.stream, resumed.batch) == ("ab12", 1)
    assert told is not None and "batch 1" in told and "set aside" in told
    [aside] = tmp_path.glob(f"{CHECKPOINT}.damaged-*")
    assert aside.read_bytes() == b"garbage"
    assert load_checkpoint(tmp_path).batch == 1  # in place again, before any new batch


def test_without_an_earlier_checkpoint_everything_is_read_again(tmp_path: Path) -> None:
    committed_twice(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"garbage")
    (tmp_path / SPARE).unlink()
    resumed, told = recover_checkpoint(tmp_path)
    assert resumed.batch == 0 and resumed.files == {} and resumed.stream != "ab12"
    assert told is not None and "every log is read again" in told


def test_a_healthy_checkpoint_is_resumed_as_it_is(tmp_path: Path) -> None:
    committed_twice(tmp_path)
    resumed, told = recover_checkpoint(tmp_path)
    assert told is None and resumed.batch == 2


def test_paths_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    odd = os.fsdecode(b"logs/bad\xff.jsonl")
    checkpoint = Checkpoint(stream="ab", files={"fp": FileState("fp", odd, 1, 2, 3,
                                                                first_path=odd)})
    save_checkpoint(tmp_path, checkpoint)
    loaded = load_checkpoint(tmp_path)
    assert loaded.files["fp"].path == odd and loaded.files["fp"].first_path == odd
    assert decode_path(encode_path(odd)) == odd and encode_path("plain") == "plain"


def test_a_full_disk_does_not_keep_a_lock_from_being_taken(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    lock = ProcessLock(tmp_path / "x.lock", "test").acquire()
    lock.release()


def test_the_watermark_is_read_again_after_every_commit(tmp_path: Path) -> None:
    """Readers keep the last watermark per checkpoint file; the two files that take turns
    (the spare) can come back with the same size and, on a coarse clock, the same mtime."""
    state = tmp_path / "state"
    state.mkdir()
    for batch in (11, 12, 13, 14, 15):  # the same length each time
        save_checkpoint(state, Checkpoint(batch=batch, stream="s"))
        path = state / CHECKPOINT
        os.utime(path, ns=(10**18, 10**18))  # one mtime for every commit
        assert read_watermark(state) == Watermark("s", batch)
        assert read_watermark(state) == Watermark("s", batch)
