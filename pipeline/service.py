"""`tally run`: one process that follows the logs, checks budgets after every batch,
compacts on a schedule and delivers alerts.

Compaction runs on a thread of its own, as it would in a process of its own: the tailer
keeps staging while it runs (their files and locks are apart), and the budget totals,
which count batches as they commit, are the same before and after it. SIGTERM stops
all three cleanly: the batch under way is committed, a compaction under way finishes,
and alerts not yet delivered stay in the outbox for the next start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.compactor import run_compaction
from pipeline.config import Home
from pipeline.delivery import Deliverer
from pipeline.errors import TallyError, safe_text
from pipeline.follow import follow
from pipeline.monitor import BudgetMonitor, LiveFollower
from pipeline.tailer import PollResult, Tailer

Notify = Callable[[str], None]


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
                 status: Notify | None = None) -> None:
        self.home = home
        self.notify = notify
        self.status = status
        self.stop = stop
        self.result = ServiceResult()
        self._thread = threading.Thread(target=self._run, name="tally-compact", daemon=True)

    def start(self) -> Compactions:
        """Start the schedule: the first compaction is one period from now."""
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
        if result.events and self.status is not None:
            self.status(f"compact: {result.events:,} events in {result.commits} commit(s), "
                        f"{result.seconds:.2f} s")


def run_service(home: Home, notify: Notify, status: Notify | None = None,
                on_ready: Callable[[Tailer], None] | None = None) -> ServiceResult:
    """Follow, check budgets, compact on a schedule and deliver alerts until the tailer's
    `stop` is set (`on_ready` gets the tailer first: a signal handler sets it). `notify`
    gets alerts and failures, `status` the tailer's notes and the summary lines."""
    deliverer = Deliverer(home, notify).start()
    try:
        with Tailer(home, notify=status or (lambda message: None)) as tailer:
            if on_ready is not None:
                on_ready(tailer)
            live = LiveFollower(tailer, BudgetMonitor(home, notify, deliverer))
            compactions = Compactions(home, notify, tailer.stop, status).start()
            try:
                tailed = follow(tailer, on_status=status, on_poll=live.after_poll)
            finally:
                tailer.stop.set()
                compactions.join()
        compactions.result.tailed = tailed
        return compactions.result
    finally:
        deliverer.stop()
