"""pipeline.follow: a following tailer outlives a full disk. It says so once, keeps
retrying with a growing wait, and stages every line once there is room, exactly once."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import event_line, fill, make_home, small_tmpfs, tally_executable

from pipeline.checkpoint import load_checkpoint
from pipeline.errors import StorageError
from pipeline.follow import RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, _Retry
from pipeline.lake import scan_events


def test_a_refused_write_is_told_once_and_the_wait_grows_to_its_cap() -> None:
    told: list[str] = []
    retry = _Retry(told.append)
    error = StorageError("cannot write a batch: No space left on device", path="/x/stage",
                         hint="free space")
    waits = [retry.failed(error) for _ in range(12)]
    assert waits[0] == RETRY_FIRST_SECONDS and waits[1] == 2 * RETRY_FIRST_SECONDS
    assert max(waits) == RETRY_MAX_SECONDS and waits == sorted(waits)
    assert len(told) == 1 and "No space left on device" in told[0] and "/x/stage" in told[0]
    retry.succeeded()
    assert len(told) == 2 and "again" in told[1]
    assert retry.failed(error) == RETRY_FIRST_SECONDS and len(told) == 3


def staged_events(home_root: Path) -> int:
    from pipeline.config import load_home

    frame = scan_events(load_home(home_root), "agent_token_usage")
    return 0 if frame is None else int(frame.collect().height)


@pytest.mark.slow
def test_a_follower_survives_a_full_disk_and_loses_nothing(tmp_path: Path) -> None:
    logs = tmp_path / "logs"  # the logs on another disk than the home
    logs.mkdir()
    with small_tmpfs(tmp_path / "disk", "6m") as disk:
        home = make_home(disk / "home", f'[paths]\nlogs = "{logs}"\n'
                                        "[tailer]\nrescan_seconds = 0.2\n")
        (logs / "a.jsonl").write_bytes(b"".join(event_line() for _ in range(50)))
        follower = subprocess.Popen([tally_executable(), "tail", "--home", str(home.root)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for_staged(home.root, 50)
            filler = fill(disk)
            with open(logs / "a.jsonl", "ab") as handle:
                handle.write(b"".join(event_line() for _ in range(300)))
            time.sleep(3)  # several polls fail meanwhile
            assert follower.poll() is None
            assert load_checkpoint(home.state).staged == 50
            filler.unlink()
            assert wait_for_staged(home.root, 350)
        finally:
            follower.send_signal(signal.SIGTERM)
            _, stderr = follower.communicate(timeout=60)
        assert follower.returncode == 0, stderr
        # The refusal is told once; live.json, written after a batch that landed just
        # before the disk filled, may say its own once too.
        told = [line for line in stderr.splitlines() if "No space left on device" in line]
        assert sum("cannot write a batch" in line for line in told) == 1, stderr
        assert len(told) == len(set(told)) <= 2, stderr
        assert "writing works again" in stderr and "Traceback" not in stderr
        assert staged_events(home.root) == 350


def wait_for_staged(root: Path, count: int, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if load_checkpoint(root / "state").staged >= count:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False
