"""pipeline.workers: worker processes stage blocks exactly as the tailer's own process does."""

from __future__ import annotations

import gc
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import children, event_line, gone, make_home, tally_executable
from polars.testing import assert_frame_equal

from pipeline.checkpoint import ProcessLock, load_checkpoint
from pipeline.config import Home
from pipeline.events import Validator
from pipeline.frames import BlockStager
from pipeline.stage import StagedBlock
from pipeline.workers import (
    GC_YOUNG_ALLOCATIONS,
    POLARS_ALLOCATOR_ENV,
    BlockMoved,
    BlockSource,
    StagerPool,
    done_future,
    read_block,
)

SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"
LIMIT = 1 << 20
PREFIX = b"skip\n"  # blocks start past the file's first bytes: positions must carry over


def blocks() -> list[tuple[bytes, str]]:
    return [(path.read_bytes(), str(path.relative_to(SAMPLE_LOGS)))
            for path in sorted(SAMPLE_LOGS.rglob("*.jsonl"))]


def source_of(path: Path, block: bytes) -> BlockSource:
    """Write `block` after PREFIX to `path`: where a tailer would have read it."""
    path.write_bytes(PREFIX + block)
    st = os.stat(path)
    return BlockSource.of(block, str(path), st.st_dev, st.st_ino, len(PREFIX))


def frames(staged: StagedBlock) -> dict[str, pl.DataFrame]:
    found = {t: pl.read_ipc(io.BytesIO(ipc)) for t, ipc in staged.frames.items()}
    found.update({t: pl.read_ipc(io.BytesIO(part.read_bytes()))
                  for t, part in staged.parts.items()})
    return found


def without_times(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k != "detected_at"} for r in records]


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stage")


@pytest.fixture(scope="module")
def pool(stage_dir: Path) -> Iterator[StagerPool]:
    started = StagerPool(Validator().schemas, workers=2, stage_dir=stage_dir)
    yield started
    started.close()


def test_workers_stage_what_the_tailer_process_stages(pool: StagerPool, stage_dir: Path,
                                                      tmp_path: Path) -> None:
    stager = BlockStager(Validator())
    futures = [(pool.submit(source_of(tmp_path / f"{n}.jsonl", block), source, "p-", LIMIT),
                block, source) for n, (block, source) in enumerate(blocks())]
    assert len(futures) >= 5
    for future, block, source in futures:
        remote = future.result(timeout=60)
        local = stager.stage(block, len(PREFIX), source, "p-", LIMIT)
        assert remote.counts == local.counts
        assert without_times(remote.rejected) == without_times(local.rejected)
        assert not remote.frames and set(remote.parts) == set(local.frames)
        for event_type, frame in frames(local).items():
            assert remote.parts[event_type].parent == stage_dir / event_type
            assert remote.parts[event_type].name.startswith(".part-")
            assert_frame_equal(frames(remote)[event_type], frame)
    assert any(f.result().rejected for f, _, _ in futures)  # sample_logs/invalid is in there


def test_workers_keep_the_collector_off_their_imports(pool: StagerPool) -> None:
    threshold = pool._executor.submit(gc.get_threshold).result(timeout=60)
    frozen = pool._executor.submit(gc.get_freeze_count).result(timeout=60)
    assert threshold[0] == GC_YOUNG_ALLOCATIONS
    assert frozen > 10_000  # the imports' objects, out of every collection's walk


def allocator_settings(pool: StagerPool) -> dict[str, str]:
    """The options Polars' allocator took in a worker: of options given twice, the last."""
    conf = pool._executor.submit(os.getenv, POLARS_ALLOCATOR_ENV).result(timeout=60)
    return dict(option.split(":", 1) for option in conf.split(","))


def test_workers_give_polars_one_arena_without_thread_caches(pool: StagerPool) -> None:
    settings = allocator_settings(pool)
    assert settings["narenas"] == "1" and settings["tcache"] == "false"


def test_a_polars_allocator_setting_of_the_users_is_kept(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLARS_ALLOCATOR_ENV, "narenas:2")
    own = StagerPool(Validator().schemas, workers=1, stage_dir=tmp_path)
    try:
        settings = allocator_settings(own)
    finally:
        own.close()
    assert settings["narenas"] == "2" and settings["tcache"] == "false"


def _replaced(path: Path) -> None:
    other = path.with_name("other")
    other.write_bytes(path.read_bytes())
    os.replace(other, path)


def _truncated(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(len(PREFIX) + 10)


def _rewritten(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-2:-1] = b"!"  # same length, another last line
    with open(path, "r+b") as handle:
        handle.write(data)


@pytest.mark.parametrize("change", [_replaced, _truncated, _rewritten, Path.unlink],
                         ids=["replaced", "truncated", "rewritten", "deleted"])
def test_a_block_whose_file_changed_is_refused(pool: StagerPool, tmp_path: Path,
                                               change: Callable[[Path], None]) -> None:
    block, source = blocks()[0]
    path = tmp_path / "log.jsonl"
    where = source_of(path, block)
    change(path)
    with pytest.raises(BlockMoved):
        pool.submit(where, source, "p-", LIMIT).result(timeout=60)


def test_read_block_reads_what_the_tailer_read(tmp_path: Path) -> None:
    block = b'{"a":1}\n' * 100
    where = source_of(tmp_path / "log.jsonl", block)
    with open(tmp_path / "log.jsonl", "ab") as handle:
        handle.write(b"appended since\n")  # appends do not move a block
    assert read_block(where) == block


def test_a_killed_worker_breaks_the_pool_loudly(tmp_path: Path) -> None:
    pool = StagerPool(Validator().schemas, workers=1, stage_dir=tmp_path / "stage")
    empty = source_of(tmp_path / "empty.jsonl", b"")
    try:
        pool.submit(empty, "a", "p-", LIMIT).result(timeout=60)  # started
        for pid in list(pool._executor._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            pool.submit(empty, "a", "p-", LIMIT).result(timeout=60)
    finally:
        pool.close()


def test_done_future_holds_the_result() -> None:
    staged = StagedBlock(counts={"metric": 1})
    assert done_future(lambda: staged).result(timeout=0) is staged


def test_parts_of_a_block_that_cannot_be_written_are_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import frames as frames_module
    from pipeline import workers

    stage = tmp_path / "stage"
    monkeypatch.setattr(workers, "_stager", BlockStager(Validator()))
    monkeypatch.setattr(workers, "_stage_dir", stage)
    block = b"".join(path.read_bytes() for path in sorted(SAMPLE_LOGS.rglob("*.jsonl")))
    where = source_of(tmp_path / "log.jsonl", block)
    written: list[Path] = []
    sink = frames_module._sink_ipc

    def full_after_the_first(targets: list[tuple[Any, pl.DataFrame]]) -> None:
        sink(targets[:1])
        written.append(targets[0][0])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(frames_module, "_sink_ipc", full_after_the_first)
    with pytest.raises(OSError, match="No space"):
        workers._stage_in_worker(where, "log.jsonl", "p-", LIMIT)
    assert written and written[0].parent.parent == stage and not written[0].exists()
    assert not list(stage.rglob("*.tmp"))


def test_workers_fork_from_a_single_thread_and_spawn_beside_others(tmp_path: Path) -> None:
    code = ("import sys, threading\nfrom pathlib import Path\n"
            "from pipeline.schemas import load_schemas\nfrom pipeline.workers import StagerPool\n"
            "def method():\n"
            "    pool = StagerPool(load_schemas(), 1, Path(sys.argv[1]))\n"
            "    pool.close()\n"
            "    return pool.start_method\n"
            "alone = method()\n"
            "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
            "print(alone, method())\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "stage")], check=True,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["fork", "spawn"]


def _started_workers(tailer: subprocess.Popen[bytes] | subprocess.Popen[str], home: Home,
                     count: int) -> list[int]:
    """The tailer's workers, once they have staged blocks (so their start-up has run)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and tailer.poll() is None:
        workers = sorted(children(tailer.pid))
        if len(workers) >= count and load_checkpoint(home.state).batch >= 2 * count:
            return workers
        time.sleep(0.01)
    raise AssertionError("the tailer staged nothing with its workers")


def test_forked_workers_do_not_hold_a_killed_tailers_lock(tmp_path: Path) -> None:
    """A tailer killed by SIGKILL leaves workers for up to half a second; the next tailer
    must get the lock at once all the same."""
    home = make_home(tmp_path / "home", "[tailer]\nworkers = 1\nparallel_min_bytes = 1\n")
    with open(home.logs / "a.jsonl", "wb") as handle:
        handle.writelines(event_line() for _ in range(300_000))
    tailer = subprocess.Popen([tally_executable(), "tail", "--once", "--quiet",
                               "--home", str(home.root)])
    try:
        workers = _started_workers(tailer, home, 1)
    finally:
        tailer.kill()
        tailer.wait()
    lock = ProcessLock(home.state / "tailer.lock", "tailer").acquire(timeout=0)
    orphaned = not all(map(gone, workers))
    lock.release()
    assert orphaned  # a worker outlived the tailer, and yet the lock was free


def test_a_forked_worker_stopped_by_sigterm_dies_and_is_replaced(tmp_path: Path) -> None:
    """Forked workers inherit the tailer's SIGTERM handler (which only asks the tailer to
    stop); a worker sent SIGTERM (`pkill tally`) must die, and the tailer carry on."""
    home = make_home(tmp_path / "home", "[tailer]\nworkers = 2\nparallel_min_bytes = 1\n")
    with open(home.logs / "a.jsonl", "wb") as handle:
        handle.writelines(event_line() for _ in range(300_000))
    tailer = subprocess.Popen([tally_executable(), "tail", "--once", "--home", str(home.root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        workers = _started_workers(tailer, home, 2)
        os.kill(workers[0], signal.SIGTERM)
        _, stderr = tailer.communicate(timeout=120)
    finally:
        tailer.kill()
    assert tailer.returncode == 0, stderr
    assert "worker died" in stderr
    assert load_checkpoint(home.state).staged == 300_000
