"""Gemini CLI chats (`~/.gemini/tmp/<project>/chats/session-*.jsonl`) as events.

A chat file opens with a metadata line (`sessionId`, `projectHash`), then appends one line
per message. A message whose tokens arrive later is appended again, whole, with the same
`id`: the event id is the session and that id, so it counts once. Buckets as ccusage 20
maps them (`adapter/gemini`): cached tokens are part of the prompt when the total says so,
tool-use prompt tokens are input, and thoughts are output (kept as reasoning too).
"""

from __future__ import annotations

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
from pipeline.intake import split_block

SUBAGENT = "subagent"


def translate(block: bytes, position: int, where: FileContext,
              carry: Carry | None) -> tuple[Translated, Carry | None]:
    """Usage and tool-call events of a block of chat lines; the session and model after it."""
    lines, starts = split_block(block, position)
    out = Translated()
    name = where.relative.rsplit("/", 1)[-1].removesuffix(".jsonl")
    state: Carry = dict(carry) if carry else {
        "session": name, "model": None, "project": where.relative.split("/", 1)[0]}
    for line, start in zip(lines, starts, strict=True):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if line.strip():
                out.reject(where, start, line, "invalid_json", f"cannot parse: {exc}")
            continue
        if not isinstance(entry, dict):
            if not looks_whole(line):
                out.reject(where, start, line, "invalid_json", "not a JSON object")
            continue
        _entry(entry, line, start, where, state, out)
    return out, state


def _entry(entry: dict[str, Any], line: bytes, start: int, where: FileContext, state: Carry,
           out: Translated) -> None:
    if session := label(entry.get("sessionId")) or label(entry.get("session_id")):
        state["session"] = session
        if entry.get("kind") == SUBAGENT:
            state["subagent"] = True
        directories = entry.get("directories")
        if isinstance(directories, list) and directories and label(directories[0], 1024):
            state["project"] = directories[0]
    if model := label(entry.get("model")):
        state["model"] = model
    tokens = entry.get("tokens")
    if entry.get("type") != "gemini" or not isinstance(tokens, dict):
        return
    message_id = text(entry.get("id"))
    ts = stamp(entry.get("timestamp")) or stamp(entry.get("created_at"))
    problem = ("missing_id", "no message id", "/id") if message_id is None else \
        ("invalid_timestamp", "no RFC 3339 timestamp", "/timestamp") if ts is None else \
        ("missing_model", "no model on the message or before it", "/model") \
        if not state.get("model") else None
    if problem is not None:
        out.reject(where, start, line, *problem)
        return
    envelope = _envelope(str(ts), where, state)
    out.add({**envelope, "event_type": "agent_token_usage",
             "event_id": event_id("gemini", state["session"], message_id), **buckets(tokens)},
            start)
    for call in entry.get("toolCalls") or ():
        if isinstance(call, dict) and (tool := label(call.get("name"))) and \
                (call_id := text(call.get("id"))):
            event = {**envelope, "event_type": "tool_call",
                     "event_id": event_id("gemini-tool", state["session"], call_id),
                     "tool": tool}
            if isinstance(call.get("status"), str):
                event["ok"] = call["status"] == "success"
            out.add(event, start)


def buckets(tokens: dict[str, Any]) -> dict[str, int]:
    """tally's buckets of a Gemini `tokens` object, as ccusage 20 maps them."""
    prompt, output, cached = (whole(tokens.get(k)) for k in ("input", "output", "cached"))
    thoughts, tool, total = (whole(tokens.get(k)) for k in ("thoughts", "tool", "total"))
    within = prompt + output + thoughts + tool
    if cached and total == within and total != within + cached:
        prompt -= min(prompt, cached)  # the prompt count includes the cached tokens
    entered = prompt + tool
    missing = total - (entered + output + cached + thoughts)
    if missing > 0:
        if output == 0:
            output = missing
        else:
            thoughts += missing
    counts = {"input_tokens": entered, "output_tokens": output + thoughts,
              "cache_read_tokens": cached}
    if thoughts:
        counts["reasoning_tokens"] = thoughts
    return counts


def _envelope(ts: str, where: FileContext, state: Carry) -> dict[str, Any]:
    envelope: dict[str, Any] = {"ts": ts, "agent": where.root.agent,
                                "session_id": state["session"], "model": state["model"]}
    if project := label(state.get("project"), 1024):
        envelope["project"] = project
    if state.get("subagent"):
        envelope["role"] = SUBAGENT
    return envelope
