"""Claude Code transcripts (`~/.claude/projects/<project>/<session>.jsonl`) as events.

Counted as ccusage 20 counts them (its `adapter/claude`): only lines holding `"usage":{`
are read; one request's content blocks are logged one line each with a growing
`output_tokens`, and all share `message.id`, which becomes the event id, so the duplicate
rule keeps the largest copy. A sidechain copy of a message (an aside that replays its
parent) gets role `sidechain`, which loses to the main copy (pipeline.dedupe). The 5-minute
and 1-hour cache writes stay apart.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from pipeline.importers import (
    Carry,
    FileContext,
    Translated,
    event_id,
    label,
    looks_whole,
    stamp,
    text,
    whole,
)

USAGE_MARK = b'"usage":{'
SYNTHETIC = "<synthetic>"
SIDECHAIN = "sidechain"


def translate(lines: list[bytes], starts: list[int], where: FileContext,
              carry: Carry | None) -> tuple[Translated, Carry | None]:
    """Usage and tool-call events of a block of transcript lines."""
    out = Translated()
    session, project = path_session(where.relative)
    counted: list[_Usage] = []
    for line, start in zip(lines, starts, strict=True):
        if USAGE_MARK not in line:
            if not looks_whole(line):
                out.reject(where, start, line, "invalid_json", "not a whole JSON line")
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            out.reject(where, start, line, "invalid_json", f"cannot parse: {exc}")
            continue
        usage = _usage_of(entry, line, start, where, out)
        if usage is not None:
            counted.append(usage)
    mains = {u.message_id: u.key(session) for u in counted if not u.sidechain}
    for usage in counted:
        key = usage.key(session)
        if usage.sidechain:  # a copy of a main-line message counts as that message
            key = mains.get(usage.message_id) or _parent_keys(
                where, usage.entry.get("sessionId"), session).get(usage.message_id) or key
        _emit(usage, key, where, session, project, out)
    return out, carry


@dataclass
class _Usage:
    """A usage line that can be counted."""

    entry: dict[str, Any]
    message: dict[str, Any]
    message_id: str
    ts: str
    start: int

    @property
    def sidechain(self) -> bool:
        return self.entry.get("isSidechain") is True

    def key(self, file_session: str) -> str:
        """ccusage's dedupe key: message id and request id; without a request id, the
        message id, the instant and the session."""
        if request := label(self.entry.get("requestId")):
            return f"{self.message_id}:{request}"
        instant = int(datetime.fromisoformat(self.ts).timestamp() * 1000)
        return f"{self.message_id}:{instant}:{label(self.entry.get('sessionId')) or file_session}"


def _usage_of(entry: Any, line: bytes, start: int, where: FileContext,
              out: Translated) -> _Usage | None:
    if isinstance(entry, dict) and entry.get("type") == "progress":
        entry = _relayed(entry)  # a subagent's line, relayed in its parent's transcript
        if entry is None:
            return None
    message = entry.get("message") if isinstance(entry, dict) else None
    usage = message.get("usage") if isinstance(message, dict) else None
    if not isinstance(usage, dict) or not isinstance(message, dict):
        out.reject(where, start, line, "not_usage", "no message.usage object",
                   "/message/usage")
        return None
    if not all(isinstance(usage.get(k), int) for k in ("input_tokens", "output_tokens")):
        out.reject(where, start, line, "not_usage",
                   "message.usage lacks input_tokens or output_tokens", "/message/usage")
        return None
    message_id = text(message.get("id"))
    if message_id is None:
        out.reject(where, start, line, "missing_id",
                   "no message.id: the line cannot be told apart from its copies",
                   "/message/id")
        return None
    ts = stamp(entry.get("timestamp"))
    if ts is None:
        out.reject(where, start, line, "invalid_timestamp",
                   f"timestamp {entry.get('timestamp')!r} is not RFC 3339 with an offset",
                   "/timestamp")
        return None
    return _Usage(entry, message, message_id, ts, start)


def _emit(usage: _Usage, key: str, where: FileContext, session: str, project: str,
          out: Translated) -> None:
    entry, message = usage.entry, usage.message
    envelope = _envelope(entry, message, usage.ts, where, session, project)
    tokens = _tokens(message["usage"])
    if any(tokens.values()):  # not an API error's empty line (model `<synthetic>`)
        out.add({**envelope, "event_type": "agent_token_usage",
                 "event_id": event_id("claude", key), **tokens, **_extras(entry)}, usage.start)
    for block in message.get("content") or ():
        if isinstance(block, dict) and block.get("type") == "tool_use" and \
                (tool := label(block.get("name"))) and (call := text(block.get("id"))):
            out.add({**envelope, "event_type": "tool_call",
                     "event_id": event_id("claude-tool", call), "tool": tool}, usage.start)


def _parent_keys(where: FileContext, session_id: Any, file_session: str) -> dict[str, str]:
    """The main-line messages of the session's own transcript (`<project>/<session>.jsonl`
    beside a subagent's or an aside's file), by message id: their dedupe keys."""
    session = label(session_id) or file_session
    parent = os.path.join(where.root.path, where.relative.split("/", 1)[0], f"{session}.jsonl")
    if parent == where.path:
        return {}
    try:
        st = os.stat(parent)
    except OSError:
        return {}
    return _main_keys(parent, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _main_keys(path: str, size: int, mtime_ns: int) -> dict[str, str]:
    """`_parent_keys` of one file, cached while the file is unchanged."""
    keys: dict[str, str] = {}
    try:
        with open(path, "rb") as handle:
            data = handle.read(size)
    except OSError:
        return keys
    session = os.path.basename(path).removesuffix(".jsonl")
    for line in data.split(b"\n"):
        if USAGE_MARK not in line or b'"isSidechain":true' in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        message = entry.get("message") if isinstance(entry, dict) else None
        if isinstance(message, dict) and (message_id := text(message.get("id"))) and \
                (ts := stamp(entry.get("timestamp"))) and entry.get("type") != "progress":
            keys.setdefault(message_id,
                            _Usage(entry, message, message_id, ts, 0).key(session))
    return keys


def _relayed(progress: dict[str, Any]) -> dict[str, Any] | None:
    """The subagent line an agent-progress line carries (`data.message`), with the parent
    line's session, directory and branch where it has none. It counts once with the
    subagent's own copy, by message id (ccusage's `claude daily` reads both)."""
    data = progress.get("data")
    inner = data.get("message") if isinstance(data, dict) else None
    if not isinstance(inner, dict) or not isinstance(inner.get("message"), dict):
        return None
    return {**{k: progress[k] for k in ("sessionId", "cwd", "gitBranch", "timestamp")
               if k in progress}, **inner}


def _tokens(usage: dict[str, Any]) -> dict[str, int]:
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        hour = whole(split.get("ephemeral_1h_input_tokens"))
        write = whole(split.get("ephemeral_5m_input_tokens")) + hour
    else:
        hour, write = 0, whole(usage.get("cache_creation_input_tokens"))
    tokens = {"input_tokens": whole(usage.get("input_tokens")),
              "output_tokens": whole(usage.get("output_tokens")),
              "cache_read_tokens": whole(usage.get("cache_read_input_tokens")),
              "cache_write_tokens": write}
    if hour:
        tokens["cache_write_1h_tokens"] = hour
    return tokens


def _envelope(entry: dict[str, Any], message: dict[str, Any], ts: str, where: FileContext,
              session: str, project: str) -> dict[str, Any]:
    envelope: dict[str, Any] = {"ts": ts, "agent": where.root.agent,
                                "session_id": label(entry.get("sessionId")) or session,
                                "project": label(entry.get("cwd"), 1024) or project}
    model = label(message.get("model"))
    if model is not None and model != SYNTHETIC:
        envelope["model"] = model
    if branch := label(entry.get("gitBranch")):
        envelope["branch"] = branch
    if entry.get("isSidechain") is True:
        envelope["role"] = SIDECHAIN
    return envelope


def _extras(entry: dict[str, Any]) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if request := label(entry.get("requestId")):
        extras["request_id"] = request
    cost = entry.get("costUSD")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost <= 1e9:
        extras["cost_usd"] = cost
    return extras


def path_session(relative: str) -> tuple[str, str]:
    """(session, project) from a transcript's path below `projects/`, as ccusage derives them."""
    parts = relative.split("/")
    if len(parts) == 1:
        return parts[0].removesuffix(".jsonl"), "projects"
    if len(parts) == 2:
        return parts[1].removesuffix(".jsonl"), parts[0]
    if "subagents" in parts[2:]:
        return parts[1], parts[0]
    return parts[-2], "/".join(parts[:-2])
