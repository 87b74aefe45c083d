"""Following with budgets, and `tally run`: one process that follows the logs, checks
budgets after every batch, compacts on a schedule and delivers alerts.

Compaction runs on a thread of its own, as it would in a process of its own: the tailer
keeps staging while it runs (their files and locks are apart), and the budget totals
are counted again from the lake once it committed. SIGTERM stops all three cleanly:
the batch under way is committed, a compaction under way finishes, and alerts not yet
delivered stay in the outbox for the next start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.compactor import CompactionResult, run_compaction
from pipeline.config import Home
from pipeline.delivery import Deliverer
from pipeline.errors import TallyError, safe_text
from pipeline.follow import follow
from pipeline.live import PUBLISH_IDLE_SECONDS
from pipeline.monitor import BudgetMonitor
from pipeline.tailer import PollResult, Tailer

Notify = Callable[[str], None]


class LiveFollower:
    """Wires a budget monitor into a following tailer: counts batches as they commit,
    publishes after each pass that committed one (or when idle for a while)."""

    def __init__(self, tailer: Tailer, monitor: BudgetMonitor) -> None:
        self.monitor = monitor
        self._published = time.monotonic()
        tailer.on_commit = monitor.batch_committed

    def after_poll(self, result: PollResult) -> None:
        """Publish what the pass committed, and re-count after a compaction."""
        idle = time.monotonic() - self._published >= PUBLISH_IDLE_SECONDS
        if result.batches or self.monitor.stale or idle:
            self.monitor.publish()
            self._published = time.monotonic()


def follow_with_budgets(tailer: Tailer, notify: Notify) -> PollResult:
    """`follow`, with budgets checked after every committed batch and alerts delivered."""
    deliverer = Deliverer(tailer.home, notify).start()
    try:
        live = LiveFollower(tailer, BudgetMonitor(tailer.home, notify, deliverer))
        return follow(tailer, on_status=notify, on_poll=live.after_poll)
    finally:
        deliverer.stop()


@dataclass
class ServiceResult:
    """What a `tally run` did before it stopped."""

    tailed: PollResult = field(default_factory=PollResult)
    compactions: int = 0
    compacted_events: int = 0
    failed_compactions: int = 0


class Compactions:
    """Compacts every `[compactor] every` seconds on a thread, until stopped."""

    def __init__(self, home: Home, notify: Notify, stop: threading.Event,
                 compacted: Callable[[CompactionResult], None]) -> None:
        self.home = home
        self.notify = notify
        self.stop = stop
        self.compacted = compacted
        self.result = ServiceResult()
        self._thread = threading.Thread(target=self._run, name="tally-compact", daemon=True)

    def start(self) -> Compactions:
        self._thread.start()
        return self

    def join(self) -> None:
        """Wait for the compaction under way, if any."""
        self._thread.join()

    def _run(self) -> None:
        while not self.stop.wait(self.home.compactor.every):
            self.compact_once()

    def compact_once(self) -> None:
        """One compaction; a failure is told and tried again at the next turn."""
        try:
            result = run_compaction(self.home)
        except TallyError as error:
            self.result.failed_compactions += 1
            self.notify(f"compaction failed, trying again in {self.home.compactor.every:g} s: "
                        f"{safe_text(error.message)}")
            return
        except Exception as exc:  # a bug must not stop ingestion: say it, try again later
            self.result.failed_compactions += 1
            self.notify(f"compaction failed unexpectedly: {safe_text(repr(exc))}")
            return
        self.result.compactions += 1
        self.result.compacted_events += result.events
        if result.events:
            self.notify(f"compact: {result.events:,} events in {result.commits} commit(s), "
                        f"{result.seconds:.2f} s")
            self.compacted(result)


def run_service(home: Home, notify: Notify,
                on_ready: Callable[[Tailer], None] | None = None) -> ServiceResult:
    """Follow, check budgets, compact on a schedule and deliver alerts until the tailer's
    `stop` is set (`on_ready` gets the tailer first: a signal handler sets it)."""
    deliverer = Deliverer(home, notify).start()
    try:
        with Tailer(home, notify=notify) as tailer:
            if on_ready is not None:
                on_ready(tailer)
            monitor = BudgetMonitor(home, notify, deliverer)
            live = LiveFollower(tailer, monitor)
            compactions = Compactions(home, notify, tailer.stop, _restale(monitor)).start()
            try:
                tailed = follow(tailer, on_status=notify, on_poll=live.after_poll)
            finally:
                tailer.stop.set()
                compactions.join()
        compactions.result.tailed = tailed
        return compactions.result
    finally:
        deliverer.stop()


def _restale(monitor: BudgetMonitor) -> Callable[[CompactionResult], None]:
    def compacted(result: CompactionResult) -> None:
        monitor.stale = True  # read by the tailer's thread at its next pass

    return compacted
