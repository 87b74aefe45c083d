"""opencode's messages (its SQLite database, and the JSON files of older versions) as events.

opencode keeps messages in a database, not an appended log, so they cannot be followed
line by line. Each import copies what is new or changed since the last one, as tally
events, into a file of the home (`state/sources/opencode/<agent>/messages.jsonl`) that the
tailer then reads like any log. A copy made twice (a kill between the append and the
record of what was copied) counts once: the event id is opencode's message id.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.importers import event_id, label, text, whole
from pipeline.sources import Source, candidate_dirs, opencode_copy, opencode_databases

if TYPE_CHECKING:
    from pipeline.config import Home

MESSAGES = "messages.jsonl"
SEEN = "seen.json"


@dataclass
class Exported:
    """What one copy found: messages read, and events appended."""

    messages: int = 0
    appended: int = 0


def export_opencode(source: Source, home: Home) -> Exported:
    """Copy an opencode source's new and changed messages into the home."""
    json_dirs = [Path(d) / "storage" / "message" for d in candidate_dirs(source)]
    return export(opencode_databases(source), [d for d in json_dirs if d.is_dir()],
                  opencode_copy(home, source), source.name)


def export(databases: list[Path], json_dirs: list[Path], target: Path, agent: str) -> Exported:
    """Append the messages of `databases` and `json_dirs` that changed since the last copy."""
    target.mkdir(parents=True, exist_ok=True)
    seen_path = target / SEEN
    try:
        seen: dict[str, str] = orjson.loads(seen_path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        seen = {}
    result, lines = Exported(), []
    for message_id, (session, data) in _messages(databases, json_dirs).items():
        result.messages += 1
        try:
            event = usage_event(message_id, session, data, agent)
        except (ValueError, OverflowError, OSError):  # a time past year 9999: not a message
            continue
        if event is None:
            continue
        line = orjson.dumps(event)
        digest = hashlib.sha256(line).hexdigest()[:16]
        if seen.get(message_id) != digest:
            lines.append(line)
            seen[message_id] = digest
    if lines:
        with open(target / MESSAGES, "ab") as handle:
            handle.write(b"\n".join(lines) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        temp = seen_path.with_suffix(".tmp")
        temp.write_bytes(orjson.dumps(seen))
        os.replace(temp, seen_path)
        result.appended = len(lines)
    return result


def _messages(databases: list[Path], json_dirs: list[Path]) -> dict[str, tuple[str, Any]]:
    """Messages by id, as ccusage 20.0.24 picks them: a database row first (the first
    database's), else the JSON file that sorts last."""
    found: dict[str, tuple[str, Any]] = {}
    for database in databases:
        uri = f"file:{database}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as connection:
            for row in connection.execute("SELECT id, session_id, data FROM message"):
                with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                    found.setdefault(str(row[0]), (str(row[1]), orjson.loads(row[2])))
    from_databases = set(found)
    for directory in json_dirs:
        for path in sorted(directory.rglob("*.json")):
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                data = orjson.loads(path.read_bytes())
                if isinstance(data, dict) and text(data.get("id")) and \
                        str(data["id"]) not in from_databases:
                    found[str(data["id"])] = (str(data.get("sessionID") or ""), data)
    return found


def usage_event(message_id: str, session: str, data: Any, agent: str) -> dict[str, Any] | None:
    """A message's usage event, as ccusage 20 counts it; None for a message without usage."""
    if not isinstance(data, dict):
        return None
    tokens, model, provider = data.get("tokens"), label(data.get("modelID")), \
        label(data.get("providerID"))
    created = (data.get("time") or {}).get("created") if isinstance(data.get("time"), dict) \
        else None
    if not isinstance(tokens, dict) or model is None or provider is None or \
            not isinstance(created, int | float) or isinstance(created, bool):
        return None
    found = tokens.get("cache")
    cache: dict[str, Any] = found if isinstance(found, dict) else {}
    counts = {"input_tokens": whole(tokens.get("input")),
              "output_tokens": whole(tokens.get("output")),
              "cache_read_tokens": whole(cache.get("read")),
              "cache_write_tokens": whole(cache.get("write"))}
    reasoning = whole(tokens.get("reasoning"))
    missing = whole(tokens.get("total")) - sum(counts.values()) - reasoning
    if missing > 0:
        reasoning += missing  # what the buckets leave out of the total is billed as output
    if not any(counts.values()) and not reasoning:
        return None
    counts["output_tokens"] += reasoning
    if reasoning:
        counts["reasoning_tokens"] = reasoning
    seconds = created / 1000 if created >= 1e12 else created
    event: dict[str, Any] = {
        "event_type": "agent_token_usage", "event_id": event_id("opencode", message_id),
        "ts": datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "agent": agent, "model": model, "session_id": label(session) or "opencode", **counts}
    path = data.get("path")
    if isinstance(path, dict) and (cwd := label(path.get("cwd"), 1024)):
        event["project"] = cwd
    cost = data.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 < cost <= 1e9:
        event["cost_usd"] = cost
    return event
