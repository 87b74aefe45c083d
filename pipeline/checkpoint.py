"""The tailer's durable state: per-file offsets and the committed batch watermark."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import orjson

from pipeline.errors import DamagedFile, LockTimeout, display_path
from pipeline.stage import fsync_dir, rename_or_discard, temp_path, write_synced

CHECKPOINT = "checkpoint.json"
# The file of the checkpoint before the current one, kept to be written over by the next:
# a commit that allocates and frees no inode. On ext4 without a journal (this project's
# machines) each new inode is searched past every inode freed in the last 30 s or so, and
# a commit a batch frees one: after 1,000 one-line commits a new file took 1.5 ms.
SPARE = f".{CHECKPOINT}.spare"


DAMAGED_HINT = ("run `tally tail --once`: it sets the damaged file aside and resumes from the "
                "previous checkpoint, or reads every log again (events already staged or in "
                "the lake count once)")
CRCS_KEPT = 4  # commit points whose CRC a file state keeps: they tell earlier copies apart


def new_stream() -> str:
    """A fresh stream id: batch numbers count anew under it, so they never repeat one the
    lake holds (see `Watermark`)."""
    return secrets.token_hex(8)


class Watermark(NamedTuple):
    """Which stage batches are committed: those of `stream` numbered up to `batch`, and
    every batch of another stream (left by a checkpoint that was replaced)."""

    stream: str
    batch: int


@dataclass
class FileState:
    """Where reading of one file identity stands."""

    fingerprint: str  # the identity: a first-line hash, "@..." added when files share it
    path: str
    dev: int
    ino: int
    offset: int = 0
    marker: str = ""
    first_path: str = ""
    last_seen: float = 0.0
    btime: int = 0  # birth time in ns, 0 where the file system keeps none
    crc: int | None = None  # CRC-32 of the bytes [0, offset); None in older checkpoints
    crcs: list[list[int]] = field(default_factory=list)  # [offset, crc] of the last commits
    carry: dict[str, Any] | None = None  # what a source's importer keeps of earlier lines

    def advanced(self, offset: int, marker: str, crc: int | None,
                 carry: dict[str, Any] | None = None) -> FileState:
        """This state moved to a committed offset, with that offset's marker and CRC (and
        the importer's state after the lines before it)."""
        crcs = self.crcs if crc is None else [*self.crcs, [offset, crc]][-CRCS_KEPT:]
        return dataclasses.replace(self, offset=offset, marker=marker, crc=crc, crcs=crcs,
                                   last_seen=time.time(),
                                   carry=self.carry if carry is None else carry)


@dataclass
class Checkpoint:
    """Everything the tailer needs to resume exactly: files, watermark, totals."""

    batch: int = 0
    files: dict[str, FileState] = field(default_factory=dict)
    staged: int = 0
    quarantined: int = 0
    updated_at: str = ""
    stream: str = ""  # "" in checkpoints older than streams

    @property
    def watermark(self) -> Watermark:
        """The committed batches."""
        return Watermark(self.stream, self.batch)

    def to_json(self) -> bytes:
        """The checkpoint as JSON bytes."""
        # orjson serialises the dataclasses itself: no deep copy per commit (asdict's).
        try:
            return orjson.dumps(self, option=orjson.OPT_INDENT_2)
        except orjson.JSONEncodeError:  # a file name that is not UTF-8
            return orjson.dumps(self._encodable(), option=orjson.OPT_INDENT_2)

    def _encodable(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        for state in body["files"].values():
            state["path"], state["first_path"] = (encode_path(state["path"]),
                                                  encode_path(state["first_path"]))
        return body

    @classmethod
    def from_json(cls, raw: bytes) -> Checkpoint:
        """Parse a checkpoint written by `to_json`; ValueError or TypeError if it is not one."""
        body: dict[str, Any] = orjson.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("files", {}), dict):
            raise ValueError("not a checkpoint object")
        files = {fp: _file_state(state) for fp, state in body.pop("files", {}).items()}
        checkpoint = cls(files=files, **body)
        if not (isinstance(checkpoint.batch, int) and isinstance(checkpoint.stream, str)):
            raise ValueError("batch or stream of the wrong type")
        return checkpoint


def encode_path(path: str) -> str | dict[str, str]:
    """A path for JSON: itself, or its bytes in base64 when it is not UTF-8."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return {"base64": base64.b64encode(os.fsencode(path)).decode("ascii")}


def decode_path(value: str | dict[str, str]) -> str:
    """The path `encode_path` wrote."""
    if isinstance(value, dict):
        return os.fsdecode(base64.b64decode(value["base64"]))
    return value


def _file_state(state: dict[str, Any]) -> FileState:
    parsed = FileState(**state)
    parsed.path, parsed.first_path = decode_path(parsed.path), decode_path(parsed.first_path)
    if not isinstance(parsed.offset, int) or parsed.offset < 0:
        raise ValueError(f"bad offset {parsed.offset!r}")
    return parsed


def fresh_checkpoint() -> Checkpoint:
    """The checkpoint of a tailer that has read nothing, under a new stream."""
    return Checkpoint(stream=new_stream())


def load_checkpoint(state_dir: Path) -> Checkpoint:
    """The last committed checkpoint, or a fresh one; DamagedFile if it cannot be read."""
    path = state_dir / CHECKPOINT
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return fresh_checkpoint()
    try:
        return Checkpoint.from_json(raw)
    except (ValueError, TypeError, KeyError) as exc:  # orjson's decode error is a ValueError
        raise DamagedFile("the checkpoint", path, _first_line(exc), hint=DAMAGED_HINT) from exc


def read_watermark(state_dir: Path) -> Watermark:
    """The committed batches, for readers. If the checkpoint is damaged, every batch of the
    stream of the one before it counts: the damaged one committed more, and a crash's
    leftover read twice counts once (by event id). DamagedFile if neither can be read."""
    path = state_dir / CHECKPOINT
    try:
        with open(path, "rb") as handle:  # the batch number comes first: its head tells it
            st = os.fstat(handle.fileno())
            seen = (st.st_ino, st.st_mtime_ns, st.st_size, handle.read(WATERMARK_HEAD))
    except OSError:
        seen = None
    cached = _watermarks.get(str(path))
    if seen is not None and cached is not None and cached[0] == seen:
        return cached[1]  # a report asks once per table: thousands of file states each time
    try:
        watermark = load_checkpoint(state_dir).watermark
    except DamagedFile:
        previous = _previous_checkpoint(state_dir)
        if previous is None:
            raise
        return Watermark(previous.stream, sys.maxsize)
    if seen is not None:
        _watermarks[str(path)] = (seen, watermark)
    return watermark


# checkpoint path -> ((inode, mtime, size, head), its watermark). Two files take turns as
# the checkpoint (the spare), and a coarse mtime may not move between two commits; the
# head, holding the batch number, does.
_watermarks: dict[str, tuple[tuple[int, int, int, bytes], Watermark]] = {}
WATERMARK_HEAD = 64


def recover_checkpoint(state_dir: Path) -> tuple[Checkpoint, str | None]:
    """The checkpoint to resume from, and what was done if it was damaged: it is set aside,
    and the previous checkpoint (one batch older) or a fresh one takes its place."""
    try:
        return load_checkpoint(state_dir), None
    except DamagedFile as damaged:
        aside = state_dir / f"{CHECKPOINT}.damaged-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
        os.replace(state_dir / CHECKPOINT, aside)
        fsync_dir(state_dir)
        previous = _previous_checkpoint(state_dir)
        where = f"{damaged.message}; set aside as {display_path(aside.name)}"
        if previous is not None:
            told = (f"{where}; resuming from the checkpoint before it (batch "
                    f"{previous.batch}): its last batch is read again")
        else:
            told = (f"{where}; no earlier checkpoint: every log is read again from the start "
                    "(events already staged or in the lake count once, by event id)")
        chosen = previous or fresh_checkpoint()
        save_checkpoint(state_dir, chosen)  # the spare it came from is written over next
        return chosen, told


def _previous_checkpoint(state_dir: Path) -> Checkpoint | None:
    try:
        return Checkpoint.from_json((state_dir / SPARE).read_bytes())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


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
        with contextlib.suppress(OSError):  # who holds it is only for messages: a full disk
            os.ftruncate(fd, 0)            # must not keep a command from starting
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
