"""Worker processes that check and type blocks of lines while the tailer reads on.

A catch-up is bound by per-line Python work (parsing, schema checks) that one process
does on one core. Workers do it on every core; the tailer keeps reading and committing,
in order, so exactly-once rests on the same checkpoint rules as before.

A worker reads its block from the log file and writes its frames to part files itself
(the tailer syncs and renames them): megabytes through a pipe cost the tailer copies and
its threads the GIL, and left each worker idle a fifth of the time waiting for them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.events import Validator
from pipeline.schemas import SchemaSet
from pipeline.stage import StagedBlock, part_path

if TYPE_CHECKING:
    from pipeline.frames import BlockStager

ORPHAN_CHECK_SECONDS = 0.5
EDGE_BYTES = 64
GC_YOUNG_ALLOCATIONS = 100_000
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
# Polars' allocator (jemalloc) in a worker: one arena, no per-thread caches. A worker's
# Polars threads allocate little and briefly, and their own arenas and caches held 6-8 MB
# a worker (proportional set size) for no CPU saved in alternating million-line runs.
POLARS_ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"
POLARS_ALLOCATOR_CONF = "narenas:1,tcache:false"

_stager: BlockStager | None = None
_stage_dir: Path | None = None
_part_numbers = count()


@dataclass(frozen=True)
class BlockSource:
    """Where a block of complete lines lies in a log file, and its first and last bytes."""

    path: str
    dev: int
    ino: int
    position: int
    length: int
    edges: bytes  # first and last EDGE_BYTES: a file rewritten since reads otherwise

    @classmethod
    def of(cls, block: bytes, path: str, dev: int, ino: int, position: int) -> BlockSource:
        """The source of `block`, read from `path` (inode dev:ino) at `position`."""
        return cls(path, dev, ino, position, len(block), _edges(block))


class BlockMoved(Exception):
    """The file no longer holds the block where the tailer read it (renamed, truncated,
    rewritten): the tailer checks the bytes it read itself."""


def _edges(block: bytes) -> bytes:
    return block[:EDGE_BYTES] + block[-EDGE_BYTES:]


def read_block(source: BlockSource) -> bytes:
    """The block's bytes, read again from its file; BlockMoved if they are not the same."""
    try:
        fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BlockMoved(f"{source.path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (source.dev, source.ino):
            raise BlockMoved(f"{source.path}: another file by that name now")
        block = os.pread(fd, source.length, source.position)
    finally:
        os.close(fd)
    if len(block) != source.length or _edges(block) != source.edges:
        raise BlockMoved(f"{source.path}: truncated or rewritten at {source.position}")
    return block


def _start_worker(schemas: SchemaSet, stage_dir: Path, tailer_pid: int,
                  inherited_fds: tuple[int, ...]) -> None:
    global _stager, _stage_dir
    for fd in inherited_fds:  # forked: the tailer's lock must die with the tailer
        os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the tailer's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked: not the tailer's handler
    threading.Thread(target=_exit_with, args=(tailer_pid,), daemon=True).start()
    keep_freed_memory()
    configure_polars_allocator()
    from pipeline.frames import BlockStager  # Polars, which the tailer itself may not load

    _stager = BlockStager(Validator(schemas))
    _stage_dir = stage_dir
    collect_garbage_rarely()


def collect_garbage_rarely() -> None:
    """Keep the cyclic garbage collector from walking a block's big lists over and over.

    A block allocates lists of thousands of items; every 700 new containers trigger a
    collection that visits each item of the young lists, and now and then one that walks
    every object the imports made: 6 % of a worker's time. Checking blocks makes no cycles
    worth collecting often, so the imports are frozen out of collections and the young
    generation collected every 100,000 allocations instead.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_ALLOCATIONS)


def keep_freed_memory() -> None:
    """Reuse freed memory instead of handing it back to the kernel after every block.

    Each block allocates and frees the same few megabytes; by default glibc maps large
    buffers afresh and trims the heap, and every page comes back as a page fault: 250k
    faults per million lines, a third of the catch-up's system time.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError):  # not glibc: its defaults stand
        pass


def configure_polars_allocator() -> None:
    """Give Polars' allocator POLARS_ALLOCATOR_CONF when it loads, under the user's own setting.

    Importing Polars puts its own defaults first in the variable and the value it finds
    after them; jemalloc then reads it, and of options given twice the last wins. So the
    effective options are Polars' defaults, then these, then whatever the variable held
    (the user's setting, or Polars' defaults again if a parent process imported Polars).
    """
    own = os.environ.get(POLARS_ALLOCATOR_ENV)
    os.environ[POLARS_ALLOCATOR_ENV] = (
        f"{POLARS_ALLOCATOR_CONF},{own}" if own else POLARS_ALLOCATOR_CONF)


def _exit_with(tailer_pid: int) -> None:
    # A worker holds both ends of its task pipe, so a tailer killed by SIGKILL never
    # closes it: the worker watches for being orphaned instead.
    while os.getppid() == tailer_pid:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(0)


def _stage_in_worker(where: BlockSource, source: str, id_prefix: str,
                     limit: int) -> StagedBlock:
    assert _stager is not None and _stage_dir is not None, "worker started without its stager"
    stage_dir = _stage_dir

    def part(event_type: str) -> Path:
        return part_path(stage_dir, event_type, f"{os.getpid()}-{next(_part_numbers)}")

    return _stager.stage(read_block(where), where.position, source, id_prefix, limit, part)


class StagerPool:
    """Worker processes staging blocks in parallel; each future holds a StagedBlock whose
    frames are part files in `stage_dir`."""

    def __init__(self, schemas: SchemaSet, workers: int, stage_dir: Path,
                 inherited_fds: Iterable[int] = ()) -> None:
        """`inherited_fds` are closed in forked workers (a lock the tailer holds)."""
        keep_freed_memory()  # the tailer reads and frees a block per batch as well
        self.start_method = "fork" if _single_threaded() else "spawn"
        closed = tuple(inherited_fds) if self.start_method == "fork" else ()
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(self.start_method),
            initializer=_start_worker, initargs=(schemas, stage_dir, os.getpid(), closed))

    def submit(self, where: BlockSource, source: str, id_prefix: str,
               limit: int) -> Future[StagedBlock]:
        """Queue the block at `where`; its future raises BlockMoved if the file changed."""
        return self._executor.submit(_stage_in_worker, where, source, id_prefix, limit)

    def close(self) -> None:
        """Stop the workers; blocks still queued are dropped."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _single_threaded() -> bool:
    """Whether this Linux process runs one thread: then workers may be forked from it.

    Forked, a worker is ready in about 0.22 s (it imports Polars and little else); spawned,
    in 0.35-0.42 s (a new interpreter imports the tailer's modules again), and beside a
    resource tracker process. Forking beside another thread (watchdog's, the commit
    writers', Polars' own, all counted in /proc) could copy a lock that thread holds, so
    then workers are spawned; elsewhere than Linux too (fork beside macOS's libraries is
    unsafe).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:  # /proc not mounted: no way to count native threads
        return False


def done_future(compute: Callable[[], StagedBlock]) -> Future[StagedBlock]:
    """A future already holding `compute()`: in-process staging in the pool's shape."""
    future: Future[StagedBlock] = Future()
    future.set_result(compute())
    return future
