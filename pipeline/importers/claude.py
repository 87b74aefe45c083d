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
from collections.abc import Iterator
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
OPEN, CLOSE = ord("{"), ord("}")
SYNTHETIC = "<synthetic>"
SIDECHAIN = "sidechain"


def translate(block: bytes, position: int, where: FileContext,
              carry: Carry | None) -> tuple[Translated, Carry | None]:
    """Usage and tool-call events of a block of transcript lines."""
    out = Translated()
    session, project = path_session(where.relative)
    counted: list[_Usage] = []
    for line, start in _usage_lines(block, position, where, out):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            out.reject(where, start, line, "invalid_json", f"cannot parse: {exc}")
            continue
        usage = _usage_of(entry, line, start, where, out)
        if usage is not None:
            counted.append(usage)
    for usage in counted:
        usage.id_key = usage.key(session)
    mains = {u.message_id: u.id_key for u in counted if not u.sidechain}
    # One event per message of the block: the lake's duplicate rule would drop the others
    # (one line per content block, each with the usage so far), so they cost nothing more.
    best: dict[str, _Usage] = {}
    parents: dict[Any, dict[str, str]] = {}
    for usage in counted:
        if usage.sidechain:  # a copy of a main-line message counts as that message
            owner = usage.entry.get("sessionId")
            if owner not in parents:
                parents[owner] = _parent_keys(where, owner, session, position)
            usage.id_key = mains.get(usage.message_id) or \
                parents[owner].get(usage.message_id) or usage.id_key
        kept = best.get(usage.id_key)
        if kept is None or usage.beats(kept):
            best[usage.id_key] = usage
        _emit_tools(usage, where, session, project, out)
    for usage in best.values():
        _emit_usage(usage, where, session, project, out)
    return out, carry


def _usage_lines(block: bytes, position: int, where: FileContext,
                 out: Translated) -> Iterator[tuple[bytes, int]]:
    """The lines of a block holding `"usage":{`, and where each starts, found without
    splitting the rest (user lines with tool results are most of a transcript's bytes).
    Lines that do not look like a JSON object are quarantined."""
    for line, start in _cut_lines(block, position):
        out.reject(where, start, line, "invalid_json", "not a whole JSON line")
    at = block.find(USAGE_MARK)
    while at >= 0:
        begin = block.rfind(b"\n", 0, at) + 1
        end = block.find(b"\n", at)
        yield block[begin:end], position + begin
        at = block.find(USAGE_MARK, end)


def _cut_lines(block: bytes, position: int) -> Iterator[tuple[bytes, int]]:
    """Lines without `"usage":{` that do not start with `{` and end with `}` (as
    `looks_whole` tells), looking at the bytes around each newline only."""
    begin, end = 0, block.find(b"\n")
    while end >= 0:
        if end > begin and (block[begin] != OPEN or block[end - 1] != CLOSE):
            line = block[begin:end]
            if USAGE_MARK not in line and not looks_whole(line):
                yield line, position + begin
        begin, end = end + 1, block.find(b"\n", end + 1)


@dataclass
class _Usage:
    """A usage line that can be counted."""

    entry: dict[str, Any]
    message: dict[str, Any]
    message_id: str
    ts: str
    start: int
    id_key: str = ""

    @property
    def sidechain(self) -> bool:
        return self.entry.get("isSidechain") is True

    @functools.cached_property
    def tokens(self) -> dict[str, int]:
        return _tokens(self.message["usage"])

    def beats(self, other: _Usage) -> bool:
        """Whether this copy wins over `other` by the lake's duplicate rule (pipeline.dedupe):
        a main line over a sidechain copy, else the larger total; the first between equals."""
        if self.sidechain != other.sidechain:
            return not self.sidechain
        return _total(self.tokens) > _total(other.tokens)

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
    if not isinstance(message, dict) or "usage" not in message:
        return None  # `"usage":{` elsewhere in the line (a tool's result): not a usage line
    if not isinstance(usage, dict):
        out.reject(where, start, line, "not_usage", "message.usage is not an object",
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


def _total(tokens: dict[str, int]) -> int:
    return (tokens["input_tokens"] + tokens["output_tokens"] + tokens["cache_read_tokens"]
            + tokens["cache_write_tokens"])


def _emit_usage(usage: _Usage, where: FileContext, session: str, project: str,
                out: Translated) -> None:
    if not any(usage.tokens.values()):  # an API error's empty line (model `<synthetic>`)
        return
    envelope = _envelope(usage.entry, usage.message, usage.ts, where, session, project)
    out.add({**envelope, "event_type": "agent_token_usage",
             "event_id": event_id("claude", usage.id_key), **usage.tokens,
             **_extras(usage.entry)}, usage.start)


def _emit_tools(usage: _Usage, where: FileContext, session: str, project: str,
                out: Translated) -> None:
    envelope = None
    for block in usage.message.get("content") or ():
        if isinstance(block, dict) and block.get("type") == "tool_use" and \
                (tool := label(block.get("name"))) and (call := text(block.get("id"))):
            envelope = envelope or _envelope(usage.entry, usage.message, usage.ts, where,
                                             session, project)
            out.add({**envelope, "event_type": "tool_call",
                     "event_id": event_id("claude-tool", call), "tool": tool}, usage.start)


def _parent_keys(where: FileContext, session_id: Any, file_session: str,
                 position: int) -> dict[str, str]:
    """The main-line messages of the session's own transcript (`<project>/<session>.jsonl`
    beside a subagent's or an aside's file; for that transcript itself, its lines before
    this block), by message id: their dedupe keys."""
    session = label(session_id) or file_session
    project = where.path[len(where.root.path) + 1:].split(os.sep, 1)[0]
    parent = os.path.join(where.root.path, project, f"{session}.jsonl")
    try:
        st = os.stat(parent)
    except OSError:
        return {}
    if parent == where.path:
        return _main_keys(parent, position, st.st_ino) if position else {}
    return _main_keys(parent, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _main_keys(path: str, size: int, version: int) -> dict[str, str]:
    """`_parent_keys` of the first `size` bytes of a file, cached while the file (its
    mtime, or for bytes already read, its inode) is the same."""
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
