"""Codex CLI rollouts (`~/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl`) as events.

Codex logs cumulative totals (`total_token_usage`) with each `token_count` event; a
request's usage is the advance of that total, or `last_token_usage` when the total
advanced. A `token_count` re-emitted with an unchanged total (Codex does so on UI and
rate-limit refreshes) counts nothing, nor does a rate-limit-only line (`info: null`).
`cached_input_tokens` is part of `input_tokens`: it becomes cache reads, the rest input.
The running total, model and session carry over from block to block in the checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
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

FALLBACK_MODEL = "gpt-5"
SUBAGENT = "subagent"
SPAWN_MARK = b"thread_spawn"
SPAWN_WINDOW = 16 << 10  # ccusage looks for a spawn in the first 16 KiB
BURST_MS = 1000  # a spawned session's replayed history: events this close at its start
PARENT_EVENTS_KEPT = 1000
WANTED = (b'"token_count"', b'"turn_context"', b'"session_meta"', b'"function_call"',
          b'"custom_tool_call"')
ALIASES = (("input_tokens", "prompt_tokens", "input"),
           ("cached_input_tokens", "cache_read_input_tokens", "cached_tokens"),
           ("output_tokens", "completion_tokens", "output"),
           ("reasoning_output_tokens", "reasoning_tokens"),
           ("total_tokens",))
Usage = tuple[int, int, int, int, int]  # input, cached, output, reasoning, total


def translate(block: bytes, position: int, where: FileContext,
              carry: Carry | None) -> tuple[Translated, Carry | None]:
    """Usage and tool-call events of a block of rollout lines; the state after it."""
    lines, starts = split_block(block, position)
    out = Translated()
    state: Carry = dict(carry) if carry else {
        "session": where.relative.removesuffix(".jsonl"), "totals": None, "model": None,
        "usages": 0, "replay": None}
    if starts and starts[0] == 0 and SPAWN_MARK in b"\n".join(lines)[:SPAWN_WINDOW]:
        state["spawned"] = True
    for index, (line, start) in enumerate(zip(lines, starts, strict=True)):
        if not any(mark in line for mark in WANTED):
            if not looks_whole(line):
                out.reject(where, start, line, "invalid_json", "not a whole JSON line")
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            out.reject(where, start, line, "invalid_json", f"cannot parse: {exc}")
            continue
        if isinstance(entry, dict):
            _entry(entry, line, start, where, state, out, lines[index + 1:])
    return out, state


def _entry(entry: dict[str, Any], line: bytes, start: int, where: FileContext, state: Carry,
           out: Translated, later: list[bytes]) -> None:
    kind, payload = entry.get("type"), entry.get("payload")
    if not isinstance(payload, dict):
        return
    if kind == "session_meta":
        _session_meta(payload, state)
    elif kind == "turn_context":
        state["model"] = label(payload.get("model")) or state.get("model")
        state["cwd"] = label(payload.get("cwd"), 1024) or state.get("cwd")
    elif kind == "event_msg" and payload.get("type") == "token_count":
        _token_count(entry, payload, line, start, where, state, out, later)
    elif kind == "response_item" and payload.get("type") in ("function_call",
                                                            "custom_tool_call"):
        ts, tool, call = stamp(entry.get("timestamp")), label(payload.get("name")), \
            text(payload.get("call_id"))
        if ts and tool and call:
            out.add({**_envelope(ts, where, state), "event_type": "tool_call",
                     "event_id": event_id("codex-tool", state["session"], call), "tool": tool},
                    start)


def _session_meta(payload: dict[str, Any], state: Carry) -> None:
    state["session"] = label(payload.get("id")) or state["session"]
    state["cwd"] = label(payload.get("cwd"), 1024)
    git = payload.get("git")
    state["branch"] = label(git.get("branch")) if isinstance(git, dict) else None
    source = payload.get("source")
    subagent = source.get("subagent") if isinstance(source, dict) else None
    spawn = subagent.get("thread_spawn") if isinstance(subagent, dict) else None
    parent = payload.get("forked_from_id") or (
        spawn.get("parent_thread_id") if isinstance(spawn, dict) else None)
    if parent or subagent:
        state["spawned"] = True
        state["parent"] = parent if isinstance(parent, str) else None


def _token_count(entry: dict[str, Any], payload: dict[str, Any], line: bytes, start: int,
                 where: FileContext, state: Carry, out: Translated, later: list[bytes]) -> None:
    info = payload.get("info")
    if not isinstance(info, dict):
        return  # rate limits only
    raw = _counted(info, state)
    if raw is None:
        return
    ts = stamp(entry.get("timestamp"))
    if ts is None:
        out.reject(where, start, line, "invalid_timestamp",
                   f"timestamp {entry.get('timestamp')!r} is not RFC 3339 with an offset",
                   "/timestamp")
        return
    state["usages"] = state.get("usages", 0) + 1
    if _replayed(ts, raw, state, where, later):
        return
    model = (label(payload.get("model")) or label(info.get("model"))
             or label(info.get("model_name")) or state.get("model") or FALLBACK_MODEL)
    entered, cached, output, reasoning, whole_total = raw
    cached = min(cached, entered)
    event = {**_envelope(ts, where, state), "event_type": "agent_token_usage",
             "event_id": event_id("codex", ts, model, entered, cached, output, reasoning,
                                  whole_total),
             "model": model, "input_tokens": entered - cached, "cache_read_tokens": cached,
             "output_tokens": output}
    if reasoning:
        event["reasoning_tokens"] = reasoning
    out.add(event, start)


def _replayed(ts: str, raw: Usage, state: Carry, where: FileContext,
              later: list[bytes]) -> bool:
    """Whether this usage is a spawned or forked session's copy of its parent's history,
    as ccusage 20.0.24 tells: the leading events equal to the parent's usage sequence, when
    the parent's rollout is found; else a leading burst of two or more events, each within
    a second of the one before."""
    if not state.get("spawned"):
        return False
    if state["usages"] == 1:
        parent = _parent_usages(state.get("parent"), where)
        if parent is not None:
            state["replay"] = {"parent": parent, "next": 0}
        else:
            following = _next_usage_ms(later)
            burst = following is not None and following - _ms(ts) <= BURST_MS
            state["replay"] = {"last": _ms(ts)} if burst else None
    replay = state.get("replay")
    if replay is None:
        return False
    if "parent" in replay:
        index = replay["next"]
        if index < len(replay["parent"]) and list(raw) == replay["parent"][index]:
            replay["next"] = index + 1
            return True
    elif _ms(ts) - replay["last"] <= BURST_MS:
        replay["last"] = _ms(ts)
        return True
    state["replay"] = None  # the copy ends at the first event that differs
    return False


def _ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def _token_counts(lines: Iterable[bytes]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(line, info) of each token_count line with usage info."""
    for line in lines:
        if b'"token_count"' not in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        payload = entry.get("payload") if isinstance(entry, dict) else None
        info = payload.get("info") if isinstance(payload, dict) else None
        if isinstance(info, dict):
            yield entry, info


def _next_usage_ms(later: list[bytes]) -> int | None:
    for entry, _info in _token_counts(later):
        ts = stamp(entry.get("timestamp"))
        return _ms(ts) if ts else None
    return None


def _parent_usages(parent: Any, where: FileContext) -> list[list[int]] | None:
    """The usage sequence of the parent's rollout (found by its session id in its file
    name, under the sessions and archived sessions beside this file's root), else None."""
    if not isinstance(parent, str) or not parent or "/" in parent:
        return None
    root = where.root.path
    tops = [os.path.join(os.path.dirname(root), d) for d in ("sessions", "archived_sessions")] \
        if os.path.basename(root) in ("sessions", "archived_sessions") else [root]
    for top in tops:
        for path in sorted(Path(top).rglob(f"*{parent}.jsonl")) if os.path.isdir(top) else ():
            return _usage_sequence(path)
    return None


def _usage_sequence(path: Path) -> list[list[int]] | None:
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError:
        return None
    state: Carry = {"totals": None}
    sequence: list[list[int]] = []
    for _entry, info in _token_counts(lines):
        if (raw := _counted(info, state)) is not None:
            sequence.append(list(raw))
            if len(sequence) >= PARENT_EVENTS_KEPT:
                break
    return sequence


def _envelope(ts: str, where: FileContext, state: Carry) -> dict[str, Any]:
    envelope: dict[str, Any] = {"ts": ts, "agent": where.root.agent,
                                "session_id": label(state["session"]) or "codex"}
    for key, field in (("cwd", "project"), ("branch", "branch")):
        if state.get(key):
            envelope[field] = state[key]
    if state.get("spawned"):
        envelope["role"] = SUBAGENT
    return envelope


def _counted(info: dict[str, Any], state: Carry) -> Usage | None:
    """The usage a token_count counts, None for nothing: `last_token_usage` when the
    cumulative total moved (or is absent), else the total's advance."""
    total, last = _usage(info.get("total_token_usage")), _usage(info.get("last_token_usage"))
    previous = tuple(state["totals"]) if state.get("totals") else None
    if total is not None:
        if total == previous:
            return None  # re-emitted: the total did not move
        state["totals"] = list(total)
    raw = last if last is not None else _advance(total, previous)
    return raw if raw is not None and any(raw[:4]) else None


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    counts = [next((whole(value[k]) for k in names if k in value), 0) for names in ALIASES]
    return counts[0], counts[1], counts[2], counts[3], counts[4]


def _advance(total: Usage | None, previous: Usage | None) -> Usage | None:
    if total is None:
        return None
    if previous is None:
        return total
    return tuple(max(0, now - before) for now, before in zip(total, previous, strict=True))  # type: ignore[return-value]
