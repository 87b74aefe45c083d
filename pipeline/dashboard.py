"""What the dashboard shows, page by page, as JSON-ready values: the overview's periods, the
quarantine with line numbers, the alert log. Reports, budgets and progress come from the
same library calls as the CLI's; nothing here knows of HTTP."""

from __future__ import annotations

import bisect
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from pipeline.alerts import alert_log, pending_alerts
from pipeline.budgets import budgets_of
from pipeline.checkpoint import CHECKPOINT
from pipeline.config import Home
from pipeline.live import FeedReader, feed_path, kept_live, read_live, summary
from pipeline.query import ReportQuery
from pipeline.records import json_records
from pipeline.reports import run_report
from pipeline.stage import iter_quarantine

PERIODS = ("today", "week", "month")
COUNTED = ("events", "total_tokens", "cost_usd", "unpriced_events")
READ_CHUNK = 1 << 20
COMPARED_CHARS = 16  # of a quarantined line's copy, to tell it is still at its offset


def period_starts(today: date) -> dict[str, date]:
    """The first day of today, this ISO week (Monday) and this month."""
    return {"today": today, "week": today - timedelta(days=today.weekday()),
            "month": today.replace(day=1)}


def overview(home: Home, today: date, tz: str, cost_mode: str = "auto") -> dict[str, Any]:
    """Events, tokens and cost today, this week and this month, in all and per agent: the
    sums of `tally report --by agent,day` over each period."""
    starts = period_starts(today)
    query = ReportQuery(by=("agent", "day"), since=min(starts.values()), until=today, tz=tz,
                        cost_mode=cost_mode)
    rows = json_records(run_report(home, query).rows)
    periods = {}
    for name, start in starts.items():
        inside = [row for row in rows if row["day"] >= start.isoformat()]
        per_agent: dict[str, dict[str, Any]] = defaultdict(_zero)
        total = _zero()
        for row in inside:
            _add(per_agent[row["agent"]], row)
            _add(total, row)
        periods[name] = {"since": start.isoformat(), "until": today.isoformat(), **total,
                         "agents": [{"agent": agent, **counts}
                                    for agent, counts in sorted(per_agent.items())]}
    return {"date": today.isoformat(), "tz": tz, "cost_mode": cost_mode, **periods}


def _zero() -> dict[str, Any]:
    return {"events": 0, "total_tokens": 0, "cost_usd": None, "unpriced_events": 0}


def _add(into: dict[str, Any], row: dict[str, Any]) -> None:
    for name in COUNTED:
        if row[name] is not None:
            into[name] = round((into[name] or 0) + row[name], 6)


def live_view(home: Home, now: datetime) -> dict[str, Any]:
    """Burn rate, 5-hour block, budget states and latest tasks: what a following tailer
    publishes in live.json, else the same counted from the lake now."""
    if kept_live(home):
        published = read_live(home)
        if published is not None:
            return {**published, "from_lake": False}
    from pipeline.observe import seed_totals  # Polars: only when no tailer publishes

    return {**summary(seed_totals(home, now), budgets_of(home.budgets), now, None),
            "from_lake": True}


def today_in(tz: str, now: datetime) -> date:
    """The date `now` falls on in `tz`."""
    return now.astimezone(ZoneInfo(tz)).date()


# ---------------------------------------------------------------- quarantine and alerts


def quarantine_view(home: Home, limit: int, reason: str | None = None) -> dict[str, Any]:
    """The newest `limit` quarantined lines (of `reason`, if given), each with its file,
    line number (while the file still holds that offset), reason and copy; and counts."""
    records = list(iter_quarantine(home.quarantine))
    reasons: dict[str, int] = defaultdict(int)
    for record in records:
        reasons[str(record.get("reason"))] += 1
    chosen = [r for r in records if reason is None or r.get("reason") == reason]
    newest = sorted(chosen, key=lambda r: str(r.get("detected_at", "")), reverse=True)[:limit]
    furthest: dict[str, int] = {}
    for record in newest:
        source, offset = record.get("source"), record.get("offset")
        if isinstance(source, str) and isinstance(offset, int):
            furthest[source] = max(offset, furthest.get(source, 0))
    lines = LineNumbers(home.logs, furthest)
    rows = [{"file": record.get("source"), "line": lines.of(record),
             **{k: record.get(k) for k in ("offset", "reason", "message", "pointer", "excerpt",
                                           "excerpt_truncated", "detected_at")}}
            for record in newest]
    return {"total": len(records), "matching": len(chosen), "reasons": dict(sorted(
        reasons.items())), "rows": rows}


@dataclass
class LineNumbers:
    """Line numbers of quarantined lines in the watched files, each file read once and only
    as far as the furthest offset asked for (`furthest`, per file)."""

    logs: Path
    furthest: dict[str, int]
    _starts: dict[str, list[int]] = field(default_factory=dict)

    def of(self, record: dict[str, Any]) -> int | None:
        """The 1-based line at the record's offset; None if the file is gone, or holds
        another line there now (rotated, rewritten)."""
        source, offset = record.get("source"), record.get("offset")
        if not isinstance(source, str) or not isinstance(offset, int) or offset < 0:
            return None
        path = self.logs / source
        starts = self._starts.get(source)
        if starts is None:
            starts = self._starts[source] = _line_starts(path, self.furthest.get(source,
                                                                                 sys.maxsize))
        index = bisect.bisect_left(starts, offset)
        if index == len(starts) or starts[index] != offset:
            return None
        return index + 1 if _holds(path, offset, str(record.get("excerpt", ""))) else None


def _line_starts(path: Path, until: int) -> list[int]:
    """Where the file's lines start, up to offset `until` (not the end of the file)."""
    starts, position = [0], 0
    try:
        with open(path, "rb") as handle:
            while position <= until and (chunk := handle.read(READ_CHUNK)):
                found = chunk.find(b"\n")
                while found >= 0:
                    starts.append(position + found + 1)
                    found = chunk.find(b"\n", found + 1)
                position += len(chunk)
            at_end = not handle.read(1)
    except OSError:
        return []
    if at_end and starts[-1] == position:  # the end of the file: no line starts there
        starts.pop()
    return starts


def _holds(path: Path, offset: int, excerpt: str) -> bool:
    """Whether the file still holds the quarantined line at `offset` (its copy's start)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            head = handle.read(COMPARED_CHARS * 4)
    except OSError:
        return False
    shown = head.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    length = min(COMPARED_CHARS, len(excerpt))
    return shown[:length] == excerpt[:length]


def alerts_view(home: Home, limit: int) -> dict[str, Any]:
    """The newest `limit` budget alerts from the alert log, and how many await delivery."""
    try:
        data = alert_log(home).read_bytes()
    except FileNotFoundError:
        data = b""
    alerts = []
    for line in data.splitlines():
        try:
            alert = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(alert, dict):
            alerts.append(alert)
    newest = sorted(alerts, key=lambda a: str(a.get("ts", "")), reverse=True)[:limit]
    return {"total": len(alerts), "pending_delivery": len(pending_alerts(home)), "rows": newest}


# ---------------------------------------------------------------- changes


@dataclass
class Changes:
    """Tells what changed in a home since the last look: batches a following tailer
    published (its feed lines), else any commit, alert or quarantine that a running
    `tally tail --once`, `import` or `compact` left. A look is a few `stat` calls."""

    home: Home
    _feed: FeedReader = field(init=False)
    _seen: dict[str, tuple[float, int] | None] = field(init=False)

    def __post_init__(self) -> None:
        self._feed = FeedReader(feed_path(self.home))
        list(self._feed.lines())  # from now on
        self._seen = self._marks()

    def look(self) -> list[dict[str, Any]]:
        """The changes since the last look: one `batch` per feed line, else one `changed`."""
        found: list[dict[str, Any]] = []
        for line in self._feed.lines():
            try:
                found.append({"kind": "batch", **orjson.loads(line)})
            except orjson.JSONDecodeError:
                continue
        marks = self._marks()
        if marks != self._seen and not found:
            found.append({"kind": "changed",
                          "what": sorted(k for k in marks if marks[k] != self._seen.get(k))})
        self._seen = marks
        return found

    def _marks(self) -> dict[str, tuple[float, int] | None]:
        paths = {"checkpoint": self.home.state / CHECKPOINT, "alerts": alert_log(self.home),
                 "quarantine": self.home.quarantine}
        return {name: _mark(path) for name, path in paths.items()}


def _mark(path: Path) -> tuple[float, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime, st.st_size
