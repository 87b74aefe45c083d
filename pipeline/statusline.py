"""`tally statusline`: one short line for Claude Code's status bar, from the JSON it pipes
in (session_id, model, cwd) and the live.json a following tailer keeps.

Claude Code runs it after every assistant message, so it reads two small files and
imports nothing heavy: no Polars, no click beyond the command line's own.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.budgets import local_today
from pipeline.live import LIVE_FILE

NO_TOTALS = "tally: no live totals yet (run `tally run`, or `tally tail`)"
NO_HOME = "tally: no home at {home} (run `tally init --home {home}`, or set TALLY_HOME)"


def line_for(home: str, payload_bytes: bytes) -> str:
    """The line for the home at `home`, given the payload Claude Code piped in."""
    if not os.path.isdir(home):  # a status bar shows stdout: say it there, not as an error
        return NO_HOME.format(home=home)
    return statusline(parse_payload(payload_bytes), read_summary(home))


def read_summary(home: str) -> dict[str, Any] | None:
    """live.json of the home at `home`, None when there is none (or it cannot be read)."""
    try:
        with open(os.path.join(home, "state", LIVE_FILE), "rb") as handle:
            content = orjson.loads(handle.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


def parse_payload(data: bytes) -> dict[str, Any]:
    """Claude Code's statusline JSON; an empty or unreadable payload is an empty one."""
    try:
        payload = orjson.loads(data) if data.strip() else {}
    except orjson.JSONDecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}


def statusline(payload: dict[str, Any], live: dict[str, Any] | None,
               now: datetime | None = None) -> str:
    """The line: the model, this session's and today's tokens and cost, and the daily
    budget's percentage."""
    if live is None:
        return NO_TOTALS
    now = now or datetime.now(UTC)
    fresh_day = live.get("today") == local_today(now, str(live.get("tz", "UTC"))).isoformat()
    parts = []
    model = payload.get("model")
    if isinstance(model, dict) and model.get("display_name"):
        parts.append(str(model["display_name"]))
    session = live.get("sessions", {}).get(str(payload.get("session_id", "")))
    if session is not None:
        parts.append(f"session {_spend(session)}")
    today = live.get("all", {}).get("today", {}) if fresh_day else {}
    parts.append(f"today {_spend(today)}")
    budget = _daily_budget(live) if fresh_day else None
    if budget is not None:
        parts.append(f"{budget['percentage']:.0f}% of daily {_amount(budget)}")
    return " · ".join(parts)


def _spend(spend: dict[str, Any]) -> str:
    return f"{_tokens(int(spend.get('tokens', 0)))} tok ${float(spend.get('cost_usd', 0)):.2f}"


def _tokens(count: int) -> str:
    # From 999,950 on, a count is 1.0M, not 1000.0k.
    for size, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if count >= size or (size > 1_000 and count >= size - size // 20_000):
            return f"{count / size:.1f}{unit}"
    return str(count)


def _amount(budget: dict[str, Any]) -> str:
    if budget["metric"] == "cost":
        return f"${float(budget['budget']):,.2f}"
    return _tokens(int(budget["budget"]))


def _daily_budget(live: dict[str, Any]) -> dict[str, Any] | None:
    """The global daily budget nearest to its limit (tokens or cost)."""
    daily = [b for b in live.get("budgets", [])
             if b.get("scope") == "all" and b.get("period") == "daily"]
    return max(daily, key=lambda b: float(b.get("percentage", 0)), default=None)
