"""pipeline.workers: worker processes stage blocks exactly as the tailer's own process does."""

from __future__ import annotations

import io
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.events import Validator
from pipeline.stage import BlockStager, StagedBlock
from pipeline.workers import StagerPool, done_future

SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"
LIMIT = 1 << 20


def blocks() -> list[tuple[bytes, str]]:
    return [(path.read_bytes(), str(path.relative_to(SAMPLE_LOGS)))
            for path in sorted(SAMPLE_LOGS.rglob("*.jsonl"))]


def frames(staged: StagedBlock) -> dict[str, pl.DataFrame]:
    return {t: pl.read_ipc(io.BytesIO(ipc)) for t, ipc in staged.frames.items()}


def without_times(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k != "detected_at"} for r in records]


@pytest.fixture(scope="module")
def pool() -> StagerPool:
    started = StagerPool(Validator().schemas, workers=2)
    yield started
    started.close()


def test_workers_stage_what_the_tailer_process_stages(pool: StagerPool) -> None:
    stager = BlockStager(Validator())
    futures = [(pool.submit(block, 5, source, "p-", LIMIT), block, source)
               for block, source in blocks()]
    assert len(futures) >= 5
    for future, block, source in futures:
        remote, local = future.result(timeout=60), stager.stage(block, 5, source, "p-", LIMIT)
        assert remote.counts == local.counts
        assert without_times(remote.rejected) == without_times(local.rejected)
        for event_type, frame in frames(local).items():
            assert_frame_equal(frames(remote)[event_type], frame)
    assert any(f.result().rejected for f, _, _ in futures)  # sample_logs/invalid is in there


def test_a_killed_worker_breaks_the_pool_loudly() -> None:
    pool = StagerPool(Validator().schemas, workers=1)
    try:
        pool.submit(b"", 0, "a", "p-", LIMIT).result(timeout=60)  # started
        for pid in list(pool._executor._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            pool.submit(b"", 0, "a", "p-", LIMIT).result(timeout=60)
    finally:
        pool.close()


def test_done_future_holds_the_result() -> None:
    staged = StagedBlock(counts={"metric": 1})
    assert done_future(lambda: staged).result(timeout=0) is staged
