"""Worker processes that check and type blocks of lines while the tailer reads on.

A catch-up is bound by per-line Python work (parsing, schema checks) that one process
does on one core. Workers do it on every core; the tailer keeps reading, writing and
committing, in order, so exactly-once rests on the same checkpoint rules as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor

from pipeline.events import Validator
from pipeline.schemas import SchemaSet
from pipeline.stage import BlockStager, StagedBlock

ORPHAN_CHECK_SECONDS = 0.5
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h

_stager: BlockStager | None = None


def _start_worker(schemas: SchemaSet, tailer_pid: int) -> None:
    global _stager
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the tailer's to handle
    threading.Thread(target=_exit_with, args=(tailer_pid,), daemon=True).start()
    keep_freed_memory()
    _stager = BlockStager(Validator(schemas))


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


def _exit_with(tailer_pid: int) -> None:
    # A worker holds both ends of its task pipe, so a tailer killed by SIGKILL never
    # closes it: the worker watches for being orphaned instead.
    while os.getppid() == tailer_pid:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(0)


def _stage_in_worker(block: bytes, position: int, source: str, id_prefix: str,
                     limit: int) -> StagedBlock:
    assert _stager is not None, "worker started without its stager"
    return _stager.stage(block, position, source, id_prefix, limit)


class StagerPool:
    """Worker processes staging blocks in parallel; each future holds a StagedBlock."""

    def __init__(self, schemas: SchemaSet, workers: int) -> None:
        keep_freed_memory()  # the tailer reads and frees a block per batch as well
        # spawn, not fork: forking a process that runs Polars' threads can deadlock.
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(schemas, os.getpid()))

    def submit(self, block: bytes, position: int, source: str, id_prefix: str,
               limit: int) -> Future[StagedBlock]:
        """Queue a block of complete lines read at `position`."""
        return self._executor.submit(_stage_in_worker, block, position, source, id_prefix,
                                     limit)

    def close(self) -> None:
        """Stop the workers; blocks still queued are dropped."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def done_future(compute: Callable[[], StagedBlock]) -> Future[StagedBlock]:
    """A future already holding `compute()`: in-process staging in the pool's shape."""
    future: Future[StagedBlock] = Future()
    future.set_result(compute())
    return future
