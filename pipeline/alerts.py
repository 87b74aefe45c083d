"""Budget alerts, exactly once: each is a budget_alert event appended to
`logs/tally/budget_alerts.jsonl`, whose event_id names its (scope, period start, kind).

The log itself says which alerts were raised: a run reads it before alerting, so a
restart or a kill never repeats one, and a crossing killed before its line was written
is alerted by the next run. Before the line, the alert is put in the outbox
(`state/alerts/outbox/`), from which `pipeline.delivery` delivers it at least once.

Hosts sharing a lake in an object store count the same events: a host raises an alert only
once it holds the alert's claim in the lake (pipeline.claims), so each is raised by one
host of the fleet.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from pipeline.budgets import Crossing
from pipeline.checkpoint import ProcessLock
from pipeline.claims import alert_owner
from pipeline.config import Home, fault
from pipeline.errors import storage_error
from pipeline.stage import fsync_dir
from pipeline.writer import append_line, encode_event, now_rfc3339

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


def raise_new_alerts(home: Home, find: Callable[[set[str]], list[Crossing]], *,
                     outbox: bool) -> tuple[list[dict[str, Any]], set[str]]:
    """Under the alert lock, so that a `tally compact` and a following tailer never both
    raise one: read the alert log, `find` the crossings it lacks, raise them (through
    the outbox if `outbox`). Returns their events and every id raised so far."""
    lock = ProcessLock(home.state / "alerts" / "alerts.lock", "alerting")
    with lock.acquire(ALERT_LOCK_TIMEOUT):
        alerted = alerted_ids(home)
        _log_orphans(home, alerted)
        return raise_alerts(home, find(alerted), alerted, outbox=outbox), alerted


def raise_alerts(home: Home, found: Iterable[Crossing], alerted: set[str], *,
                 outbox: bool = True) -> list[dict[str, Any]]:
    """Append each crossing's event to the alert log, after putting it in the outbox if
    `outbox`; return the events written. `alerted` gains their ids."""
    written = []
    shared = not home.lake_location.is_local
    for crossing in found:
        if shared and alert_owner(home, crossing.event_id) != home.host:
            alerted.add(crossing.event_id)  # raised by the host that claimed it
            continue
        event = crossing.event(now_rfc3339())
        line = encode_event(event)  # an event the log cannot take is refused before the outbox
        if outbox:
            put_in_outbox(home, event)
        fault("alert", "outboxed")
        _append(home, line)
        fault("alert", "logged")
        alerted.add(crossing.event_id)
        written.append(event)
    return written


def _log_orphans(home: Home, alerted: set[str]) -> None:
    """Log the outbox's alerts the log lacks: a run was killed between the two writes.

    The alert was raised (and may be delivered already): its line belongs in the log,
    even if its period's usage has moved on to a higher level since.
    """
    for _, entry in pending_alerts(home):
        event = entry["event"]
        if event.get("event_id") not in alerted:
            _append(home, encode_event(event))
            alerted.add(str(event["event_id"]))


def _append(home: Home, line: bytes) -> None:
    _end_torn_line(alert_log(home))
    append_line(alert_log(home), line)


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
    `left` the receivers that still need it (None: every configured one). A new alert
    already waiting keeps its entry: its attempts and backoff go on."""
    directory = outbox_dir(home)
    if attempts == 0 and outbox_path(home, str(event["event_id"])).exists():
        return
    entry: dict[str, Any] = {"event": event, "attempts": attempts, "due": due}
    if left is not None:
        entry["left"] = left
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_unique(outbox_path(home, str(event["event_id"])), orjson.dumps(entry))
        fsync_dir(directory)
    except OSError as exc:
        raise storage_error(exc, "store an alert for delivery", directory) from exc


def write_unique(path: Path, data: bytes) -> None:
    """Write `data` to a temp file of its own beside `path`, fsync it, rename it over
    `path`: two processes may rewrite one entry at once, and neither sees half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
