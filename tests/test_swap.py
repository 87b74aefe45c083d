"""pipeline.swap: a rebuild's swap killed anywhere is rolled forward by the next recovery,
which holds the locks of every state/ it puts in place; leftovers of a build that never
swapped, and old parts of a finished swap, are removed (backups never).

The homes and the in-process kills (the fault hook raising `Killed`) are those of
test_rebuild; a real `tally rebuild` under SIGKILL is tested there.
"""

from __future__ import annotations

import re
import shutil

import pytest
from test_rebuild import (
    Killed,
    append,
    assert_consistent,
    backups,
    busy_home,
    kill_at,
    part_ids,
    probe_locks,
    report,
    tail,
    usage,
)

from pipeline.checkpoint import ProcessLock
from pipeline.config import Home
from pipeline.errors import LockTimeout
from pipeline.rebuild import run_rebuild
from pipeline.swap import interrupted_rebuild, recover_interrupted_rebuild
from pipeline.tailer import Tailer


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TALLY_HOME", "TALLY_DEBUG", "TALLY_FAULT"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------- locks


@pytest.mark.parametrize("nth", [1, 6, 7])
def test_a_recovery_holds_the_locks_of_the_state_it_swaps_in(
        home: Home, monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    append(home, "a.jsonl", [usage(f"a-{i}") for i in range(3)])
    tail(home)
    kill_at(monkeypatch, "mid_swap", nth)
    with pytest.raises(Killed):
        run_rebuild(home)
    taken = probe_locks(home, monkeypatch)
    assert len(recover_interrupted_rebuild(home)) == 1
    assert taken == ["tailer.lock", "compact.lock"]
    ProcessLock(home.state / "tailer.lock", "tailer").acquire(0).release()


# ------------------------------------------------------------------------------- recovery


SWAP_KILLS = [("before_swap", 1), *(("mid_swap", n) for n in range(1, 8)),
              ("before_cleanup", 1), ("mid_cleanup", 1), ("mid_cleanup", 4)]


@pytest.mark.parametrize(("point", "nth"), SWAP_KILLS)
def test_a_swap_killed_anywhere_is_rolled_forward(
        home: Home, monkeypatch: pytest.MonkeyPatch, point: str, nth: int) -> None:
    busy_home(home)
    totals, old = report(home), part_ids(home.root)
    kill_at(monkeypatch, point, nth)
    with pytest.raises(Killed):
        run_rebuild(home)
    assert any(p.name.startswith(".rebuild-") for p in interrupted_rebuild(home))
    monkeypatch.undo()
    done = recover_interrupted_rebuild(home)
    assert len(done) == 1 and re.match(r"finished the rebuild \S+ that was interrupted "
                                       r"while swapping in its lake$", done[0]), done
    assert backups(home) == []
    assert_consistent(home, totals, old, new=True)


@pytest.mark.parametrize(("point", "nth"), [("mid_swap", 3), ("before_cleanup", 1)])
def test_a_forced_swap_killed_keeps_its_backup(
        home: Home, monkeypatch: pytest.MonkeyPatch, point: str, nth: int) -> None:
    busy_home(home)
    totals, old = report(home), part_ids(home.root)
    kill_at(monkeypatch, point, nth)
    with pytest.raises(Killed):
        run_rebuild(home, force=True)
    monkeypatch.undo()
    (done,) = recover_interrupted_rebuild(home)
    (backup,) = backups(home)
    assert done.endswith(f"; the previous lake is kept in {backup}")
    assert part_ids(backup) == old
    assert_consistent(home, totals, old, new=True)


@pytest.mark.parametrize(("first", "second"), [
    (("mid_swap", 1), ("mid_swap", 1)),
    (("mid_swap", 4), ("mid_swap", 2)),
    (("mid_swap", 7), ("mid_swap", 1)),  # the kill left no state/: the locks make a new one
    (("before_swap", 1), ("before_cleanup", 1)),
    (("mid_swap", 5), ("mid_cleanup", 2)),
])
def test_a_recovery_killed_is_finished_by_the_next(
        home: Home, monkeypatch: pytest.MonkeyPatch, first: tuple[str, int],
        second: tuple[str, int]) -> None:
    busy_home(home)
    totals, old = report(home), part_ids(home.root)
    kill_at(monkeypatch, *first)
    with pytest.raises(Killed):
        run_rebuild(home)
    kill_at(monkeypatch, *second)
    with pytest.raises(Killed):
        recover_interrupted_rebuild(home)
    monkeypatch.undo()
    assert len(recover_interrupted_rebuild(home)) >= 1
    assert_consistent(home, totals, old, new=True)


def test_an_unfinished_build_is_deleted_and_the_home_left_as_it_was(home: Home) -> None:
    busy_home(home)
    totals, old = report(home), part_ids(home.root)
    scratch = home.root / ".rebuild-20250101T000000Z"
    shutil.copytree(home.lake, scratch / "lake")  # a build killed before its journal
    (scratch / "state").mkdir()
    (done,) = recover_interrupted_rebuild(home)
    assert done == f"removed {scratch}: a rebuild interrupted before its swap " \
                   "(nothing of it was in use)"
    assert_consistent(home, totals, old, new=False)


def test_old_parts_of_a_finished_swap_are_deleted_and_backups_never_touched(
        home: Home) -> None:
    busy_home(home)
    retired = home.root / ".replaced-20250101T000000Z"
    shutil.copytree(home.lake, retired / "lake")
    backup = home.root / "rebuild-backup-20240101T000000Z"
    shutil.copytree(home.lake, backup / "lake")
    (done,) = recover_interrupted_rebuild(home)
    assert done == f"removed {retired}: the old lake of a finished rebuild"
    assert not retired.exists() and backups(home) == [backup]
    assert recover_interrupted_rebuild(home) == []


def test_old_parts_the_home_lacks_are_kept(home: Home) -> None:
    busy_home(home)
    retired = home.root / ".replaced-20250101T000000Z"
    retired.mkdir()
    home.quarantine.rename(retired / "quarantine")
    (done,) = recover_interrupted_rebuild(home)
    assert done == f"kept {retired}: the home has no quarantine of its own"
    assert (retired / "quarantine").is_dir()


def test_recovery_waits_for_no_lock_when_there_is_nothing_to_do(home: Home) -> None:
    with Tailer(home):
        assert recover_interrupted_rebuild(home) == []
        (home.root / ".rebuild-20250101T000000Z").mkdir()
        with pytest.raises(LockTimeout, match="another tailer is running"):
            recover_interrupted_rebuild(home)
    assert len(recover_interrupted_rebuild(home)) == 1
