"""The tailer's durable state: per-file offsets and the committed batch watermark."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import orjson

from pipeline.errors import LockTimeout
from pipeline.stage import fsync_dir, rename_or_discard, temp_path, write_synced

CHECKPOINT = "checkpoint.json"
# The file of the checkpoint before the current one, kept to be written over by the next:
# a commit that allocates and frees no inode. On ext4 without a journal (this project's
# machines) each new inode is searched past every inode freed in the last 30 s or so, and
# a commit a batch frees one: after 1,000 one-line commits a new file took 1.5 ms.
SPARE = f".{CHECKPOINT}.spare"


@dataclass
class FileState:
    """Where reading of one file identity stands."""

    fingerprint: str  # the identity: a first-line hash, plus "@dev:ino" when two files share it
    path: str
    dev: int
    ino: int
    offset: int = 0
    marker: str = ""
    first_path: str = ""
    last_seen: float = 0.0


@dataclass
class Checkpoint:
    """Everything the tailer needs to resume exactly: files, watermark, totals."""

    batch: int = 0
    files: dict[str, FileState] = field(default_factory=dict)
    staged: int = 0
    quarantined: int = 0
    updated_at: str = ""

    def to_json(self) -> bytes:
        """The checkpoint as JSON bytes."""
        # orjson serialises the dataclasses itself: no deep copy per commit (asdict's).
        return orjson.dumps(self, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes) -> Checkpoint:
        """Parse a checkpoint written by `to_json`."""
        body: dict[str, Any] = orjson.loads(raw)
        files = {fp: FileState(**state) for fp, state in body.pop("files", {}).items()}
        return cls(files=files, **body)


def load_checkpoint(state_dir: Path) -> Checkpoint:
    """The last committed checkpoint, or an empty one."""
    path = state_dir / CHECKPOINT
    try:
        return Checkpoint.from_json(path.read_bytes())
    except FileNotFoundError:
        return Checkpoint()


def save_checkpoint(state_dir: Path, checkpoint: Checkpoint) -> None:
    """Commit the checkpoint: temp file, fsync, rename, fsync the directory."""
    publish_checkpoint(state_dir, prepare_checkpoint(state_dir, checkpoint))


def prepare_checkpoint(state_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write the checkpoint to a temp file and fsync it; nothing is committed yet."""
    checkpoint.updated_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    body = checkpoint.to_json()
    _recycle_spare(state_dir)
    return write_synced(state_dir / CHECKPOINT, lambda handle: handle.write(body))


def publish_checkpoint(state_dir: Path, prepared: Path) -> None:
    """Commit a prepared checkpoint: rename it into place, fsync the directory."""
    live = state_dir / CHECKPOINT
    # The checkpoint being replaced keeps a name, so the next commit writes over its file.
    with contextlib.suppress(OSError):  # the first commit, or no hard links: a new file then
        os.link(live, state_dir / SPARE)
    rename_or_discard(prepared, live)
    fsync_dir(state_dir)


def _recycle_spare(state_dir: Path) -> None:
    """Move the spare file to where the temp file is written (truncated, not created)."""
    spare, live = state_dir / SPARE, state_dir / CHECKPOINT
    try:
        found = spare.stat()
    except FileNotFoundError:
        return
    try:
        current = live.stat()
        is_live = (found.st_dev, found.st_ino) == (current.st_dev, current.st_ino)
    except FileNotFoundError:
        is_live = False
    if is_live:  # a publish stopped between its link and its rename: a second name only
        spare.unlink()
    else:
        os.replace(spare, temp_path(live))


def committed_batch(state_dir: Path) -> int:
    """The batch watermark: stage and quarantine files up to it are committed."""
    return load_checkpoint(state_dir).batch


class ProcessLock:
    """An exclusive flock on a file in state/, released when the process dies."""

    _held: ClassVar[set[int]] = set()  # descriptors of the locks this process holds

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self, timeout: float = 0.0, poll: float = 0.1) -> ProcessLock:
        """Take the lock, waiting up to `timeout` seconds; LockTimeout if it stays held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise LockTimeout(self.what, path=self.path, waited=timeout,
                                      holder=holder) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._fd = fd
        self._held.add(fd)
        return self

    @classmethod
    def held_fds(cls) -> tuple[int, ...]:
        """The descriptors of every lock this process holds: a forked child must close
        them, or a lock outlives this process for as long as the child lives."""
        return tuple(sorted(cls._held))

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            self._held.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ProcessLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
