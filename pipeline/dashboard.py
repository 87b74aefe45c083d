"""What the dashboard shows, page by page, as JSON-ready values: the overview's periods, the
quarantine with line numbers, the alert log. Reports, budgets and progress come from the
same library calls as the CLI's; nothing here knows of HTTP."""

from __future__ import annotations

import os
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
        for row in inside:
            _add(per_agent[row["agent"]], row)
        total = _zero()
        for row in inside:
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
    lines = LineNumbers(home.logs)
    rows = [{"file": record.get("source"), "line": lines.of(record),
             **{k: record.get(k) for k in ("offset", "reason", "message", "pointer", "excerpt",
                                           "excerpt_truncated", "detected_at")}}
            for record in newest]
    return {"total": len(records), "matching": len(chosen), "reasons": dict(sorted(
        reasons.items())), "rows": rows}


@dataclass
class LineNumbers:
    """Line numbers of byte offsets in the watched files, each file read once as far as
    the furthest offset asked for."""

    logs: Path
    _starts: dict[str, list[int]] = field(default_factory=dict)

    def of(self, record: dict[str, Any]) -> int | None:
        """The 1-based line at the record's offset, None if the file is gone or shorter."""
        source, offset = record.get("source"), record.get("offset")
        if not isinstance(source, str) or not isinstance(offset, int) or offset < 0:
            return None
        starts = self._starts.get(source)
        if starts is None:
            starts = self._starts[source] = self._line_starts(self.logs / source)
        if not starts or offset > starts[-1]:
            return None
        low, high = 0, len(starts) - 1
        while low < high:  # the last line start at or before the offset
            middle = (low + high + 1) // 2
            low, high = (middle, high) if starts[middle] <= offset else (low, middle - 1)
        return low + 1 if starts[low] == offset else None

    @staticmethod
    def _line_starts(path: Path) -> list[int]:
        """Where each line of the file starts (not the end of a file that ends in one)."""
        starts = [0]
        try:
            with open(path, "rb") as handle:
                position = 0
                while chunk := handle.read(READ_CHUNK):
                    found = chunk.find(b"\n")
                    while found >= 0:
                        starts.append(position + found + 1)
                        found = chunk.find(b"\n", found + 1)
                    position += len(chunk)
        except OSError:
            return []
        if starts[-1] == position:  # the end of the file: no line starts there
            starts.pop()
        return starts


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
    _feed: FeedReader | None = None
    _seen: dict[str, tuple[float, int] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._feed = FeedReader(feed_path(self.home))
        list(self._feed.lines())  # from now on
        self._seen = self._marks()

    def look(self) -> list[dict[str, Any]]:
        """The changes since the last look: one `batch` per feed line, else one `changed`."""
        assert self._feed is not None
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
