"""The validating tailer: follows JSONL files under logs/, stages valid lines, quarantines the rest.

Exactly-once rests on three rules. A batch's stage and quarantine files are written and
fsynced before the checkpoint that covers them is renamed into place; files above the
checkpoint's watermark are crash leftovers and get deleted; and a file is known by a
proven identity (pipeline.files), so rotation, copies and restarts resume at the right
offset. Batches are numbered in a stream that never falls behind the lake (pipeline.ledger).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future
from concurrent.futures import wait as wait_all
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipeline.batches import BatchWriter, discard_parts
from pipeline.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    ProcessLock,
    encode_path,
    new_stream,
    prepare_checkpoint,
    publish_checkpoint,
    recover_checkpoint,
    save_checkpoint,
)
from pipeline.config import Home, require_logs_dir
from pipeline.errors import display_path, safe_text, storage_error
from pipeline.events import Rejection, Validator
from pipeline.files import FileSet, OpenFile
from pipeline.identity import crc_of, derived_id_prefix, fingerprint_of, marker_at
from pipeline.importers import Carry
from pipeline.intake import quarantine_record, too_long_record
from pipeline.journal import Range
from pipeline.ledger import lake_high_water
from pipeline.reader import READ_CHUNK, Block, LineReader
from pipeline.source_files import ImportedRows, SourceCopies, configured_roots, translate
from pipeline.sources import Root
from pipeline.stage import (
    BatchId,
    StagedBlock,
    remove_orphans,
)
from pipeline.swap import recover_interrupted_rebuild
from pipeline.workers import BlockMoved, BlockSource, StagerPool, done_future

if TYPE_CHECKING:
    from pipeline.frames import BlockStager

IN_FLIGHT_PER_WORKER = 2  # sealed batches read ahead of the commit, per worker
# With workers, reads are sized to fill a batch (see Tailer._read_size), up to this.
READ_CAP = 64 << 20
# A file with less than this to read counts for nothing towards starting workers: its
# blocks are too small to pay for a worker's round trip, and would end a batch each.
WORKER_MIN_FILE_BYTES = 1 << 20
LINE_ESTIMATE_MIN_LINES = 16  # a block this long or longer updates the mean line length
OPEN_AT_ONCE = 128  # sources' files opened at a time (a descriptor each; macOS allows 256)

Notify = Callable[[str], None]
# Told of each batch once it is committed, with the event types it staged.
OnCommit = Callable[[BatchId, frozenset[str]], None]
Progress = Callable[[int, int], None]  # (bytes committed, bytes to read) in one pass


@dataclass
class PollResult:
    """What one pass staged and quarantined, and what it could not read."""

    staged: int = 0
    quarantined: int = 0
    batches: int = 0
    files: int = 0
    bytes: int = 0  # of the logs, read and committed
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why


@dataclass
class _Segment:
    """Lines of one file handed to the checker; `redo` checks them again in this process."""

    future: Future[StagedBlock]
    redo: Callable[[], StagedBlock]


@dataclass
class _Pending:
    """A batch being gathered: checked segments, rejects found here, and per file the
    offset it starts at, the offset reached and the CRC up to it."""

    segments: list[_Segment] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    crcs: dict[str, int] = field(default_factory=dict)
    carries: dict[str, Carry | None] = field(default_factory=dict)  # sources' importer states
    imported: ImportedRows = field(default_factory=ImportedRows)
    lines: int = 0


class Tailer:
    """Reads complete lines from the logs directory and the sources' roots into stage/ and
    quarantine/, exactly once. `roots` defaults to the configured sources' roots;
    `logs=False` reads the roots alone (`tally import`)."""

    def __init__(self, home: Home, validator: Validator | None = None,
                 notify: Notify | None = None, lock_timeout: float = 0.0,
                 on_commit: OnCommit | None = None, roots: tuple[Root, ...] | None = None,
                 logs: bool = True) -> None:
        self.home = home
        self.on_commit = on_commit
        self.settings = home.tailer
        self.validator = validator or Validator()
        self.notify = notify or (lambda message: None)
        if logs:
            require_logs_dir(home)
        for told in recover_interrupted_rebuild(home):
            self.notify(f"recovered: {told}")
        try:
            for directory in (home.logs, home.stage, home.quarantine, home.state):
                directory.mkdir(parents=True, exist_ok=True)  # logs: the observer needs it
            self._lock = ProcessLock(home.state / "tailer.lock", "tailer").acquire(lock_timeout)
        except OSError as exc:
            raise storage_error(exc, "prepare the home", exc.filename or home.root) from exc
        try:
            self.checkpoint = self._resumed_checkpoint()
        except BaseException:
            self._lock.release()
            raise
        if roots is None:
            roots = configured_roots(home, self.notify)
        self.files = FileSet(home, lambda: self.checkpoint.files, self.notify, roots, logs)
        # opencode keeps a database: its messages are copied into files first.
        self.copies = SourceCopies(home, roots, self.files.warn_once)
        self._batches = BatchWriter(home, self.checkpoint.stream)
        self._pool: StagerPool | None = None
        self._sealed: deque[_Pending] = deque()  # full batches whose checks may still run
        self._pending = _Pending()
        self._line_bytes = 256  # mean line length of the last long block: where the next ends
        self._progress: Callable[[int], None] | None = None
        self.stop = threading.Event()

    def _resumed_checkpoint(self) -> Checkpoint:
        """The checkpoint to go on from: recovered if damaged, cleared of crash leftovers,
        and under a new stream if the lake holds batches of its stream beyond it."""
        home = self.home
        try:
            checkpoint, told = recover_checkpoint(home.state)
            if told:
                self.notify(f"recovered: {told}")
            types = self.validator.schemas.types
            remove_orphans([home.stage / t for t in types] + [home.quarantine],
                           checkpoint.watermark)
            held = lake_high_water(home, checkpoint.stream)
            if held > checkpoint.batch or not checkpoint.stream:
                if held > checkpoint.batch:
                    self.notify(
                        f"the checkpoint (batch {checkpoint.batch}) is behind the lake, which "
                        f"holds batch {held} of its stream: it was restored from a backup or "
                        "replaced; going on under a new stream, lines after the checkpoint "
                        "are read again (events already in the lake count once)")
                checkpoint = replace(checkpoint, stream=new_stream(), batch=0)
                save_checkpoint(home.state, checkpoint)
            elif not (home.state / CHECKPOINT).exists():
                # A fresh stream is committed before its first batch: unsaved, a crash in that
                # batch would leave its files to a stream the next tailer does not know, and
                # files of another stream count as committed (see pipeline.stage).
                save_checkpoint(home.state, checkpoint)
        except OSError as exc:
            raise storage_error(exc, "prepare the stage and the checkpoint",
                                exc.filename or home.state) from exc
        return checkpoint

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
            self.files.close_all()
            self._stop_pool()
        finally:
            self._batches.close()
            self._lock.release()

    def __enter__(self) -> Tailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ one pass

    def poll(self, only: Iterable[str] | None = None,
             progress: Progress | None = None, sources: bool = True) -> PollResult:
        """Discover files (all, or just `only`), read every complete line, commit in batches.

        `sources=False` discovers under logs/ alone: thousands of transcripts are not
        listed on every rescan (a following tailer lists them at its slower pace).

        `progress(done, total)` is told after each batch how many bytes of the logs are
        committed, of those there were to read when the pass began.
        """
        result = PollResult()
        full_scan = only is None
        if (full_scan and sources) or any(self.copies.holds(p) for p in only or ()):
            self.copies.copy()
        if only is None:
            self.files.unreadable.clear()
            paths = self.files.discover(sources)
            for handle in self.files.open.values():
                handle.seen = handle.seen and not sources and handle.root is not None
        else:
            paths = [p for p in only if self.files.wanted(p)]
        sourced: list[str] = []
        for path in paths:
            if self.files.root_of(path) is None:
                self.files.follow(path)
            else:
                sourced.append(path)
        unread = self.files.unread()
        # Files not opened yet are sized only for a progress bar: a rescan of thousands of
        # transcripts would stat each twice for nothing.
        total = sum(unread) + (self.files.unread_at(sourced) if progress else 0)
        self._progress = (lambda done: progress(done, total)) if progress else None
        threshold = self.settings.parallel_min_bytes
        least = min(WORKER_MIN_FILE_BYTES, threshold)
        if not self.stop.is_set() and sum(n for n in unread if n >= least) >= threshold:
            self._start_pool()
        for identity in list(self.files.open):
            if self.stop.is_set():
                break
            self._read(identity, result)
        self._commit(result)
        self._read_sources(sourced, result)
        # Caught up: idle workers would only hold memory (about 75 MB each), and a live
        # tail's few lines are checked in this process. Half the threshold: a backlog
        # hovering near it does not start and stop them every poll.
        if self._pool is not None and self.lag_bytes() <= threshold // 2:
            self._stop_pool()
        if full_scan and not self.stop.is_set():  # a stopped read may have left whole lines
            self._retire_idle(result)
            for identity in self.files.stale(self.checkpoint.files):
                del self.checkpoint.files[identity]
        self._rest_sources(self.settings.idle_seconds)
        result.files = len(self.files.open)
        result.unreadable = dict(self.files.unreadable)
        return result

    def _read_sources(self, paths: list[str], result: PollResult) -> None:
        """Open the sources' files a chunk at a time, read and commit them, and close those
        read to their end: thousands of transcripts never hold as many descriptors."""
        for at in range(0, len(paths), OPEN_AT_ONCE):
            if self.stop.is_set():
                return
            opened = [identity for path in paths[at:at + OPEN_AT_ONCE]
                      if (identity := self.files.follow(path)) is not None]
            for identity in opened:
                if self.stop.is_set():
                    break
                self._read(identity, result)
            self._commit(result)
            self._rest_sources(0.0)  # read to their end: opened again when they change

    def _rest_sources(self, idle_seconds: float) -> None:
        for identity in [i for i, handle in self.files.open.items() if handle.root]:
            self.files.rest(identity, idle_seconds)

    def watched(self) -> list[str]:
        """The directories whose changes should wake a following tailer."""
        dirs = [str(self.home.logs)] if self.files.logs else []
        return dirs + [root.path for root in self.files.roots] + self.copies.directories()

    def lag_bytes(self) -> int:
        """Bytes present in followed files but not yet consumed."""
        return sum(self.files.unread())

    # ------------------------------------------------------------ reading

    def _read(self, identity: str, result: PollResult) -> None:
        handle = self.files.open[identity]
        try:
            st = os.fstat(handle.fd)
        except OSError:
            return
        size, state = st.st_size, handle.state
        if size < state.offset or self._rewritten(handle, st):
            self._truncated(identity, result)
            return
        position = self._pending.offsets.get(identity, state.offset)
        crc = self._pending.crcs.get(identity, state.crc)
        carry = self._pending.carries.get(identity, state.carry)
        if crc is None:  # a state from before CRCs: from here on it has one
            crc = crc_of(handle.fd, position) or 0
        reader = LineReader(handle.fd, self.settings.max_line_bytes)
        least = max(READ_CHUNK, self.settings.max_line_bytes + 1)
        while position < size and not self.stop.is_set():
            room = max(1, self.settings.batch_lines - self._pending.lines)
            try:
                piece = reader.next(position, size, self._read_size(least), room,
                                    self._line_bytes, crc)
            except OSError as exc:
                self.files.unreadable[handle.path] = f"cannot read ({exc.strerror})"
                self.files.warn_once(handle.path, f"{display_path(handle.path)}: cannot read "
                                                  f"({exc.strerror}); will retry")
                break
            if piece is None:
                break
            self._pending.starts.setdefault(identity, position)
            if isinstance(piece, Block):
                if piece.lines >= LINE_ESTIMATE_MIN_LINES:  # one long line says little
                    self._line_bytes = max(1, len(piece.data) // piece.lines)
                if handle.root is None:
                    self._submit(handle, piece.data, position, piece.lines)
                else:
                    carry = self._import(handle, piece.data, position, piece.lines, carry)
                    self._pending.carries[identity] = carry
                position += len(piece.data)
            else:
                self._pending.rejected.append(too_long_record(
                    safe_text(state.path), piece.position, piece.head, piece.length,
                    self.settings.max_line_bytes))
                self._pending.lines += 1
                position = piece.end
            crc = piece.crc
            self._pending.offsets[identity], self._pending.crcs[identity] = position, crc
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

    def _submit(self, handle: OpenFile, block: bytes, position: int, lines: int) -> None:
        """Hand a block of complete lines to the workers, or check it here and now."""
        source, limit = safe_text(handle.state.path), self.settings.max_line_bytes
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

    def _import(self, handle: OpenFile, block: bytes, position: int, lines: int,
                carry: Carry | None) -> Carry | None:
        """Translate a block of a source's file into events and check them here (an
        importer's state runs from block to block, so not in workers); the state after it."""
        assert handle.root is not None
        source = safe_text(handle.state.path)
        translated, carry = translate(handle.root, handle.path, source, block, position, carry)
        self._pending.imported.add(translated, source)
        self._pending.lines += lines
        return carry

    def _truncated(self, identity: str, result: PollResult) -> None:
        handle = self.files.close(identity)
        self.notify(f"{display_path(handle.path)}: truncated or rewritten under its "
                    "checkpoint; reading it as a new file")
        reopened = self.files.follow(handle.path)
        if reopened is not None:  # read it now: a single pass (tail --once) must not miss it
            self._read(reopened, result)

    # ------------------------------------------------------------ committing

    def _commit(self, result: PollResult) -> None:
        """Commit everything read so far, waiting for checks still running."""
        self._seal()
        self._drain(result, wait=True)

    def _seal(self) -> None:
        imported = self._pending.imported
        if imported:
            def stage() -> StagedBlock:
                return self._stager.stage_events(imported.events, imported.sources,
                                                 imported.offsets, imported.rejected)

            self._pending.segments.append(_Segment(done_future(stage), stage))
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
            except BaseException as exc:
                # Later batches hold offsets past the failed one: drop them all, so the
                # next poll reads again from the committed checkpoint.
                for dropped in (batch, *self._sealed, self._pending):
                    discard_parts(segment.future for segment in dropped.segments)
                self._sealed.clear()
                self._pending = _Pending()
                if isinstance(exc, OSError):
                    where = exc.filename or self.home.stage
                    raise storage_error(exc, "write a batch", where) from exc
                raise

    def _commit_batch(self, pending: _Pending, result: PollResult) -> None:
        staged_blocks = [self._outcome(segment) for segment in pending.segments]
        rejected = [record for block in staged_blocks for record in block.rejected]
        rejected += pending.rejected
        staged = sum(sum(block.counts.values()) for block in staged_blocks)
        advanced = {identity: handle.state.advanced(offset, marker_at(handle.fd, offset),
                                                    pending.crcs.get(identity),
                                                    pending.carries.get(identity))
                    for identity, offset in pending.offsets.items()
                    if (handle := self.files.open.get(identity)) is not None}
        # Built aside and adopted only once published: a failed write changes nothing.
        checkpoint = replace(self.checkpoint, batch=self.checkpoint.batch + 1,
                             files={**self.checkpoint.files, **advanced},
                             staged=self.checkpoint.staged + staged,
                             quarantined=self.checkpoint.quarantined + len(rejected))
        batch = BatchId(checkpoint.stream, checkpoint.batch)
        writes = self._batches.write(batch, staged_blocks, rejected,
                                     self._ranges(pending, advanced))
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
        for identity, state in advanced.items():
            result.bytes += max(0, state.offset - self.files.open[identity].state.offset)
            self.files.open[identity].state = state
        result.staged += staged
        result.quarantined += len(rejected)
        result.batches += 1
        if self.on_commit is not None:
            self.on_commit(batch, frozenset(t for block in staged_blocks
                                            for t, n in block.counts.items() if n))
        if self._progress:
            self._progress(result.bytes)

    def _ranges(self, pending: _Pending, advanced: dict[str, Any]) -> list[Range]:
        ranges = []
        for identity, state in advanced.items():
            handle = self.files.open[identity]
            source = None if handle.root is None else {  # the state before the batch
                "kind": handle.root.kind, "agent": handle.root.agent,
                "root": encode_path(handle.root.path), "carry": handle.state.carry}
            ranges.append(Range(identity, state.path, pending.starts.get(identity, state.offset),
                                state.offset, state.crc, source))
        return ranges

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

    # ------------------------------------------------------------ files that went away

    def _retire_idle(self, result: PollResult) -> None:
        now = time.time()
        for identity, handle in list(self.files.open.items()):
            try:
                st = os.fstat(handle.fd)
            except OSError:
                continue
            rotated = not handle.seen or not self.files.still_named(handle.state)
            idle = now - st.st_mtime >= self.settings.idle_seconds
            if not (rotated and idle):
                continue
            if st.st_size > handle.state.offset:
                self._quarantine_tail(handle, st.st_size, result)
            if not handle.seen:
                self.files.close(identity)
                if st.st_nlink == 0:
                    self.checkpoint.files.pop(identity, None)
                    save_checkpoint(self.home.state, self.checkpoint)

    def _quarantine_tail(self, handle: OpenFile, size: int, result: PollResult) -> None:
        state, offset = handle.state, handle.state.offset
        tail = os.pread(handle.fd, min(size - offset, 1024), offset)
        rejection = Rejection("truncated_tail", "the file was rotated away and went idle with "
                              "a last line that never got its newline")
        self._pending.rejected.append(
            quarantine_record(safe_text(state.path), offset, tail, rejection, size - offset))
        self._pending.starts.setdefault(state.fingerprint, offset)
        self._pending.offsets[state.fingerprint] = size
        self._pending.crcs[state.fingerprint] = crc_of(handle.fd, size, offset,
                                                       state.crc or 0) or 0
        self._commit(result)
