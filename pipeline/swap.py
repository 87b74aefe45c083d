"""Swapping a rebuilt lake, stage, quarantine and state into a home, and finishing or
undoing a swap a kill interrupted.

The fresh parts are built in `<home>/.rebuild-<stamp>/` (pipeline.rebuild). When the build
is complete, an fsynced `READY` file in it becomes the swap's journal: each of the four
directories then moves with two renames, the old one into `<home>/.replaced-<stamp>/`.
After the last rename the old directories are deleted, or kept in
`<home>/rebuild-backup-<stamp>/`; the scratch directory and its journal go last.

A scratch directory without `READY` never had any part swapped in and is deleted; one with
`READY` is rolled forward, part by part, in the order of the swap. Every step can itself be
killed and done again. The tailer and compaction call `recover_interrupted_rebuild` before
they start, so a home is never worked on half old, half new.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType

import orjson

from pipeline.checkpoint import ProcessLock
from pipeline.config import Home, fault
from pipeline.errors import StorageError, display_path
from pipeline.identity import inode_at
from pipeline.stage import fsync_dir, write_atomic

# In the order of the swap: state/ last, so the old checkpoint stays in place (and locked)
# until everything it describes has been replaced.
PARTS = ("lake", "stage", "quarantine", "state")
SCRATCH_PREFIX = ".rebuild-"
RETIRED_PREFIX = ".replaced-"
BACKUP_PREFIX = "rebuild-backup-"
READY = "READY"
# Test hook of the kill tests: TALLY_FAULT=rebuild:<point>:<n> SIGKILLs this process the
# n-th time (default 1st) it reaches <point>: `before_swap` (journal written, nothing
# moved), `mid_swap` (after a rename, of a swap or of a recovery), `before_cleanup` (all
# moved, the old directories not yet deleted) or `mid_cleanup` (after deleting one of
# them). Never set in production.


def recover_interrupted_rebuild(home: Home, lock_timeout: float | None = None) -> list[str]:
    """Finish or undo what a killed rebuild left in the home; a line for each thing done.

    Takes the tailer lock (no wait) and the compaction lock (`lock_timeout`, default from
    config) itself, so call it before taking either; without leftovers it takes neither.
    """
    if not interrupted_rebuild(home):
        return []
    timeout = home.compactor.lock_timeout if lock_timeout is None else lock_timeout
    with SwapLocks(timeout) as locks:
        locks.cover(home.state)
        return recover(home, locks)


def interrupted_rebuild(home: Home) -> list[Path]:
    """The directories a killed rebuild left in the home (no lock taken, nothing read)."""
    if not home.root.is_dir():
        return []
    return sorted(p for p in home.root.iterdir()
                  if p.name.startswith((SCRATCH_PREFIX, RETIRED_PREFIX)) and p.is_dir())


def write_swap_journal(scratch: Path, keep: bool) -> None:
    """Mark a complete scratch home ready to swap in: from here a kill rolls forward."""
    # Whatever a power cut could still lose of the fresh lake must be on disk before the
    # old one starts moving out: Delta writes are not fsynced one by one.
    os.sync()
    body = orjson.dumps({"stamp": _stamp_of(scratch, SCRATCH_PREFIX), "keep": keep})
    write_atomic(scratch / READY, lambda handle: handle.write(body))
    fsync_dir(scratch)


def _keeps_old_parts(scratch: Path) -> bool:
    try:
        return bool(orjson.loads((scratch / READY).read_bytes()).get("keep", True))
    except (ValueError, AttributeError):
        return True  # a journal that cannot be read: keeping loses nothing


def _stamp_of(path: Path, prefix: str) -> str:
    return path.name[len(prefix):]


# ---------------------------------------------------------------- swapping and recovering


def recover(home: Home, locks: SwapLocks) -> list[str]:
    done = []
    for scratch in _leftovers(home, SCRATCH_PREFIX):
        if (scratch / READY).exists():
            backup = roll_forward(home, scratch, locks)
            kept = f"; the previous lake is kept in {display_path(backup)}" if backup else ""
            done.append(f"finished the rebuild {_stamp_of(scratch, SCRATCH_PREFIX)} that was "
                        f"interrupted while swapping in its lake{kept}")
        else:
            shutil.rmtree(scratch)
            done.append(f"removed {display_path(scratch)}: a rebuild interrupted before "
                        "its swap (nothing of it was in use)")
    for retired in _leftovers(home, RETIRED_PREFIX):
        missing = sorted(p.name for p in retired.iterdir()
                         if p.name in PARTS and not (home.root / p.name).exists())
        if missing:  # unreachable by tally itself: never delete the only copy
            done.append(f"kept {display_path(retired)}: the home has no "
                        f"{', '.join(missing)} of its own")
            continue
        _delete_retired(retired)
        done.append(f"removed {display_path(retired)}: the old lake of a finished rebuild")
    return done


def _leftovers(home: Home, prefix: str) -> list[Path]:
    return [p for p in interrupted_rebuild(home) if p.name.startswith(prefix)]


def roll_forward(home: Home, scratch: Path, locks: SwapLocks) -> Path | None:
    """Swap in every part still in the scratch, then drop or keep the old ones."""
    try:
        return _finish_swap(home, scratch, locks)
    except OSError as exc:
        raise StorageError(
            f"cannot swap in the rebuilt lake: {exc.strerror or exc}",
            path=exc.filename, errno_code=exc.errno,
            hint="fix the cause, then run `tally rebuild` again: it first finishes this "
                 f"swap (journal: {display_path(scratch / READY)})") from exc


def _finish_swap(home: Home, scratch: Path, locks: SwapLocks) -> Path | None:
    stamp = _stamp_of(scratch, SCRATCH_PREFIX)
    retired = home.root / f"{RETIRED_PREFIX}{stamp}"
    if (scratch / "state").is_dir():
        locks.cover(scratch / "state")
    for name in PARTS:
        _swap_part(home.root, scratch, retired, name)
    fault("rebuild", "before_cleanup")
    backup = home.root / f"{BACKUP_PREFIX}{stamp}"
    if not _keeps_old_parts(scratch):
        if retired.exists():
            _delete_retired(retired)
    elif retired.exists():
        _rename(retired, backup)
    shutil.rmtree(scratch)  # the journal goes last: nothing is left to swap
    fsync_dir(home.root)
    return backup if backup.is_dir() else None


def _swap_part(root: Path, scratch: Path, retired: Path, name: str) -> None:
    replacement = scratch / name
    if not replacement.exists():
        return  # swapped in already
    current = root / name
    if os.path.lexists(current):
        _rename(current, _retired_slot(root, retired, name))
    _rename(replacement, current)


def _retired_slot(root: Path, retired: Path, name: str) -> Path:
    """Where the part in place goes: retired/<name>, or <name>.<n> for a directory made in
    place after a kill (the old one is in retired/ already)."""
    if not retired.exists():
        retired.mkdir()
        fsync_dir(root)
    slot, n = retired / name, 1
    while slot.exists():
        slot = retired / f"{name}.{n}"
        n += 1
    return slot


def _rename(source: Path, target: Path) -> None:
    os.rename(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)
    fault("rebuild", "mid_swap")


def _delete_retired(retired: Path) -> None:
    for part in sorted(retired.iterdir()):
        if part.is_dir() and not part.is_symlink():
            shutil.rmtree(part)
        else:
            part.unlink()
        fault("rebuild", "mid_cleanup")
    retired.rmdir()


# ---------------------------------------------------------------- locks


class SwapLocks:
    """The tailer and compaction locks of every state/ directory a swap puts in place.

    A flock belongs to the open file, not its path: once state/ is renamed, a new process
    locks the file of whichever directory is called state/ now. Holding the locks of the
    old and the fresh state/ keeps every tailer and compaction out throughout the swap.
    """

    def __init__(self, compaction_timeout: float) -> None:
        self.compaction_timeout = compaction_timeout
        self._locks: list[ProcessLock] = []
        self._held: set[tuple[int, int]] = set()

    def cover(self, state: Path) -> None:
        """Hold the locks in `state` too (no-op for files already held)."""
        for name, what, timeout in (("tailer.lock", "tailer", 0.0),
                                    ("compact.lock", "compaction", self.compaction_timeout)):
            path = state / name
            if inode_at(path) in self._held:
                continue
            self._locks.append(ProcessLock(path, what).acquire(timeout))
            identity = inode_at(path)
            assert identity is not None  # acquire created it
            self._held.add(identity)

    def __enter__(self) -> SwapLocks:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for lock in reversed(self._locks):
            lock.release()



