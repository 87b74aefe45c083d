"""Budgets checked as batches land: the running totals of a following tailer, the alerts
they call for, and what live readers see (pipeline.live).

`BudgetMonitor.batch_committed` runs in the tailer's thread after each commit; it never
raises into the tailer. Whatever goes wrong there (a batch compacted away before it was
read, a full disk) marks the totals stale, and the next `publish` counts them again.
Running totals only point at crossings: an alert is raised on an exact count of its
period, read from the rollups and the stage. `check_budgets` is the one-shot check at the
end of `tally tail --once` and `tally compact`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.alerts import alert_text, alerted_ids, raise_new_alerts
from pipeline.budgets import (
    Crossing,
    DayUsage,
    UsageIndex,
    budgets_of,
    crossings,
    local_today,
    period_start,
)
from pipeline.config import Home
from pipeline.delivery import Deliverer, deliver_due, receivers
from pipeline.errors import TallyError, safe_text
from pipeline.follow import follow
from pipeline.live import PUBLISH_IDLE_SECONDS, feed_line, kept_live, summary, write_live
from pipeline.stage import BatchId, Committed, write_atomic
from pipeline.tailer import PollResult, Tailer
from pipeline.totals import LiveTotals, Spend

CHECKED_FILE = "checked"  # `tally tail --once`'s last check: the watermark and the day
COUNTED_TYPES = frozenset({"agent_token_usage", "task_progress"})
PUBLISH_EVERY_SECONDS = 0.5  # live.json at most this often while batches land
ONE_SHOT_DELIVERY_SECONDS = 30.0  # `tally compact` and `tail --once` try no longer
# A following tailer on a shared lake counts again this often: other hosts' events.
FLEET_SEED_SECONDS = 60.0
Notify = Callable[[str], None]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


class BudgetMonitor:
    """Running totals, budget checks and live publishing for one following tailer."""

    def __init__(self, home: Home, notify: Notify, deliverer: Deliverer | None = None,
                 clock: Clock = utc_now, checked_day: date | None = None) -> None:
        # Polars, imported here: `check_budgets_after` with nothing to check never loads it.
        from pipeline.observe import batch_rows, exact_days, seed_totals
        from pipeline.pricing import pricing_for

        self._batch_rows, self._seed, self._exact = batch_rows, seed_totals, exact_days
        self.home, self.notify, self.deliverer, self.clock = home, notify, deliverer, clock
        self.budgets = budgets_of(home.budgets)
        self.table = pricing_for(home)
        self.alerted: set[str] | None = None  # read from the alert log before any alert
        self.totals = LiveTotals(tz=home.budgets.tz)
        self.stale = True  # the next refresh counts the totals from the lake
        self._seeded_at = 0.0  # when it last did (time.monotonic)
        self._seed_failed = False  # and failed: on a shared lake, tried again only later
        # The day of the last check: a period that ended since is checked once more (if
        # it ended yesterday: older ones are past periods, which never alert).
        today = local_today(clock(), home.budgets.tz)
        recent = checked_day is not None and today - timedelta(days=1) <= checked_day < today
        self._day = checked_day if recent and checked_day else today
        self._landed: list[tuple[str, dict[str, Spend]]] = []
        self._last_batch: str | None = None
        self._published = 0.0
        self.raised: list[dict[str, Any]] = []  # every alert this monitor raised
        self.failed = False  # a count or an alert failed: a later check must look again
        self._problem: str | None = None
        self.refresh()

    def batch_committed(self, batch: BatchId, types: frozenset[str]) -> None:
        """Count a committed batch (that staged `types`) and raise the alerts it calls for."""
        label = f"{batch.stream}/{batch.number}" if batch.stream else str(batch.number)
        self._last_batch = label
        added: dict[str, Spend] = {}
        try:
            if types & COUNTED_TYPES:
                rows = self._batch_rows(self.home, batch, types, self.totals, self.table)
                if rows is None:
                    self.stale = True
                else:
                    added = self.totals.add_rows(rows)
                    self.check()
        except Exception as exc:  # the batch is committed: counting it again is what is left
            self.stale = True
            self._tell_once(f"budget check after batch {label} failed, counting again: "
                            f"{safe_text(str(exc))}")
        self._landed.append((label, added))
        if self.seconds_since_publish() >= PUBLISH_EVERY_SECONDS:
            self.publish()

    def check(self) -> list[dict[str, Any]]:
        """Raise the alerts the current periods (and those that ended since the last
        check) call for, on an exact count; return their events."""
        now = self.clock()
        days = sorted({self._day, local_today(now, self.totals.tz)})
        try:
            events = self._raise(days, self.totals.day_usage())
        except TallyError as error:  # not written: the next check finds the crossing again
            self.failed = True
            self._tell_once(f"could not write a budget alert: {error.message}")
            return []
        except Exception as exc:  # the exact count failed (a file vanished): same again
            self.failed = True
            self._tell_once(f"could not count a budget's period: {safe_text(str(exc))}")
            return []
        if days[-1] != self._day:
            self._day = days[-1]
            self.totals.forget_before(now)
        self._problem = None
        for event in events:
            self.notify(f"ALERT {alert_text(event)}")
        self.raised += events
        if events and self.deliverer is not None:
            self.deliverer.wake()
        return events

    def _raise(self, days: list[date], usage: list[DayUsage]) -> list[dict[str, Any]]:
        index = UsageIndex(usage)
        if self.alerted is None:
            self.alerted = alerted_ids(self.home)
        if not self._crossings(days, index, self.alerted):
            return []
        since = period_start(days[0], "weekly")
        exact = self._exact(self.home, since, self.totals.tz)
        self.totals.set_days(since, exact)  # the running totals, set right where they were off
        counted = UsageIndex(DayUsage(a, d, s.tokens, s.cost_nano)
                             for (a, d), s in exact.items())
        events, self.alerted = raise_new_alerts(
            self.home, lambda alerted: self._crossings(days, counted, alerted),
            outbox=bool(receivers(self.home.alerts)))
        return events

    def _crossings(self, days: list[date], usage: UsageIndex,
                   alerted: set[str]) -> list[Crossing]:
        found = {c.event_id: c for day in days
                 for c in crossings(self.budgets, usage, day, alerted)}
        return list(found.values())

    @property
    def unpublished(self) -> bool:
        """Whether batches landed, or the totals went stale, since the last publish."""
        return bool(self._landed) or self.stale

    def seconds_since_publish(self) -> float:
        """How long ago live.json was last written by this monitor."""
        return time.monotonic() - self._published

    def _tell_once(self, problem: str) -> None:
        """Say a problem when it starts, not at every batch while it lasts."""
        if problem != self._problem:
            self.notify(problem)
        self._problem = problem

    def refresh(self) -> None:
        """Count the totals from the lake if they are stale (on a lake other hosts write
        too, every FLEET_SEED_SECONDS: their events arrive only there), then check the
        budgets."""
        shared = not self.home.lake_location.is_local
        since = time.monotonic() - self._seeded_at
        if shared and since >= FLEET_SEED_SECONDS:
            self.stale = True
        elif shared and self._seed_failed:
            return  # the store did not answer a moment ago: not again at every poll
        if self.stale or self.totals.needs_seed:
            self.stale = False
            self._seeded_at = time.monotonic()
            try:
                self.totals = self._seed(self.home, self.clock())
                self._seed_failed = False
            except Exception as exc:  # keep what was counted; try again next time
                self.stale = self.failed = self._seed_failed = True
                self._tell_once(f"could not count the current periods: {safe_text(str(exc))}")
            self.check()

    def publish(self) -> None:
        """Refresh, then write live.json and a feed line per batch landed since."""
        self.refresh()
        content = summary(self.totals, self.budgets, self.clock(), self._last_batch)
        lines = [feed_line(content, label, added) for label, added in self._landed]
        try:
            write_live(self.home, content, lines)
        except OSError as exc:
            self._tell_once(f"could not update {exc.filename or 'live.json'}: {exc.strerror}")
            return
        self._landed.clear()
        self._published = time.monotonic()


class LiveFollower:
    """Wires a budget monitor into a following tailer: counts batches as they commit,
    publishes what a pass left unpublished, and rewrites live.json when idle a while."""

    def __init__(self, tailer: Tailer, monitor: BudgetMonitor) -> None:
        self.monitor = monitor
        tailer.on_commit = monitor.batch_committed

    def after_poll(self, result: PollResult) -> None:
        """Publish what is waiting, or the burn rates once idle for a while."""
        if self.monitor.unpublished or \
                self.monitor.seconds_since_publish() >= PUBLISH_IDLE_SECONDS:
            self.monitor.publish()


def follow_with_budgets(tailer: Tailer, notify: Notify, status: Notify | None) -> PollResult:
    """`follow`, with budgets checked after every committed batch and alerts delivered
    (`status` gets the periodic summary lines)."""
    deliverer = Deliverer(tailer.home, notify).start()
    try:
        live = LiveFollower(tailer, BudgetMonitor(tailer.home, notify, deliverer))
        return follow(tailer, on_status=status, on_poll=live.after_poll)
    finally:
        deliverer.stop()


# ---------------------------------------------------------------- one-shot checks


def check_budgets_after(home: Home, notify: Notify, watermark: Committed) -> list[dict[str, Any]]:
    """`check_budgets` after a `tally tail --once`, unless no batch was committed since
    the last check (then only due deliveries are tried: no Polars is loaded).

    The watermark is recorded only once the check raised what it had to: a run killed
    before it alerted leaves the next run to check again. The day of the last check is
    kept with it, so a period that ended between two runs is still checked.
    """
    marker = home.state / "alerts" / CHECKED_FILE
    label = f"{watermark.stream}/{watermark.batch}"
    last_label, last_day = _read_marker(marker)
    if last_label == label:
        _deliver_once(home, notify)
        return []
    monitor = BudgetMonitor(home, notify, checked_day=last_day)
    monitor.publish()
    if not monitor.failed:
        marker.parent.mkdir(parents=True, exist_ok=True)
        text = f"{label}\n{local_today(monitor.clock(), home.budgets.tz).isoformat()}\n"
        write_atomic(marker, lambda handle: handle.write(text.encode()))
    _deliver_once(home, notify)
    return monitor.raised


def check_budgets(home: Home, notify: Notify, clock: Clock = utc_now) -> list[dict[str, Any]]:
    """Count the current periods from the lake, raise the alerts they call for, and try
    to deliver what waits in the outbox once; return the alerts raised. live.json is
    rewritten unless a following tailer keeps it."""
    monitor = BudgetMonitor(home, notify, clock=clock)
    if not kept_live(home):
        monitor.publish()
    _deliver_once(home, notify)
    return monitor.raised


def _read_marker(marker: Path) -> tuple[str | None, date | None]:
    try:
        lines = marker.read_text(encoding="utf-8").split()
    except OSError:
        return None, None
    try:
        day = date.fromisoformat(lines[1]) if len(lines) > 1 else None
    except ValueError:
        day = None
    return (lines[0] if lines else None), day


def _deliver_once(home: Home, notify: Notify) -> None:
    waiting = deliver_due(home, notify, deadline=time.monotonic() + ONE_SHOT_DELIVERY_SECONDS)
    if waiting:
        notify(f"{waiting} alert(s) wait for delivery; the next run tries again")

