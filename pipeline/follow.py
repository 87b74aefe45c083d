"""Following the logs: watchdog wakes the tailer, a periodic rescan catches the rest.

The only module that imports watchdog, so `tally tail --once` (cron, tests) never loads
the observer. A file system that refuses a batch (full, read-only) pauses the loop, says
so once, and retries with a growing wait: nothing is lost, since the checkpoint did not
move, and the same lines are read again once there is room.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.errors import StorageError
from pipeline.tailer import PollResult, Tailer

STOP_CHECK_SECONDS = 0.2
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
QUIET_EVENTS = frozenset({"opened", "closed_no_write"})

Status = Callable[[str], None]
Polled = Callable[[PollResult], None]  # after every pass, even one that found nothing


def follow(tailer: Tailer, on_status: Status | None = None,
           on_poll: Polled | None = None) -> PollResult:
    """Run until `tailer.stop` is set; watchdog wakes reads, a periodic rescan catches the rest."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    changed: set[str] = set()
    wake = threading.Event()

    class _Wake(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type in QUIET_EVENTS:  # the tailer's own opens and reads
                return
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    changed.add(os.fsdecode(path))
            wake.set()

    observer = Observer()
    for directory in tailer.watched():
        try:
            observer.schedule(_Wake(), directory, recursive=True)
        except OSError as exc:  # inotify's watch limit: the rescans still find everything
            tailer.notify(f"{directory}: cannot watch for changes ({exc.strerror}); its "
                          "files are read at each rescan (raise fs.inotify.max_user_watches)")
    observer.start()
    tailer.prepare_to_type()  # the first line appended live does not wait for Polars to load
    total = PollResult()
    try:
        _follow_loop(tailer, changed, wake, total, on_status, on_poll)
    finally:
        observer.stop()
        observer.join(timeout=5)
    return total


def _follow_loop(tailer: Tailer, changed: set[str], wake: threading.Event, total: PollResult,
                 on_status: Status | None, on_poll: Polled | None) -> None:
    settings = tailer.settings
    next_rescan = next_sources = 0.0
    window = _RateWindow(time.monotonic())
    retry = _Retry(tailer.notify)
    while not tailer.stop.is_set():
        now = time.monotonic()
        try:
            if now >= next_rescan:
                sources = now >= next_sources
                result = tailer.poll(sources=sources)
                next_rescan = now + settings.rescan_seconds
                if sources:
                    next_sources = now + settings.sources_rescan_seconds
            else:
                paths = []
                while changed:  # pop, not list+clear: an event added in between is kept
                    paths.append(changed.pop())
                result = tailer.poll(only=paths)
        except StorageError as error:
            next_rescan = next_sources = 0.0  # a full rescan once there is room again
            _sleep(tailer, retry.failed(error))
            continue
        retry.succeeded()
        if on_poll is not None:
            on_poll(result)
        _add(total, result)
        window.add(result)
        if on_status and window.due(settings.status_interval):
            on_status(window.summary(tailer.lag_bytes(), len(tailer.files.open)))
        # Wake on a file event or the next rescan, and notice `stop` within STOP_CHECK_SECONDS.
        while not (wake.is_set() or tailer.stop.is_set()):
            remaining = next_rescan - time.monotonic()
            if remaining <= 0:
                break
            wake.wait(timeout=min(remaining, STOP_CHECK_SECONDS))
        wake.clear()


@dataclass
class _Retry:
    """The wait after a refused write: doubling from RETRY_FIRST_SECONDS to the maximum;
    the refusal is told once, and so is the recovery."""

    notify: Callable[[str], None]
    wait: float = 0.0

    def failed(self, error: StorageError) -> float:
        if self.wait == 0.0:
            self.notify(f"{error.message}; retrying until it succeeds"
                        + (f" ({error.hint})" if error.hint else ""))
        self.wait = min(RETRY_MAX_SECONDS, max(RETRY_FIRST_SECONDS, self.wait * 2))
        return self.wait

    def succeeded(self) -> None:
        if self.wait:
            self.notify("writing works again; tailing goes on")
        self.wait = 0.0


def _sleep(tailer: Tailer, seconds: float) -> None:
    tailer.stop.wait(timeout=seconds)


def _add(total: PollResult, result: PollResult) -> None:
    total.staged += result.staged
    total.quarantined += result.quarantined
    total.batches += result.batches
    total.bytes += result.bytes
    total.files = result.files
    total.unreadable = result.unreadable


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
