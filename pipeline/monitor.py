"""Budgets checked as batches land: the running totals of a following tailer, the alerts
they call for, and what live readers see (pipeline.live).

`BudgetMonitor.batch_committed` runs in the tailer's thread after each commit; it never
raises into the tailer. Whatever goes wrong there (a batch compacted away before it was
read, a full disk) marks the totals stale, and the next `publish` counts them again from
the lake. `check_budgets` is the one-shot check at the end of `tally tail --once` and
`tally compact`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipeline.alerts import alert_text, alerted_ids, raise_new_alerts
from pipeline.budgets import budgets_of, crossings, local_today
from pipeline.config import Home
from pipeline.delivery import Deliverer, deliver_due
from pipeline.errors import TallyError, safe_text
from pipeline.live import feed_line, summary, write_live
from pipeline.stage import BatchId, Committed, write_atomic
from pipeline.totals import LiveTotals, Spend

CHECKED_FILE = "checked"  # the tailer watermark of the last `tally tail --once` check
Notify = Callable[[str], None]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


class BudgetMonitor:
    """Running totals, budget checks and live publishing for one following tailer."""

    def __init__(self, home: Home, notify: Notify, deliverer: Deliverer | None = None,
                 clock: Clock = utc_now) -> None:
        self.home = home
        self.notify = notify
        self.deliverer = deliverer
        self.clock = clock
        # Polars, imported here: `check_budgets_after` with nothing to check never loads it.
        from pipeline.observe import batch_rows, seed_totals
        from pipeline.pricing import pricing_for

        self._batch_rows, self._seed = batch_rows, seed_totals
        self.budgets = budgets_of(home.budgets)
        self.table = pricing_for(home)
        self.alerted: set[str] | None = None  # read from the alert log before any alert
        self.totals = LiveTotals(tz=home.budgets.tz)
        self.stale = True  # set from any thread (a compaction): the next publish re-counts
        self._day = local_today(clock(), home.budgets.tz)
        self._landed: list[tuple[str, dict[str, Spend]]] = []
        self._last_batch: str | None = None
        self.raised: list[dict[str, Any]] = []  # every alert this monitor raised
        self.failed = False  # a count or an alert failed: a later check must look again
        self._problem: str | None = None
        self.publish()

    def batch_committed(self, batch: BatchId, types: frozenset[str]) -> None:
        """Count a committed batch (that staged `types`) and raise the alerts it calls for."""
        label = f"{batch.stream}/{batch.number}" if batch.stream else str(batch.number)
        self._last_batch = label
        try:
            if not types & {"agent_token_usage", "task_progress"}:
                self._landed.append((label, {}))  # nothing budgets count
                return
            rows = self._batch_rows(self.home, batch, types, self.totals, self.table)
            if rows is None:
                self.stale = True
                return
            self._landed.append((label, self.totals.add_rows(rows)))
            self.check()
        except Exception as exc:  # the batch is committed: counting it again is what is left
            self.stale = True
            self.notify(f"budget check after batch {label} failed, counting again: "
                        f"{safe_text(str(exc))}")

    def check(self) -> list[dict[str, Any]]:
        """Raise the alerts the current periods call for; return their events."""
        now = self.clock()
        today = local_today(now, self.totals.tz)
        if today != self._day:
            self.totals.forget_before(now)
            self._day = today
        days = self.totals.day_usage()
        try:
            if self.alerted is None:
                self.alerted = alerted_ids(self.home)
            if not crossings(self.budgets, days, today, self.alerted):
                return []
            events, self.alerted = raise_new_alerts(
                self.home, lambda alerted: crossings(self.budgets, days, today, alerted))
        except TallyError as error:  # not written: the next check finds the crossing again
            self.failed = True
            self._tell_once(f"could not write a budget alert: {error.message}")
            return []
        self._problem = None
        for event in events:
            self.notify(f"ALERT {alert_text(event)}")
        self.raised += events
        if self.deliverer is not None:
            self.deliverer.wake()
        return events

    def _tell_once(self, problem: str) -> None:
        """Say a problem when it starts, not at every batch while it lasts."""
        if problem != self._problem:
            self.notify(problem)
        self._problem = problem

    def publish(self) -> None:
        """Re-count if stale, then write live.json and a feed line per batch counted."""
        if self.stale or self.totals.needs_seed:
            self.stale = False
            try:
                self.totals = self._seed(self.home, self.clock())
            except Exception as exc:  # keep what was counted; try again next time
                self.stale = self.failed = True
                self.notify(f"could not count the current periods: {safe_text(str(exc))}")
            self.check()
        now = self.clock()
        content = summary(self.totals, self.budgets, now, self._last_batch)
        lines = [feed_line(content, label, added) for label, added in self._landed]
        try:
            write_live(self.home, content, lines)
        except OSError as exc:
            self.notify(f"could not update {exc.filename or 'live.json'}: {exc.strerror}")
            return
        self._landed.clear()


def check_budgets_after(home: Home, notify: Notify, watermark: Committed) -> list[dict[str, Any]]:
    """`check_budgets` after a `tally tail --once`, unless no batch was committed since
    the last check (a cron run that found nothing loads no Polars).

    The watermark is recorded only once the check raised what it had to: a run killed
    before it alerted leaves the next run to check again.
    """
    marker = home.state / "alerts" / CHECKED_FILE
    label = f"{watermark.stream}/{watermark.batch}"
    try:
        if marker.read_text(encoding="utf-8") == label:
            return []
    except OSError:
        pass
    monitor = BudgetMonitor(home, notify)
    raised = monitor.raised
    if not monitor.failed:
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, lambda handle: handle.write(label.encode()))
    _deliver_once(home, notify)
    return raised


def check_budgets(home: Home, notify: Notify, clock: Clock = utc_now) -> list[dict[str, Any]]:
    """Count the current periods from the lake, raise the alerts they call for, and try
    to deliver what waits in the outbox once; return the alerts raised."""
    monitor = BudgetMonitor(home, notify, clock=clock)
    _deliver_once(home, notify)
    return monitor.raised


def _deliver_once(home: Home, notify: Notify) -> None:
    waiting = deliver_due(home, notify)
    if waiting:
        notify(f"{waiting} alert(s) wait for delivery; the next run tries again")
