"""What a following tailer publishes for live readers, in `state/`: `live.json`, the
current periods at a glance (rewritten after every poll that committed a batch), and
`feed.jsonl`, one line per committed batch (`tally watch --json`).

Both are views, rebuilt from the lake by the next tailer: they are written without
fsync. Pure Python, no Polars: `tally statusline` reads them on every assistant message.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.budgets import (
    ALL,
    Budget,
    UsageIndex,
    local_today,
    period_begin,
    period_days,
    period_end,
    period_start,
    period_usage,
)
from pipeline.rates import Burn, burn_rate, current_block
from pipeline.totals import NANO, SESSION_HOURS, LiveTotals, Spend, minute_totals

if TYPE_CHECKING:  # the statusline imports this module: keep it light
    from pipeline.config import Home

LIVE_FILE = "live.json"
FEED_FILE = "feed.jsonl"
FEED_MAX_BYTES = 1 << 20  # then feed.jsonl moves to feed.jsonl.1 and starts again
NO_FILE = -2  # FeedReader.inode while the feed does not exist
LEVEL_NAMES = ("ok", "warning", "exceeded")
PUBLISH_IDLE_SECONDS = 30.0  # live.json is rewritten this often without batches (burn rates)


def live_path(home: Home) -> Path:
    """The summary a following tailer keeps current."""
    return home.state / LIVE_FILE


def feed_path(home: Home) -> Path:
    """The per-batch lines a following tailer appends."""
    return home.state / FEED_FILE


def spend_in(totals: LiveTotals, agent: str | None, start: date, period: str) -> Spend:
    """One agent's (or everyone's) spend in the period that starts on day `start`."""
    days = set(period_days(start, period))
    spend = Spend()
    for (name, day), part in totals.days.items():
        if day in days and (agent is None or name == agent):
            spend.add(part.tokens, part.cost_nano, part.unpriced)
    return spend


def _budget_state(budget: Budget, totals: LiveTotals, now: datetime, index: UsageIndex,
                  everyone: dict[int, Spend]) -> dict[str, Any]:
    """A budget in the current period: used, percentage, level, burn rate, projection
    (`index` and `everyone`'s minutes are counted once for all budgets)."""
    start = period_start(local_today(now, totals.tz), budget.period)
    minutes = everyone if budget.scope == ALL else minute_totals(totals, budget.scope)
    burn = burn_rate(minutes, now)
    return budget_row(budget, start, period_usage(budget, start, index), burn, now, totals.tz)


def budget_row(budget: Budget, start: date, used: float, burn: Burn | None, now: datetime,
               tz: str) -> dict[str, Any]:
    """One row of `tally budget`: the period, its usage against the budget, and, for a
    current period (`burn` given), the rate and where it leads."""
    end = period_end(start, budget.period, tz)
    row: dict[str, Any] = {
        "scope": budget.scope, "period": budget.period, "metric": budget.metric,
        "period_start": start.isoformat(), "used": _metric(used, budget.metric),
        "budget": _metric(budget.limit, budget.metric),
        "percentage": round(budget.percentage(used), 2),
        "status": LEVEL_NAMES[budget.level(used)],
        "burn_per_hour": None, "projected": None, "exceeded_at": None, "minutes_left": None,
    }
    if burn is not None and period_begin(start, tz) <= now < end:
        rate = burn.tokens_per_minute if budget.metric == "tokens" else burn.cost_per_minute
        row["burn_per_hour"] = _metric(rate * 60, budget.metric)
        row["projected"] = _metric(burn.projected(used, budget.metric, end, now), budget.metric)
        left = burn.time_left(used, budget.limit, budget.metric)
        if left and now + left < end:  # not yet exceeded, and will be within the period
            row["exceeded_at"] = _iso((now + left).replace(microsecond=0))
            row["minutes_left"] = round(left.total_seconds() / 60, 1)
    return row


def _metric(value: float, metric: str) -> float | int:
    return round(value, 4) if metric == "cost" else round(value)


def summary(totals: LiveTotals, budgets: Sequence[Budget], now: datetime,
            batch: str | None) -> dict[str, Any]:
    """Everything `live.json` holds, as of `now`."""
    today = local_today(now, totals.tz)
    week = period_start(today, "weekly")
    agents = sorted({agent for agent, _ in totals.days} | {agent for agent, _ in totals.tasks})
    everyone, index = minute_totals(totals), totals.usage_index()
    burn = burn_rate(everyone, now)
    day_end = period_end(today, "daily", totals.tz)
    spent_today = spend_in(totals, None, today, "daily")
    block = current_block(everyone, now)
    return {
        "updated": _iso(now), "tz": totals.tz, "today": today.isoformat(),
        "week_start": week.isoformat(), "batch": batch,
        "all": {"today": spent_today.as_dict(), "week": spend_in(totals, None, week,
                                                                  "weekly").as_dict()},
        "agents": {agent: {"today": spend_in(totals, agent, today, "daily").as_dict(),
                           "week": spend_in(totals, agent, week, "weekly").as_dict()}
                   for agent in agents},
        "burn": {"tokens_per_minute": round(burn.tokens_per_minute, 1),
                 "cost_per_hour": round(burn.cost_per_hour, 4),
                 "projected_day_tokens": round(burn.projected(
                     spent_today.tokens, "tokens", day_end, now)),
                 "projected_day_cost_usd": round(burn.projected(
                     spent_today.cost_nano / NANO, "cost", day_end, now), 4)},
        "block": block.as_dict() if block else None,
        "budgets": [_budget_state(budget, totals, now, index, everyone) for budget in budgets],
        "sessions": _sessions(totals, now),
        "tasks": _latest_tasks(totals),
    }


def _sessions(totals: LiveTotals, now: datetime) -> dict[str, dict[str, Any]]:
    recent = now - timedelta(hours=SESSION_HOURS)
    found: dict[str, tuple[list[str], Spend]] = {}
    for (agent, session), spend in totals.sessions.items():
        if totals.session_last.get((agent, session), now) >= recent:
            agents, total = found.setdefault(session, ([], Spend()))
            agents.append(agent)  # a subagent may log the session under its own name
            total.add(spend.tokens, spend.cost_nano, spend.unpriced)
    return {session: {"agent": ",".join(sorted(agents)), **total.as_dict()}
            for session, (agents, total) in found.items()}


def _latest_tasks(totals: LiveTotals) -> dict[str, dict[str, Any]]:
    """Per agent, its most recently updated task."""
    latest: dict[str, dict[str, Any]] = {}
    for (agent, task), state in totals.tasks.items():
        if agent not in latest or state["ts"] > latest[agent]["ts"]:
            latest[agent] = {"task": task, **state}
    return {agent: {**state, "ts": _iso(state["ts"])} for agent, state in latest.items()}


def feed_line(summary_now: dict[str, Any], batch: str, added: dict[str, Spend]) -> bytes:
    """The line `tally watch --json` prints for one committed batch."""
    line = {
        "batch": batch, "ts": summary_now["updated"],
        "added": {agent: spend.as_dict() for agent, spend in sorted(added.items())},
        "today": {ALL: summary_now["all"]["today"],
                  **{a: v["today"] for a, v in summary_now["agents"].items()}},
        "week": {ALL: summary_now["all"]["week"],
                 **{a: v["week"] for a, v in summary_now["agents"].items()}},
        "budgets": [{k: b[k] for k in ("scope", "period", "metric", "used", "budget",
                                       "percentage", "status")}
                    for b in summary_now["budgets"]],
    }
    return orjson.dumps(line) + b"\n"


# ---------------------------------------------------------------- files


def write_live(home: Home, content: dict[str, Any], lines: Sequence[bytes]) -> None:
    """Replace live.json and append the feed lines (the feed rolls over at FEED_MAX_BYTES)."""
    path = live_path(home)
    # A name of its own: `tally compact` may publish while a following tailer does.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)
    if not lines:
        return
    feed = feed_path(home)
    try:
        if feed.stat().st_size > FEED_MAX_BYTES:
            os.replace(feed, feed.with_name(FEED_FILE + ".1"))
    except FileNotFoundError:
        pass
    with open(feed, "ab") as handle:
        handle.write(b"".join(lines))


def live_age(home: Home) -> float | None:
    """Seconds since live.json was written, None without one."""
    try:
        return time.time() - os.stat(live_path(home)).st_mtime
    except OSError:
        return None


def kept_live(home: Home) -> bool:
    """Whether a following tailer keeps live.json (it rewrites it at least every
    PUBLISH_IDLE_SECONDS)."""
    age = live_age(home)
    return age is not None and age < 2 * PUBLISH_IDLE_SECONDS


def read_live(home: Home) -> dict[str, Any] | None:
    """live.json, None when there is none (or it cannot be read)."""
    try:
        content = orjson.loads(live_path(home).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


@dataclass
class FeedReader:
    """Follows feed.jsonl from its end: new lines as they come, across roll-overs."""

    path: Path
    offset: int = -1
    inode: int = -1

    def lines(self) -> Iterator[bytes]:
        """The complete lines appended since the last call."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.offset < 0:  # no feed yet: its first line is new when it comes
                self.offset, self.inode = 0, NO_FILE
            return
        if self.offset < 0:  # start at the end: only batches from now on
            self.offset, self.inode = st.st_size, st.st_ino
            return
        if st.st_ino != self.inode:
            if self.inode != NO_FILE:  # rolled over: the rest of the old one comes first
                yield from self._rest(self.path.with_name(FEED_FILE + ".1"), self.offset)
            self.offset, self.inode = 0, st.st_ino
        if st.st_size <= self.offset:
            return
        yield from self._rest(self.path, self.offset, advance=True)

    def _rest(self, path: Path, offset: int, advance: bool = False) -> Iterator[bytes]:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return
        complete = data[:data.rfind(b"\n") + 1]
        if advance:
            self.offset = offset + len(complete)
        yield from complete.splitlines()


def _iso(moment: Any) -> str:
    text: str = moment.isoformat()
    return text.replace("+00:00", "Z")
