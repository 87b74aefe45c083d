"""Budget alerts, exactly once: each is a budget_alert event appended to
`logs/tally/budget_alerts.jsonl`, whose event_id names its (scope, period start, kind).

The log itself says which alerts were raised: a run reads it before alerting, so a
restart or a kill never repeats one, and a crossing killed before its line was written
is alerted by the next run. Before the line, the alert is put in the outbox
(`state/alerts/outbox/`), from which `pipeline.delivery` delivers it at least once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from pipeline.budgets import Crossing
from pipeline.checkpoint import ProcessLock
from pipeline.config import Home, fault
from pipeline.errors import storage_error
from pipeline.stage import fsync_dir, write_atomic
from pipeline.writer import append_event, append_line, now_rfc3339

ALERT_LOG = Path("tally") / "budget_alerts.jsonl"
ALERT_LOCK_TIMEOUT = 10.0  # seconds; another run holds it only while it writes an alert


def alert_log(home: Home) -> Path:
    """The log tally appends its budget alerts to, under the home's logs."""
    return home.logs / ALERT_LOG


def outbox_dir(home: Home) -> Path:
    """Where alerts wait until every receiver took them."""
    return home.state / "alerts" / "outbox"


def alerted_ids(home: Home) -> set[str]:
    """The event_ids of the alerts in the alert log (a torn or foreign line is skipped)."""
    ids: set[str] = set()
    try:
        data = alert_log(home).read_bytes()
    except FileNotFoundError:
        return ids
    except OSError as exc:
        raise storage_error(exc, "read the alert log", alert_log(home)) from exc
    for line in data.splitlines():
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event_type") == "budget_alert" \
                and isinstance(event.get("event_id"), str):
            ids.add(event["event_id"])
    return ids


def raise_new_alerts(home: Home, find: Callable[[set[str]], list[Crossing]]
                     ) -> tuple[list[dict[str, Any]], set[str]]:
    """Under the alert lock, so that a `tally compact` and a following tailer never both
    raise one: read the alert log, `find` the crossings it lacks, raise them. Returns
    their events and every id raised so far."""
    lock = ProcessLock(home.state / "alerts" / "alerts.lock", "alerting")
    with lock.acquire(ALERT_LOCK_TIMEOUT):
        alerted = alerted_ids(home)
        return raise_alerts(home, find(alerted), alerted), alerted


def raise_alerts(home: Home, found: Iterable[Crossing], alerted: set[str]) -> list[dict[str, Any]]:
    """Put each crossing in the outbox, then append its event to the alert log; return
    the events written. `alerted` gains their ids."""
    written = []
    for crossing in found:
        event = crossing.event(now_rfc3339())
        put_in_outbox(home, event)
        fault("alert", "outboxed")
        _end_torn_line(alert_log(home))
        append_event(alert_log(home), event)
        fault("alert", "logged")
        alerted.add(crossing.event_id)
        written.append(event)
    return written


def _end_torn_line(path: Path) -> None:
    """End a line a crash left unfinished, so the next alert is a line of its own."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
    except (FileNotFoundError, OSError):  # no log yet, or an empty one
        return
    if torn:
        append_line(path, b"\n")


def alert_text(event: dict[str, Any]) -> str:
    """One line for people: what crossed, how far, and against which budget."""
    cost = str(event["alert"]).startswith("COST")

    def amount(value: float) -> str:
        return f"${value:,.2f}" if cost else f"{value:,.0f} tokens"

    return (f"{event['alert']}: {event['scope']} {event['period']} budget "
            f"({event.get('period_start', '')}) at {event['percentage']:.1f} %: "
            f"{amount(event['usage'])} of {amount(event['budget'])}")


# ---------------------------------------------------------------- the outbox


def outbox_path(home: Home, event_id: str) -> Path:
    """The outbox file of one alert: named by a hash, as scopes are any text."""
    return outbox_dir(home) / f"{hashlib.sha256(event_id.encode()).hexdigest()[:32]}.json"


def put_in_outbox(home: Home, event: dict[str, Any], attempts: int = 0, due: float = 0.0,
                  left: list[str] | None = None) -> None:
    """Store an alert for delivery, durably: `due` is the epoch second of its next try,
    `left` the receivers that still need it (None: every configured one)."""
    directory = outbox_dir(home)
    entry: dict[str, Any] = {"event": event, "attempts": attempts, "due": due}
    if left is not None:
        entry["left"] = left
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(outbox_path(home, str(event["event_id"])),
                     lambda handle: handle.write(orjson.dumps(entry)))
        fsync_dir(directory)
    except OSError as exc:
        raise storage_error(exc, "store an alert for delivery", directory) from exc


def pending_alerts(home: Home) -> list[tuple[Path, dict[str, Any]]]:
    """The outbox entries (event, attempts, due), oldest first; unreadable ones dropped."""
    entries = []
    try:
        paths = sorted(outbox_dir(home).glob("*.json"), key=_mtime)
    except OSError:
        return []
    for path in paths:
        try:
            entry = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("event"), dict):
            entries.append((path, entry))
    return entries


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
