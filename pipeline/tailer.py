"""The validating tailer: follows JSONL files under logs/, stages valid lines, quarantines the rest.

Exactly-once rests on three rules. A batch's stage and quarantine files are written and
fsynced before the checkpoint that covers them is renamed into place; files above the
checkpoint's batch watermark are crash leftovers and get deleted; and a file is known by a
fingerprint of its first line, so rotation, copies and restarts resume at the right offset.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.checkpoint import (
    Checkpoint,
    FileState,
    ProcessLock,
    load_checkpoint,
    prepare_checkpoint,
    publish_checkpoint,
    save_checkpoint,
)
from pipeline.config import Home
from pipeline.events import Rejection, Validator
from pipeline.intake import quarantine_record, too_long_record
from pipeline.stage import (
    StagedBlock,
    batch_name,
    fsync_dir,
    fsync_path,
    remove_orphans,
    rename_or_discard,
    write_quarantine,
    write_stage_bytes,
)
from pipeline.workers import BlockMoved, BlockSource, StagerPool, done_future

if TYPE_CHECKING:
    from pipeline.frames import BlockStager

FINGERPRINT_BYTES = 4096
MARKER_BYTES = 64
READ_CHUNK = 4 << 20
FORGET_AFTER_SECONDS = 7 * 86400
STOP_CHECK_SECONDS = 0.2
COMMIT_WRITERS = 8
IN_FLIGHT_PER_WORKER = 2  # sealed batches read ahead of the commit, per worker
# With workers, reads are sized to fill a batch (see Tailer._read_size), up to this.
READ_CAP = 64 << 20
# A file with less than this to read counts for nothing towards starting workers: its
# blocks are too small to pay for a worker's round trip, and would end a batch each.
WORKER_MIN_FILE_BYTES = 1 << 20
LINE_ESTIMATE_MIN_LINES = 16  # a block this long or longer updates the mean line length

Notify = Callable[[str], None]
Progress = Callable[[int, int], None]  # (bytes committed, bytes to read) in one pass


def fingerprint_of(fd: int) -> str | None:
    """Hash of the first line (or first 4 KiB); None until the first line is complete."""
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    newline = head.find(b"\n")
    if newline >= 0:
        head = head[: newline + 1]
    elif len(head) < FINGERPRINT_BYTES:
        return None
    return hashlib.sha256(head).hexdigest()[:32]


def cut_lines(chunk: bytes, end: int, room: int, line_bytes: int) -> tuple[int, int]:
    """Where the first `room` lines of `chunk[:end]` end (all of them if fewer), and how
    many lines that is. `chunk[:end]` ends in a newline.

    Counting newlines costs about 1 ms a MiB, so the bytes counted are those `line_bytes`
    (the expected line length) says are needed; a guess that went too far narrows the
    window and sharpens the estimate from the lines it found there. Guesses aim 1 % short:
    counting the few lines left costs less than counting again a window that went too far
    (1.00 against 1.32 bytes counted a byte cut, on generated logs).
    """
    cut = lines = 0
    limit, per_line = end, max(1, line_bytes)
    while lines < room and cut < end:
        guess = cut + (room - lines) * per_line * 99 // 100
        step = limit if guess >= limit else chunk.rfind(b"\n", cut, guess) + 1
        if step <= cut:  # the next line is longer than guessed: take it whole
            step = chunk.find(b"\n", cut) + 1
        found = chunk.count(b"\n", cut, step)
        per_line = max(1, (step - cut) // found)
        if lines + found > room:  # too far: the cut lies before `step`
            limit = step
            continue
        cut, lines = step, lines + found
    return cut, lines


def derived_id_prefix(identity: str) -> str:
    """The start of the event_id given to a line without one: `<identity hash>-<offset>`."""
    if "@" in identity:  # a file sharing its first line with another: hash the whole identity
        identity = hashlib.sha256(identity.encode()).hexdigest()
    return identity[:16] + "-"


def _inodes(paths: Iterable[str]) -> set[tuple[int, int]]:
    found = set()
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            found.add((st.st_dev, st.st_ino))
    return found


def marker_at(fd: int, offset: int) -> str:
    """Hash of the bytes just before `offset`: detects a file rewritten under the checkpoint."""
    start = max(0, offset - MARKER_BYTES)
    return hashlib.sha256(os.pread(fd, offset - start, start)).hexdigest()[:16]


@dataclass
class OpenFile:
    """A followed file: its descriptor stays open through renames and deletion."""

    fd: int
    state: FileState
    path: str
    seen: bool = True
    checked: tuple[int, int] | None = None  # (size, mtime_ns) when last checked for rewrites


@dataclass
class PollResult:
    """What one pass staged and quarantined."""

    staged: int = 0
    quarantined: int = 0
    batches: int = 0
    files: int = 0
    bytes: int = 0  # of the logs, read and committed


@dataclass
class _Segment:
    """Lines of one file handed to the checker; `redo` checks them again in this process."""

    future: Future[StagedBlock]
    redo: Callable[[], StagedBlock]


@dataclass
class _Pending:
    """A batch being gathered: checked segments, rejects found here, offsets reached."""

    segments: list[_Segment] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    lines: int = 0


class Tailer:
    """Reads complete lines from the logs directory into stage/ and quarantine/, exactly once."""

    def __init__(self, home: Home, validator: Validator | None = None,
                 notify: Notify | None = None, lock_timeout: float = 0.0) -> None:
        self.home = home
        self.settings = home.tailer
        self.validator = validator or Validator()
        self.notify = notify or (lambda message: None)
        for directory in (home.logs, home.stage, home.quarantine, home.state):
            directory.mkdir(parents=True, exist_ok=True)  # logs too: the observer needs it
        self._lock = ProcessLock(home.state / "tailer.lock", "tailer").acquire(lock_timeout)
        self.checkpoint: Checkpoint = load_checkpoint(home.state)
        types = self.validator.schemas.types
        remove_orphans([home.stage / t for t in types] + [home.quarantine],
                       above=self.checkpoint.batch)
        self._pool: StagerPool | None = None
        # Writes a batch's stage and quarantine files while this thread writes the
        # checkpoint's temp file: their fsyncs overlap instead of following one another.
        self._writers = ThreadPoolExecutor(COMMIT_WRITERS, thread_name_prefix="tally-commit")
        self._sealed: deque[_Pending] = deque()  # full batches whose checks may still run
        self._open: dict[str, OpenFile] = {}
        self._pending = _Pending()
        self._line_bytes = 256  # mean line length of the last long block: where the next ends
        self._progress: Callable[[int], None] | None = None
        self._logs_real = os.path.realpath(home.logs)
        self.stop = threading.Event()
        self._warned: set[str] = set()
        self._live: set[tuple[int, int]] = set()  # (dev, ino) of every file the last scan saw

    @functools.cached_property
    def _stager(self) -> BlockStager:
        """Types lines in this process: Polars loads on first use, so a catch-up whose
        workers type every line never loads it here (0.14 s and 35 MB)."""
        from pipeline.frames import BlockStager

        return BlockStager(self.validator)

    def prepare_to_type(self) -> None:
        """Load what typing lines in this process needs, ahead of the first line."""
        _ = self._stager

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close followed files and release the lock (the checkpoint is already committed)."""
        try:
            for handle in self._open.values():
                with contextlib.suppress(OSError):
                    os.close(handle.fd)
            self._open.clear()
            self._stop_pool()
        finally:
            self._writers.shutdown(wait=True)
            self._lock.release()

    def __enter__(self) -> Tailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ one pass

    def poll(self, only: Iterable[str] | None = None,
             progress: Progress | None = None) -> PollResult:
        """Discover files (all, or just `only`), read every complete line, commit in batches.

        `progress(done, total)` is told after each batch how many bytes of the logs are
        committed, of those there were to read when the pass began.
        """
        result = PollResult()
        full_scan = only is None
        paths = self.discover() if only is None else [p for p in only if self._wanted(p)]
        if full_scan:
            self._live = _inodes(paths)
            for handle in self._open.values():
                handle.seen = False
        for path in paths:
            self._follow(path)
        unread = self._unread()
        total = sum(unread)
        self._progress = (lambda done: progress(done, total)) if progress else None
        threshold = self.settings.parallel_min_bytes
        least = min(WORKER_MIN_FILE_BYTES, threshold)
        if not self.stop.is_set() and sum(n for n in unread if n >= least) >= threshold:
            self._start_pool()
        for fingerprint in list(self._open):
            if self.stop.is_set():
                break
            self._read(fingerprint, result)
        self._commit(result)
        # Caught up: idle workers would only hold memory (about 75 MB each), and a live
        # tail's few lines are checked in this process. Half the threshold: a backlog
        # hovering near it does not start and stop them every poll.
        if self._pool is not None and self.lag_bytes() <= threshold // 2:
            self._stop_pool()
        if full_scan and not self.stop.is_set():  # a stopped read may have left whole lines
            self._retire_idle(result)
            self._forget_stale()
        result.files = len(self._open)
        return result

    def lag_bytes(self) -> int:
        """Bytes present in followed files but not yet consumed."""
        return sum(self._unread())

    def _unread(self) -> list[int]:
        """Each followed file's bytes not yet consumed."""
        unread = []
        for handle in self._open.values():
            with contextlib.suppress(OSError):
                unread.append(max(0, os.fstat(handle.fd).st_size - handle.state.offset))
        return unread

    # ------------------------------------------------------------ discovery

    def discover(self) -> list[str]:
        """Paths under logs/ matching the include patterns, symlinks kept inside logs/."""
        found: list[str] = []
        for directory, _dirs, names in os.walk(self.home.logs, followlinks=False):
            for name in names:
                path = os.path.join(directory, name)
                if self._wanted(path):
                    found.append(path)
        return sorted(found)

    def _wanted(self, path: str) -> bool:
        name = os.path.basename(path)
        if not any(fnmatch.fnmatch(name, pattern) for pattern in self.home.include):
            return False
        real = os.path.realpath(path)
        if real != self._logs_real and not real.startswith(self._logs_real + os.sep):
            self._warn_once(path, f"{path}: symlink leads outside the logs directory; skipped")
            return False
        return True

    def _follow(self, path: str) -> str | None:
        """Open `path` unless it is followed already; the fingerprint newly opened, if any."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        for handle in self._open.values():
            if (handle.state.dev, handle.state.ino) == (st.st_dev, st.st_ino):
                handle.seen = True
                if not os.path.islink(path):  # an alias does not rename the file
                    handle.path = path
                    handle.state.path = self._relative(path)
                return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self._warn_once(path, f"{path}: cannot open ({exc.strerror}); will retry")
            return None
        try:
            st = os.fstat(fd)  # what was opened, not what was stat'ed a moment before
            fingerprint = fingerprint_of(fd) if stat.S_ISREG(st.st_mode) else None
        except OSError:
            fingerprint = None
        identity = None if fingerprint is None else self._identity(fingerprint, fd, st)
        if identity is None or identity in self._open:
            os.close(fd)  # not readable yet, or a copy of a file already followed
            return None
        self._warned.discard(path)
        state = self.checkpoint.files.get(identity)
        relative = self._relative(path)
        if state is None:
            state = FileState(identity, relative, st.st_dev, st.st_ino, first_path=relative)
        else:
            offset = self._verified_offset(fd, state, st)
            if offset != state.offset:
                state.offset, state.marker = offset, marker_at(fd, offset)
            state.dev, state.ino, state.path = st.st_dev, st.st_ino, relative
        state.last_seen = time.time()
        self._open[identity] = OpenFile(fd, state, path)
        return identity

    def _identity(self, fingerprint: str, fd: int, st: os.stat_result) -> str:
        """The fingerprint names a file unless another live file with other content owns it.

        Two files may start with the same line. The second is its own identity,
        `<fingerprint>@<dev>:<ino>`, unless its bytes up to the owner's offset are the
        owner's (a copy, or the owner renamed across devices).
        """
        by_inode = f"{fingerprint}@{st.st_dev}:{st.st_ino}"
        if by_inode in self.checkpoint.files or by_inode in self._open:
            return by_inode
        handle = self._open.get(fingerprint)
        owner = handle.state if handle else self.checkpoint.files.get(fingerprint)
        if owner is None or (owner.dev, owner.ino) == (st.st_dev, st.st_ino):
            return fingerprint
        if handle is not None and fingerprint_of(handle.fd) != fingerprint:
            return fingerprint  # the owner was rewritten: decide once it is followed anew
        # The owner lives on if it is open, or if its inode still exists and is not followed
        # under another identity (truncated and rewritten, its old content is gone).
        open_inodes = {(h.state.dev, h.state.ino) for h in self._open.values()}
        owner_inode = (owner.dev, owner.ino)
        owner_alive = handle is not None or (
            owner_inode in self._live and owner_inode not in open_inodes)
        if st.st_size >= owner.offset:
            same_bytes = marker_at(fd, owner.offset) == owner.marker
        else:  # a shorter copy: compare with the owner's bytes at the copy's end, if open
            same_bytes = handle is not None and (
                marker_at(fd, st.st_size) == marker_at(handle.fd, st.st_size))
        return by_inode if owner_alive and not same_bytes else fingerprint

    def _verified_offset(self, fd: int, state: FileState, st: os.stat_result) -> int:
        size = st.st_size
        if size >= state.offset and marker_at(fd, state.offset) == state.marker:
            return state.offset
        if size < state.offset and (st.st_dev, st.st_ino) != (state.dev, state.ino):
            # Another inode with the same first line, shorter than what was read: a copy taken
            # before the tailer read further (copytruncate). All of it was read already.
            return size
        # Same first line but rewritten beyond it: the first line is the one already read.
        first_line_end = os.pread(fd, FINGERPRINT_BYTES, 0).find(b"\n") + 1
        self.notify(f"{state.path}: content changed under the checkpoint; resuming after line 1")
        return min(first_line_end, state.offset)

    def _relative(self, path: str) -> str:
        try:
            return os.path.relpath(path, self.home.logs)
        except ValueError:
            return path

    # ------------------------------------------------------------ reading

    def _read(self, fingerprint: str, result: PollResult) -> None:
        handle = self._open[fingerprint]
        try:
            st = os.fstat(handle.fd)
        except OSError:
            return
        size, state = st.st_size, handle.state
        if size < state.offset or self._rewritten(handle, st):
            self._truncated(fingerprint, result)
            return
        position = self._pending.offsets.get(fingerprint, state.offset)
        least = max(READ_CHUNK, self.settings.max_line_bytes + 1)
        while position < size and not self.stop.is_set():
            chunk = os.pread(handle.fd, min(self._read_size(least), size - position), position)
            if not chunk:
                break
            end = chunk.rfind(b"\n")
            if end < 0:
                skipped_to = self._skip_long_line(handle, position, size, len(chunk))
                if skipped_to is None:
                    break
                position = skipped_to
            else:
                end, lines = self._batch_end(chunk, end + 1)
                self._submit(handle, chunk[:end], position, lines)
                position += end
            self._pending.offsets[fingerprint] = position
            if self._pending.lines >= self.settings.batch_lines:
                self._seal()
                self._drain(result, wait=False)
        if self._pool is not None and self._pending.lines >= self.settings.batch_lines // 4:
            self._seal()  # a batch of two files' blocks would be merged here, in Polars
        # Not waited for here: the next file's lines keep the workers busy while this file's
        # last batches finish (the wait, 0.22-0.34 s a file, left them without blocks towards
        # its end). Only this file's reads depend on its batches in flight, and a poll reads
        # each file once, then commits everything.
        self._drain(result, wait=False)

    def _read_size(self, least: int) -> int:
        """Bytes to read for one block to fill the pending batch (at least `least`).

        With workers, a batch of several blocks is merged at commit in this process: Polars
        loaded, the blocks' frames read back and written again. So long lines get longer
        reads, up to READ_CAP.
        """
        if self._pool is None:
            return least
        room = self.settings.batch_lines - self._pending.lines
        return max(least, min(READ_CAP, room * self._line_bytes * 9 // 8))

    def _rewritten(self, handle: OpenFile, st: os.stat_result) -> bool:
        """Whether the file was rewritten in place under the checkpoint (same size or larger).

        Checked only when size or mtime moved since the last check. The marker (bytes before
        the offset) alone misses a rewrite whose lines end alike; the first line does not.
        """
        now = (st.st_size, st.st_mtime_ns)
        if handle.checked == now or handle.state.fingerprint in self._pending.offsets:
            return False
        handle.checked = now
        state = handle.state
        if state.marker and marker_at(handle.fd, state.offset) != state.marker:
            return True
        return fingerprint_of(handle.fd) != state.fingerprint.partition("@")[0]

    def _batch_end(self, chunk: bytes, end: int) -> tuple[int, int]:
        """Cut a block of complete lines so the pending batch stays within batch_lines.

        Returns the cut and the lines before it.
        """
        room = max(1, self.settings.batch_lines - self._pending.lines)
        cut, lines = cut_lines(chunk, end, room, self._line_bytes)
        if lines >= LINE_ESTIMATE_MIN_LINES:  # one long line says little of the next ones
            self._line_bytes = max(1, cut // lines)
        return cut, lines

    def _submit(self, handle: OpenFile, block: bytes, position: int, lines: int) -> None:
        """Hand a block of complete lines to the workers, or check it here and now."""
        source, limit = handle.state.path, self.settings.max_line_bytes
        id_prefix = derived_id_prefix(handle.state.fingerprint)

        def redo() -> StagedBlock:
            return self._stager.stage(block, position, source, id_prefix, limit)

        future: Future[StagedBlock] | None = None
        if self._pool is not None:
            try:
                future = self._pool.submit(
                    BlockSource.of(block, handle.path, handle.state.dev, handle.state.ino,
                                   position), source, id_prefix, limit)
            except BrokenProcessPool:  # a worker died before this block was handed over
                self._lost_a_worker()
        if future is None:
            future = done_future(redo)
        self._pending.segments.append(_Segment(future, redo))
        self._pending.lines += lines

    def _skip_long_line(self, handle: OpenFile, start: int, size: int,
                        scanned: int) -> int | None:
        """A chunk without a newline: past the limit, drop the line to its newline."""
        if scanned <= self.settings.max_line_bytes:
            return None  # a partial line shorter than the limit: wait for its newline
        position = start + scanned
        while position < size:
            block = os.pread(handle.fd, min(READ_CHUNK, size - position), position)
            newline = block.find(b"\n")
            if newline >= 0:
                end = position + newline + 1
                head = os.pread(handle.fd, 1024, start)
                self._reject_long(handle.state.path, start, head[: end - 1 - start],
                                  end - 1 - start)
                self._pending.lines += 1
                return end
            position += len(block)
        return None  # the long line is not finished yet

    def _reject_long(self, source: str, offset: int, head: bytes, length: int) -> None:
        self._pending.rejected.append(
            too_long_record(source, offset, head, length, self.settings.max_line_bytes))

    def _truncated(self, fingerprint: str, result: PollResult) -> None:
        handle = self._open.pop(fingerprint)
        self.notify(f"{handle.path}: truncated or rewritten under its checkpoint; "
                    "reading it as a new file")
        os.close(handle.fd)
        reopened = self._follow(handle.path)
        if reopened is not None:  # read it now: a single pass (tail --once) must not miss it
            self._read(reopened, result)

    # ------------------------------------------------------------ committing

    def _commit(self, result: PollResult) -> None:
        """Commit everything read so far, waiting for checks still running."""
        self._seal()
        self._drain(result, wait=True)

    def _seal(self) -> None:
        if self._pending.offsets:
            self._sealed.append(self._pending)
            self._pending = _Pending()

    def _drain(self, result: PollResult, wait: bool) -> None:
        """Commit sealed batches in order: all of them, or those done while reading goes on."""
        # Two sealed batches a worker: one worker held back (a slow block, or its core lent
        # to another process) leaves the others work to go on with while the commit waits.
        # A third kept the tailer holding 10 MB more of blocks read, for no speed measured.
        in_flight = self.settings.workers * IN_FLIGHT_PER_WORKER if self._pool else 0
        while self._sealed:
            front = self._sealed[0]
            if not wait and len(self._sealed) <= in_flight and not all(
                    segment.future.done() for segment in front.segments):
                return
            batch = self._sealed.popleft()
            try:
                self._commit_batch(batch, result)
            except BaseException:
                # Later batches hold offsets past the failed one: drop them all, so the
                # next poll reads again from the committed checkpoint.
                for dropped in (batch, *self._sealed, self._pending):
                    _discard_parts(dropped)
                self._sealed.clear()
                self._pending = _Pending()
                raise

    def _commit_batch(self, pending: _Pending, result: PollResult) -> None:
        staged_blocks = [self._outcome(segment) for segment in pending.segments]
        rejected = [record for block in staged_blocks for record in block.rejected]
        rejected += pending.rejected
        staged = sum(sum(block.counts.values()) for block in staged_blocks)
        advanced = {fingerprint: replace(handle.state, offset=offset, last_seen=time.time(),
                                         marker=marker_at(handle.fd, offset))
                    for fingerprint, offset in pending.offsets.items()
                    if (handle := self._open.get(fingerprint)) is not None}
        # Built aside and adopted only once published: a failed write changes nothing.
        checkpoint = replace(self.checkpoint, batch=self.checkpoint.batch + 1,
                             files={**self.checkpoint.files, **advanced},
                             staged=self.checkpoint.staged + staged,
                             quarantined=self.checkpoint.quarantined + len(rejected))
        writes = self._stage_writes(checkpoint.batch, staged_blocks)
        if rejected:
            writes.append(self._writers.submit(self._write_rejected, checkpoint.batch, rejected))
        prepared = None
        try:
            prepared = prepare_checkpoint(self.home.state, checkpoint)
            for write in writes:
                write.result()  # every file durable before the checkpoint that covers it
            publish_checkpoint(self.home.state, prepared)
        except BaseException:
            wait_all(writes)  # nothing of this batch is written after the failure is reported
            if prepared is not None:
                prepared.unlink(missing_ok=True)
            raise
        self.checkpoint = checkpoint
        for fingerprint, state in advanced.items():
            result.bytes += max(0, state.offset - self._open[fingerprint].state.offset)
            self._open[fingerprint].state = state
        result.staged += staged
        result.quarantined += len(rejected)
        result.batches += 1
        if self._progress:
            self._progress(result.bytes)

    def _outcome(self, segment: _Segment) -> StagedBlock:
        try:
            return segment.future.result()
        except BlockMoved:  # renamed or rewritten since it was read: check what was read
            return segment.redo()
        except (BrokenProcessPool, CancelledError):  # a worker died (out of memory, killed),
            self._lost_a_worker()  # or the pool closed after one did: check here instead
            return segment.redo()

    def _lost_a_worker(self) -> None:
        if self._pool is not None:
            self.notify("a line-checking worker died; checking lines in the tailer process")
            self._stop_pool()

    def _start_pool(self) -> None:
        if self._pool is None and self.settings.workers > 0:
            self._pool = StagerPool(self.validator.schemas, self.settings.workers,
                                    self.home.stage, inherited_fds=ProcessLock.held_fds())

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _stage_writes(self, batch: int, staged_blocks: list[StagedBlock]) -> list[Future[None]]:
        by_type: dict[str, list[bytes | Path]] = {}
        for block in staged_blocks:
            for event_type, ipc in block.frames.items():
                by_type.setdefault(event_type, []).append(ipc)
            for event_type, part in block.parts.items():
                by_type.setdefault(event_type, []).append(part)
        return [self._writers.submit(self._write_type, batch, event_type, parts)
                for event_type, parts in by_type.items()]

    def _write_type(self, batch: int, event_type: str, parts: list[bytes | Path]) -> None:
        """Write a type's batch file from frames (bytes) and workers' part files (synced here).

        A batch holds several parts only when it spans files or small blocks; a catch-up's
        batch is one part, renamed into place. If the commit fails, `_discard_parts`
        deletes what is not renamed (a crash leaves it to the next `remove_orphans`).
        """
        only = parts[0] if len(parts) == 1 else None
        if isinstance(only, Path):
            fsync_path(only)
            rename_or_discard(only, self.home.stage / event_type / batch_name(batch, "arrow"))
        else:
            ipc = only if isinstance(only, bytes) else _concat_ipc(parts)
            write_stage_bytes(self.home.stage, batch, event_type, ipc)
            for part in parts:
                if isinstance(part, Path):
                    part.unlink()
        fsync_dir(self.home.stage / event_type)

    def _write_rejected(self, batch: int, rejected: list[dict[str, Any]]) -> None:
        write_quarantine(self.home.quarantine, batch, rejected)
        fsync_dir(self.home.quarantine)

    def _retire_idle(self, result: PollResult) -> None:
        now = time.time()
        for fingerprint, handle in list(self._open.items()):
            try:
                st = os.fstat(handle.fd)
            except OSError:
                continue
            rotated = not handle.seen or not self._still_named(handle.state)
            idle = now - st.st_mtime >= self.settings.idle_seconds
            if not (rotated and idle):
                continue
            if st.st_size > handle.state.offset:
                self._quarantine_tail(handle, st.st_size, result)
            if not handle.seen:
                os.close(handle.fd)
                del self._open[fingerprint]
                if st.st_nlink == 0:
                    self.checkpoint.files.pop(fingerprint, None)
                    save_checkpoint(self.home.state, self.checkpoint)

    def _still_named(self, state: FileState) -> bool:
        """Whether the name the file was first seen under still leads to it (not rotated)."""
        try:
            st = os.stat(os.path.join(self.home.logs, state.first_path or state.path))
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (state.dev, state.ino)

    def _quarantine_tail(self, handle: OpenFile, size: int, result: PollResult) -> None:
        offset = handle.state.offset
        tail = os.pread(handle.fd, min(size - offset, 1024), offset)
        rejection = Rejection("truncated_tail", "the file was rotated away and went idle with "
                              "a last line that never got its newline")
        self._pending.rejected.append(
            quarantine_record(handle.state.path, offset, tail, rejection, size - offset))
        self._pending.offsets[handle.state.fingerprint] = size
        self._commit(result)

    def _forget_stale(self) -> None:
        cutoff = time.time() - FORGET_AFTER_SECONDS
        stale = [fp for fp, state in self.checkpoint.files.items()
                 if fp not in self._open and state.last_seen < cutoff]
        for fingerprint in stale:
            del self.checkpoint.files[fingerprint]

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.notify(message)


def _discard_parts(dropped: _Pending) -> None:
    """Delete the part files of a batch that will not be committed, once workers finish."""
    for segment in dropped.segments:
        segment.future.add_done_callback(_unlink_parts)


def _unlink_parts(future: Future[StagedBlock]) -> None:
    if not future.cancelled() and future.exception() is None:
        for part in future.result().parts.values():
            part.unlink(missing_ok=True)  # gone already if it was renamed into a batch


def _concat_ipc(parts: list[bytes | Path]) -> bytes:
    from pipeline.frames import concat_ipc  # Polars: see Tailer._stager

    return concat_ipc(parts)


def follow(tailer: Tailer, on_status: Callable[[str], None] | None = None) -> PollResult:
    """Run until `tailer.stop` is set; watchdog wakes reads, a periodic rescan catches the rest."""
    # Imported here so that `tally tail --once` (cron, tests) never loads the observer.
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    changed: set[str] = set()
    wake = threading.Event()

    class _Wake(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    changed.add(os.fsdecode(path))
            wake.set()

    observer = Observer()
    observer.schedule(_Wake(), str(tailer.home.logs), recursive=True)
    observer.start()
    tailer.prepare_to_type()  # the first line appended live does not wait for Polars to load
    total = PollResult()
    try:
        _follow_loop(tailer, changed, wake, total, on_status)
    finally:
        observer.stop()
        observer.join(timeout=5)
    return total


def _follow_loop(tailer: Tailer, changed: set[str], wake: threading.Event, total: PollResult,
                 on_status: Callable[[str], None] | None) -> None:
    settings = tailer.settings
    next_rescan = 0.0
    window = _RateWindow(time.monotonic())
    while not tailer.stop.is_set():
        now = time.monotonic()
        if now >= next_rescan:
            result = tailer.poll()
            next_rescan = now + settings.rescan_seconds
        else:
            paths = []
            while changed:  # pop, not list+clear: an event added in between is kept
                paths.append(changed.pop())
            result = tailer.poll(only=paths)
        _add(total, result)
        window.add(result)
        if on_status and window.due(settings.status_interval):
            on_status(window.summary(tailer.lag_bytes(), len(tailer._open)))
        # Wake on a file event or the next rescan, and notice `stop` within STOP_CHECK_SECONDS.
        while not (wake.is_set() or tailer.stop.is_set()):
            remaining = next_rescan - time.monotonic()
            if remaining <= 0:
                break
            wake.wait(timeout=min(remaining, STOP_CHECK_SECONDS))
        wake.clear()


def _add(total: PollResult, result: PollResult) -> None:
    total.staged += result.staged
    total.quarantined += result.quarantined
    total.batches += result.batches
    total.bytes += result.bytes
    total.files = result.files


@dataclass
class _RateWindow:
    started: float
    staged: int = 0
    quarantined: int = 0

    def add(self, result: PollResult) -> None:
        self.staged += result.staged
        self.quarantined += result.quarantined

    def due(self, interval: float) -> bool:
        return time.monotonic() - self.started >= interval

    def summary(self, lag: int, files: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        line = (f"tail: {self.staged / elapsed:,.0f} events/s, {self.staged:,} staged, "
                f"{self.quarantined:,} invalid, lag {lag:,} bytes in {files} file(s)")
        self.started, self.staged, self.quarantined = time.monotonic(), 0, 0
        return line
