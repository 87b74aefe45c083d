"""pipeline.importers: each CLI's lines translated into events, as ccusage 20 counts them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.events import Validator
from pipeline.importers import FileContext, event_id, translator
from pipeline.importers.claude import path_session
from pipeline.importers.gemini import buckets
from pipeline.sources import CLAUDE, CODEX, GEMINI, Root

TS = "2026-11-02T10:00:00.000Z"


def _run(kind: str, relative: str, entries: list[Any], carry: Any = None,
         raw: bytes = b"") -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    root = Root(kind, kind, "/logs")
    block = b"".join(orjson.dumps(e) + b"\n" for e in entries) + raw
    where = FileContext(f"/logs/{relative}", root, relative)
    out, carry = translator(kind)(block, 0, where, carry)
    validator = Validator()
    for event in out.events:  # every event made is a valid one
        assert type(validator.validate(orjson.dumps(event))).__name__ == "Event", event
    return out.events, out.rejected, carry


def claude_line(message_id: str | None = "msg_1", output: int = 5, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {"input_tokens": 10, "output_tokens": output, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 70,
                  "cache_creation": {"ephemeral_5m_input_tokens": 30,
                                     "ephemeral_1h_input_tokens": 40}}}
    if message_id is not None:
        message["id"] = message_id
    line = {"parentUuid": None, "isSidechain": False, "cwd": "/repo", "sessionId": "s-1",
            "version": "1.0.65", "gitBranch": "main", "message": message, "requestId": "req_1",
            "type": "assistant", "uuid": "u", "timestamp": TS}
    line.update(extra)
    return line


def test_claude_usage_line_becomes_one_event_with_split_cache_writes() -> None:
    events, rejected, _ = _run(CLAUDE, "-repo/s-1.jsonl", [claude_line()])
    assert rejected == []
    [usage] = events
    assert usage == {
        "ts": TS, "agent": CLAUDE, "session_id": "s-1", "project": "/repo",
        "model": "claude-sonnet-4-5-20250929", "branch": "main",
        "event_type": "agent_token_usage", "event_id": "claude:msg_1:req_1", "input_tokens": 10,
        "output_tokens": 5, "cache_read_tokens": 100, "cache_write_tokens": 70,
        "cache_write_1h_tokens": 40, "request_id": "req_1"}


def test_claude_content_blocks_share_the_message_id() -> None:
    lines = [claude_line(output=n) for n in (1, 30, 7)]
    events, _, _ = _run(CLAUDE, "p/s.jsonl", lines)
    # One event per message of a block, the copy the duplicate rule would keep.
    assert [(e["event_id"], e["output_tokens"]) for e in events] == [("claude:msg_1:req_1", 30)]
    side = [claude_line(output=90, isSidechain=True), claude_line(output=5)]
    [usage] = _run(CLAUDE, "p/s.jsonl", side)[0]
    assert (usage["output_tokens"], "role" in usage) == (5, False)


def test_claude_without_cache_split_counts_cache_creation_as_5_minute() -> None:
    line = claude_line()
    del line["message"]["usage"]["cache_creation"]
    [usage], _, _ = _run(CLAUDE, "p/s.jsonl", [line])
    assert usage["cache_write_tokens"] == 70 and "cache_write_1h_tokens" not in usage


def test_claude_sidechain_synthetic_cost_and_tool_calls() -> None:
    line = claude_line(isSidechain=True, costUSD=0.25)
    line["message"]["model"] = "<synthetic>"
    line["message"]["content"] = [{"type": "tool_use", "id": "toolu_9", "name": "Bash",
                                   "input": {}}]
    events = _run(CLAUDE, "p/s.jsonl", [line])[0]
    [usage] = [e for e in events if e["event_type"] == "agent_token_usage"]
    [tool] = [e for e in events if e["event_type"] == "tool_call"]
    assert usage["role"] == "sidechain" and usage["cost_usd"] == 0.25 and "model" not in usage
    assert tool["event_type"] == "tool_call" and tool["tool"] == "Bash"
    assert tool["event_id"] == "claude-tool:toolu_9" and tool["session_id"] == "s-1"


@pytest.mark.parametrize(("line", "reason"), [
    (claude_line(message_id=None), "missing_id"),
    (claude_line(timestamp="yesterday"), "invalid_timestamp"),
    ({"type": "assistant", "message": {"id": "m", "usage": {"input_tokens": 1}},
      "timestamp": TS}, "not_usage"),
])
def test_claude_lines_that_cannot_be_counted_are_quarantined(line: dict[str, Any],
                                                             reason: str) -> None:
    events, rejected, _ = _run(CLAUDE, "p/s.jsonl", [line])
    assert events == [] and [r["reason"] for r in rejected] == [reason]
    assert rejected[0]["source"] == "p/s.jsonl" and rejected[0]["offset"] == 0


def test_claude_skips_lines_without_usage_and_quarantines_cut_ones() -> None:
    user = {"type": "user", "message": {"role": "user", "content": "x"}, "timestamp": TS}
    events, rejected, _ = _run(CLAUDE, "p/s.jsonl", [user], raw=b'{"type":"assist\n')
    assert events == [] and [r["reason"] for r in rejected] == ["invalid_json"]
    assert rejected[0]["offset"] == len(orjson.dumps(user)) + 1


def test_claude_progress_lines_count_as_the_subagent_s_message() -> None:
    sub = claude_line("msg_sub", output=40, isSidechain=True, sessionId=None)
    progress = {"type": "progress", "timestamp": TS, "sessionId": "s-1", "cwd": "/repo",
                "data": {"message": {k: sub[k] for k in ("message", "requestId", "timestamp",
                                                         "isSidechain")}}}
    [usage], rejected, _ = _run(CLAUDE, "p/s-1.jsonl", [progress])
    assert rejected == [] and usage["event_id"] == "claude:msg_sub:req_1"
    assert (usage["output_tokens"], usage["session_id"], usage["role"]) == (40, "s-1",
                                                                            "sidechain")


def test_claude_without_request_id_keys_on_instant_and_session() -> None:
    first = claude_line("msg_n", requestId=None)
    same = claude_line("msg_n", requestId=None, timestamp="2026-11-02T10:00:00Z")
    later = claude_line("msg_n", requestId=None, timestamp="2026-11-02T10:00:00.001Z")
    ids = [e["event_id"] for e in _run(CLAUDE, "p/s.jsonl", [first, same, later])[0]]
    assert len(ids) == 2 and ids[0] != ids[1]  # the same instant twice: one message
    assert ids[0].startswith("claude:msg_n:") and ids[0].endswith(":s-1")


def test_claude_sidechain_copy_takes_the_main_line_s_id(tmp_path: Any) -> None:
    copy = claude_line("msg_m", output=900, isSidechain=True, requestId="req_other")
    main = claude_line("msg_m", output=100)
    # In one block, whichever comes first.
    events = _run(CLAUDE, "p/s-1.jsonl", [copy, main])[0]
    assert {e["event_id"] for e in events} == {"claude:msg_m:req_1"}
    # In a subagent's file beside the session's own transcript.
    root = tmp_path / "projects"
    (root / "p" / "s-1" / "subagents").mkdir(parents=True)
    (root / "p" / "s-1.jsonl").write_bytes(orjson.dumps(main) + b"\n")
    sub = root / "p" / "s-1" / "subagents" / "agent-a.jsonl"
    block = orjson.dumps(copy) + b"\n"
    where = FileContext(str(sub), Root(CLAUDE, CLAUDE, str(root)), "sub")
    out, _ = translator(CLAUDE)(block, 0, where, None)
    assert out.events[0]["event_id"] == "claude:msg_m:req_1"
    # No main copy anywhere: its own key.
    (root / "p" / "s-1.jsonl").write_bytes(b"")
    out, _ = translator(CLAUDE)(block, 0, where, None)
    assert out.events[0]["event_id"] == "claude:msg_m:req_other"


@pytest.mark.parametrize(("relative", "expected"), [
    ("-repo/abc.jsonl", ("abc", "-repo")),
    ("-repo/abc/subagents/agent-1.jsonl", ("abc", "-repo")),
    ("-repo/old/chat.jsonl", ("old", "-repo")),
    ("top.jsonl", ("top", "projects")),
])
def test_claude_session_and_project_from_the_path(relative: str,
                                                  expected: tuple[str, str]) -> None:
    assert path_session(relative) == expected


def codex_count(total: list[int] | None, last: list[int] | None, ts: str = TS,
                **info: Any) -> dict[str, Any]:
    names = ("input_tokens", "cached_input_tokens", "output_tokens",
             "reasoning_output_tokens", "total_tokens")
    body: dict[str, Any] = dict(info)
    if total is not None:
        body["total_token_usage"] = dict(zip(names, total, strict=True))
    if last is not None:
        body["last_token_usage"] = dict(zip(names, last, strict=True))
    return {"timestamp": ts, "type": "event_msg",
            "payload": {"type": "token_count", "info": body if body else None}}


META = {"timestamp": TS, "type": "session_meta",
        "payload": {"id": "sess-1", "cwd": "/work/app", "git": {"branch": "feat"}}}
TURN = {"timestamp": TS, "type": "turn_context", "payload": {"model": "gpt-5-codex"}}


def test_codex_counts_the_advance_of_the_cumulative_total() -> None:
    entries = [META, TURN,
               codex_count([100, 40, 10, 5, 110], [100, 40, 10, 5, 110]),
               codex_count([100, 40, 10, 5, 110], [100, 40, 10, 5, 110],
                           ts="2026-11-02T10:00:05.000Z"),  # re-emitted: nothing new
               {"timestamp": TS, "type": "event_msg",
                "payload": {"type": "token_count", "info": None}},  # rate limits only
               codex_count([250, 90, 30, 5, 280], None, ts="2026-11-02T10:01:00.000Z")]
    events, rejected, carry = _run(CODEX, "2026/11/02/rollout-x.jsonl", entries)
    assert rejected == []
    assert [(e["input_tokens"], e["cache_read_tokens"], e["output_tokens"]) for e in events] \
        == [(60, 40, 10), (100, 50, 20)]
    assert events[0]["reasoning_tokens"] == 5 and "reasoning_tokens" not in events[1]
    assert {e["session_id"] for e in events} == {"sess-1"}
    assert {(e["project"], e["branch"], e["model"]) for e in events} == {
        ("/work/app", "feat", "gpt-5-codex")}
    assert carry["totals"] == [250, 90, 30, 5, 280]


def test_codex_state_carries_from_block_to_block() -> None:
    _, _, carry = _run(CODEX, "r.jsonl", [META, TURN, codex_count([10, 0, 1, 0, 11], None)])
    again, _, _ = _run(CODEX, "r.jsonl", [codex_count([10, 0, 1, 0, 11], None)], carry)
    later, _, _ = _run(CODEX, "r.jsonl", [codex_count([15, 0, 3, 0, 18], None)], carry)
    assert again == []
    assert [(e["input_tokens"], e["output_tokens"], e["model"]) for e in later] == [
        (5, 2, "gpt-5-codex")]


def test_codex_model_switch_and_fallback() -> None:
    entries = [codex_count([10, 0, 1, 0, 11], None),
               {"timestamp": TS, "type": "turn_context", "payload": {"model": "gpt-5.1-codex"}},
               codex_count([20, 0, 2, 0, 22], None)]
    events, _, _ = _run(CODEX, "r.jsonl", entries)
    assert [e["model"] for e in events] == ["gpt-5", "gpt-5.1-codex"]


def test_codex_spawned_session_skips_the_replayed_burst() -> None:
    spawned = {"timestamp": TS, "type": "session_meta",
               "payload": {"id": "child", "source": {"subagent": {"thread_spawn": {
                   "parent_thread_id": "p"}}}}}
    replay = [codex_count([10 * n, 0, n, 0, 11 * n], None, ts=f"2026-11-02T10:00:00.{n:03d}Z")
              for n in (1, 2, 3)]
    own = codex_count([50, 0, 5, 0, 55], None, ts="2026-11-02T10:00:09.000Z")
    events, _, _ = _run(CODEX, "r.jsonl", [spawned, TURN, *replay, own])
    assert [(e["input_tokens"], e["output_tokens"], e["role"]) for e in events] == [
        (20, 2, "subagent")]


def test_codex_tool_calls() -> None:
    call = {"timestamp": TS, "type": "response_item",
            "payload": {"type": "function_call", "name": "shell", "call_id": "call_1"}}
    [tool], _, _ = _run(CODEX, "r.jsonl", [META, call])
    assert (tool["event_type"], tool["tool"], tool["event_id"]) == (
        "tool_call", "shell", "codex-tool:sess-1:call_1")


GEMINI_META = {"sessionId": "g-1", "projectHash": "abc", "startTime": TS}


def gemini_message(tokens: dict[str, int] | None, message_id: str = "m-1",
                   **extra: Any) -> dict[str, Any]:
    return {"id": message_id, "timestamp": TS, "type": "gemini", "content": "x",
            "model": "gemini-2.5-pro", "tokens": tokens, **extra}


def test_gemini_reappended_message_has_one_id_and_the_tokens() -> None:
    tokens = {"input": 15327, "output": 23, "cached": 11526, "thoughts": 919, "tool": 7,
              "total": 16276}
    entries = [GEMINI_META, gemini_message(None), gemini_message(tokens),
               {"$rewindTo": "m-1"}]
    events, rejected, _ = _run(GEMINI, "abc/chats/session-1.jsonl", entries)
    assert rejected == []
    [usage] = events
    assert usage["event_id"] == "gemini:g-1:m-1" and usage["session_id"] == "g-1"
    # ccusage's test: input 3808 (7 of them tool prompt), output 23, cache read 11526,
    # thoughts 919 billed as output.
    assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_tokens"],
            usage["reasoning_tokens"]) == (3808, 942, 11526, 919)


def test_gemini_cached_tokens_beside_the_prompt_when_the_total_says_so() -> None:
    counts = buckets({"input": 100, "output": 10, "cached": 50, "total": 160})
    assert counts == {"input_tokens": 100, "output_tokens": 10, "cache_read_tokens": 50}


def test_gemini_tool_calls_and_a_message_without_model() -> None:
    call = {"id": "c1", "name": "read_file", "status": "success"}
    entry = gemini_message({"input": 1, "output": 1, "total": 2}, toolCalls=[call])
    events, _, _ = _run(GEMINI, "abc/chats/s.jsonl", [GEMINI_META, entry])
    assert events[1]["event_type"] == "tool_call" and events[1]["ok"] is True
    entry = gemini_message({"input": 1, "output": 1, "total": 2})
    del entry["model"]
    events, rejected, _ = _run(GEMINI, "abc/chats/s.jsonl", [GEMINI_META, entry])
    assert events == [] and rejected[0]["reason"] == "missing_model"


@given(st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=6))
def test_event_ids_fit_the_schema_and_stay_apart(parts: list[str]) -> None:
    made = event_id("claude", *parts)
    assert 1 <= len(made) <= 128
    assert made == event_id("claude", *parts)
    if len(":".join(["claude", *parts])) <= 128:
        assert made == ":".join(["claude", *parts])


def test_the_state_given_to_an_importer_is_never_changed() -> None:
    """The checkpoint, the journal and an uncommitted batch hold the state a block began
    with: a failed commit retried must translate from it again, not from its successor."""
    from pipeline.source_files import translate

    spawned = {"timestamp": TS, "type": "session_meta",
               "payload": {"id": "child", "forked_from_id": "nowhere"}}
    burst = [codex_count([10 * n, 0, n, 0, 11 * n], None, ts=f"2026-11-02T10:00:00.{n}00Z")
             for n in (1, 2, 3)]  # a replayed history: events within a second
    block = b"".join(orjson.dumps(e) + b"\n" for e in [spawned, *burst[:2]])
    root = Root(CODEX, CODEX, "/logs")
    events, carry = translate(root, "/logs/r.jsonl", "r", block, 0, None)
    assert events.events == [] and carry is not None and carry["replay"] is not None
    before = orjson.dumps(carry)
    later, _ = translate(root, "/logs/r.jsonl", "r", orjson.dumps(burst[2]) + b"\n",
                         len(block), carry)
    assert later.events == []  # the burst goes on
    assert orjson.dumps(carry) == before


def test_a_tool_result_holding_usage_is_not_a_usage_line() -> None:
    result = {"type": "user", "timestamp": TS, "message": {"role": "user", "content": "x"},
              "toolUseResult": {"usage": {"input_tokens": 5, "output_tokens": 7}}}
    assert _run(CLAUDE, "p/s.jsonl", [result])[:2] == ([], [])
