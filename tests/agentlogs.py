"""Fixture writers: realistic on-disk logs of Claude Code, Codex CLI, Gemini CLI and opencode under
a fake HOME (a tmp dir), in the shapes /work/shared/agent-logs.md describes.

Each CLI has a small stateful builder (ClaudeSession, CodexRollout, GeminiChat) or row helpers
(opencode), and a table of named *cases*. A case writes one counting rule's lines on its own UTC
day(s) with ids no other case uses, so `<cli>_scenario(home)` (every case) gives one day per rule
in a per-day report, and a single case can be written alone to look at one rule. What ccusage
20.0.24 counts for each day is EXPECTED in tests/test_agentlogs.py; the rules behind the numbers
are in tests/ccusage_oracle.py's module docstring.

Lines are compact JSON (`separators=(",", ":")`), as the CLIs write them: ccusage finds lines by
byte patterns such as `"usage":{` and `"type":"event_msg"`. A `str` line is written verbatim
(broken or partial lines).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

Json = dict[str, Any]
Line = Json | str
Case = Callable[[Path], list[Path]]

_NS = uuid.UUID("6f1c1c8e-3a57-4c3e-9a50-7a11e5000000")


def utc(text: str) -> datetime:
    """`2025-09-01T10:00:00` (or with a fraction / offset) as an aware UTC datetime."""
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def iso_ms(dt: datetime) -> str:
    """`2025-09-01T10:00:00.123Z`: the 24-character form every CLI here writes."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def epoch_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def stable_uuid(*parts: object) -> str:
    """A deterministic UUID from `parts`."""
    return str(uuid.uuid5(_NS, ":".join(map(str, parts))))


def dumps(line: Line) -> str:
    return line if isinstance(line, str) else json.dumps(line, separators=(",", ":"))


def write_jsonl(path: Path, lines: Iterable[Line], *, final_newline: bool = True) -> Path:
    """Write `lines` to `path` (parents made), one per line; `final_newline=False` leaves the last
    line unterminated, as a writer caught mid-append does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(dumps(line) for line in lines)
    path.write_text(body + ("\n" if final_newline and body else ""), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Claude Code: ~/.claude/projects/<mangled cwd>/<sessionId>.jsonl (+ <sessionId>/subagents/)


def claude_projects_dir(home: Path) -> Path:
    return home / ".claude" / "projects"


def claude_project_name(cwd: str) -> str:
    """Claude Code's directory name for a cwd: every non-alphanumeric character becomes `-`."""
    return re.sub(r"[^A-Za-z0-9]", "-", cwd)


def claude_usage(
    input_tokens: int = 0,
    output_tokens: int = 0,
    *,
    cache_read: int = 0,
    cache_5m: int = 0,
    cache_1h: int = 0,
    breakdown: bool = True,
    service_tier: str = "standard",
) -> Json:
    """`message.usage` as Claude Code writes it; `breakdown=False` omits `cache_creation` (older
    logs), leaving only `cache_creation_input_tokens`."""
    usage: Json = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_5m + cache_1h,
        "cache_read_input_tokens": cache_read,
    }
    if breakdown:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": cache_5m,
            "ephemeral_1h_input_tokens": cache_1h,
        }
    usage["output_tokens"] = output_tokens
    usage["service_tier"] = service_tier
    return usage


def claude_text(text: str) -> Json:
    return {"type": "text", "text": text}


def claude_tool_use(tool_id: str, name: str, tool_input: Json) -> Json:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}


@dataclass
class ClaudeSession:
    """The lines of one Claude Code transcript; each method appends one line and returns it.
    A subagent transcript is a ClaudeSession with `agent_id` set (its lines are sidechain)."""

    session_id: str
    cwd: str = "/home/dev/repo"
    git_branch: str = "main"
    version: str = "2.0.14"
    agent_id: str | None = None
    lines: list[Line] = field(default_factory=list)
    _parent: str | None = field(default=None, init=False, repr=False)
    _n: int = field(default=0, init=False, repr=False)

    def _line(self, ts: datetime, kind: str, body: Json, *, sidechain: bool | None = None) -> Json:
        """Append a line: the common header, then `body`, then type, uuid and timestamp (the
        field order Claude Code writes)."""
        self._n += 1
        uid = stable_uuid(self.session_id, self.agent_id, self._n)
        line: Json = {
            "parentUuid": self._parent,
            "isSidechain": self.agent_id is not None if sidechain is None else sidechain,
            "userType": "external",
            "cwd": self.cwd,
            "sessionId": self.session_id,
            "version": self.version,
            "gitBranch": self.git_branch,
        }
        if self.agent_id is not None:
            line["agentId"] = self.agent_id
        line.update(body)
        line.update({"type": kind, "uuid": uid, "timestamp": iso_ms(ts)})
        self._parent = uid
        self.lines.append(line)
        return line

    def add(self, line: Line) -> Line:
        """Append a raw line (a str is written verbatim)."""
        self.lines.append(line)
        return line

    def user(self, ts: datetime, text: str) -> Json:
        return self._line(ts, "user", {"message": {"role": "user", "content": text}})

    def tool_result(self, ts: datetime, tool_use_id: str, content: str) -> Json:
        block = {"tool_use_id": tool_use_id, "type": "tool_result", "content": content}
        return self._line(ts, "user", {
            "message": {"role": "user", "content": [block]},
            "toolUseResult": {"stdout": content, "stderr": "", "interrupted": False}})

    def assistant(
        self,
        ts: datetime,
        *,
        model: str,
        msg_id: str | None,
        request_id: str | None,
        usage: Json,
        content: Sequence[Json] = (),
        sidechain: bool | None = None,
        **extra: Any,
    ) -> Json:
        """One assistant line; `msg_id`/`request_id` None leave the field out; `extra` adds or
        replaces top-level fields (e.g. isApiErrorMessage=True, cwd=None)."""
        message: Json = {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                         "content": list(content), "stop_reason": None, "stop_sequence": None,
                         "usage": usage}
        if msg_id is None:
            del message["id"]
        body: Json = {"message": message}
        if request_id is not None:
            body["requestId"] = request_id
        line = self._line(ts, "assistant", body, sidechain=sidechain)
        line.update(extra)
        return line

    def streamed(
        self,
        ts: datetime,
        *,
        model: str,
        msg_id: str,
        request_id: str,
        usage: Json,
        content: Sequence[Json],
        **extra: Any,
    ) -> list[Json]:
        """One API response written as Claude Code does: one line per content block, all with
        the same ids and input/cache usage, `output_tokens` growing to its final value on the
        last line."""
        final = int(usage["output_tokens"])
        out: list[Json] = []
        for i, block in enumerate(content):
            grown = {**usage, "output_tokens": max(1, final * (i + 1) // len(content))}
            if i == len(content) - 1:
                grown["output_tokens"] = final
            out.append(self.assistant(ts + timedelta(milliseconds=700 * i), model=model,
                                      msg_id=msg_id, request_id=request_id, usage=grown,
                                      content=[block], **extra))
        return out

    def agent_progress(self, ts: datetime, sub_line: Json, *, tool_use_id: str) -> Json:
        """A `type:progress` line carrying a subagent's assistant line in data.message."""
        keep = ("type", "message", "requestId", "uuid", "timestamp", "isSidechain")
        return self._line(ts, "progress", {
            "data": {"message": {k: sub_line[k] for k in keep if k in sub_line},
                     "type": "agent_progress", "prompt": "",
                     "agentId": sub_line.get("agentId", "agent")},
            "toolUseID": f"agent_msg_{tool_use_id}", "parentToolUseID": tool_use_id})

    def path(self, home: Path) -> Path:
        project = claude_projects_dir(home) / claude_project_name(self.cwd)
        if self.agent_id is None:
            return project / f"{self.session_id}.jsonl"
        return project / self.session_id / "subagents" / f"agent-{self.agent_id}.jsonl"

    def write(self, home: Path, *, final_newline: bool = True) -> Path:
        return write_jsonl(self.path(home), self.lines, final_newline=final_newline)


def write_claude_session(projects_dir: Path, project: str, session_id: str,
                         entries: Iterable[Line]) -> Path:
    """`projects/<project>/<session_id>.jsonl` with `entries` as its lines."""
    return write_jsonl(projects_dir / project / f"{session_id}.jsonl", entries)


def write_claude_subagent(projects_dir: Path, project: str, session_id: str, agent_id: str,
                          entries: Iterable[Line]) -> Path:
    """`projects/<project>/<session_id>/subagents/agent-<agent_id>.jsonl`."""
    path = projects_dir / project / session_id / "subagents" / f"agent-{agent_id}.jsonl"
    return write_jsonl(path, entries)


SONNET_45 = "claude-sonnet-4-5-20250929"
OPUS_41 = "claude-opus-4-1-20250805"
HAIKU_45 = "claude-haiku-4-5-20251001"


def _claude_case(day: str, name: str) -> tuple[ClaudeSession, datetime]:
    return ClaudeSession(stable_uuid("claude", name), cwd=f"/home/dev/{name}"), utc(day)


def _claude_streamed(home: Path) -> list[Path]:
    """One response in 3 content-block lines (output 137 -> 274 -> 412, same ids), its tool
    results, and a second response (3/96)."""
    s, t = _claude_case("2025-09-01T09:00:00", "streamed")
    s.user(t, "list the failing tests and fix them")
    s.streamed(t + timedelta(seconds=2), model=SONNET_45, msg_id="msg_01Stream", request_id=
               "req_011Stream", usage=claude_usage(12, 412, cache_read=18000, cache_5m=2400),
               content=[claude_text("Running the tests."),
                        claude_tool_use("toolu_01A", "Bash", {"command": "pytest -x -q"}),
                        claude_tool_use("toolu_01B", "Read", {"file_path": "/home/dev/a.py"})])
    s.tool_result(t + timedelta(seconds=9), "toolu_01A", "1 failed, 41 passed")
    s.tool_result(t + timedelta(seconds=9), "toolu_01B", "def f(): ...")
    s.assistant(t + timedelta(seconds=15), model=SONNET_45, msg_id="msg_01Stream2",
                request_id="req_011Stream2", usage=claude_usage(3, 96, cache_read=20400),
                content=[claude_text("Fixed.")])
    return [s.write(home)]


def _claude_sidechain(home: Path) -> list[Path]:
    """msg_01Side: the main line (req_a, total 1,300) and a sidechain copy in a subagent file
    (req_b, isSidechain, total 1,900); msg_01Side2: sidechain copy written before the main one."""
    s, t = _claude_case("2025-09-02T09:00:00", "sidechain")
    s.user(t, "why is CI red?")
    s.assistant(t + timedelta(seconds=3), model=SONNET_45, msg_id="msg_01Side",
                request_id="req_01SideA", usage=claude_usage(100, 200, cache_read=1000),
                content=[claude_text("Looking.")])
    s.assistant(t + timedelta(seconds=4), model=SONNET_45, msg_id="msg_01Side2",
                request_id="req_01Side2B", usage=claude_usage(50, 900, cache_read=1000),
                content=[claude_text("aside")], sidechain=True)
    s.assistant(t + timedelta(seconds=5), model=SONNET_45, msg_id="msg_01Side2",
                request_id="req_01Side2A", usage=claude_usage(50, 100, cache_read=1000),
                content=[claude_text("Main.")])
    sub = ClaudeSession(s.session_id, cwd=s.cwd, agent_id="a1b2c3d")
    sub.assistant(t + timedelta(seconds=6), model=SONNET_45, msg_id="msg_01Side",
                  request_id="req_01SideB", usage=claude_usage(100, 800, cache_read=1000),
                  content=[claude_text("Looking.")])
    return [s.write(home), sub.write(home)]


def _claude_no_request_id(home: Path) -> list[Path]:
    """msg_01NoReq without requestId (output 50), then with one (output 80); msg_01NoReq2 twice
    without requestId (output 30, then 70)."""
    s, t = _claude_case("2025-09-03T09:00:00", "no-request-id")
    kw: Json = {"model": SONNET_45, "content": [claude_text("ok")]}
    s.assistant(t, msg_id="msg_01NoReq", request_id=None, usage=claude_usage(10, 50), **kw)
    s.assistant(t + timedelta(seconds=1), msg_id="msg_01NoReq", request_id="req_01NoReq",
                usage=claude_usage(10, 80), **kw)
    s.assistant(t + timedelta(seconds=2), msg_id="msg_01NoReq2", request_id=None,
                usage=claude_usage(10, 30), **kw)
    s.assistant(t + timedelta(seconds=3), msg_id="msg_01NoReq2", request_id=None,
                usage=claude_usage(10, 70), **kw)
    return [s.write(home)]


def _claude_no_message_id(home: Path) -> list[Path]:
    """Two identical usage lines with a requestId and no message.id."""
    s, t = _claude_case("2025-09-04T09:00:00", "no-message-id")
    for _ in range(2):
        s.assistant(t, model=SONNET_45, msg_id=None, request_id="req_01NoMsg",
                    usage=claude_usage(7, 11, cache_read=100), content=[claude_text("hi")])
    return [s.write(home)]


def _claude_cache_1h(home: Path) -> list[Path]:
    """A 5m+1h cache write (1,000 + 2,000) and an old-style line with only
    cache_creation_input_tokens (500)."""
    s, t = _claude_case("2025-09-05T09:00:00", "cache-1h")
    s.assistant(t, model=SONNET_45, msg_id="msg_01Cache1h", request_id="req_01Cache1h",
                usage=claude_usage(10, 20, cache_5m=1000, cache_1h=2000),
                content=[claude_text("cached")])
    s.assistant(t + timedelta(seconds=1), model=SONNET_45, msg_id="msg_01CacheOld",
                request_id="req_01CacheOld", usage=claude_usage(10, 20, cache_5m=500,
                                                                breakdown=False),
                content=[claude_text("old")])
    return [s.write(home)]


def _claude_synthetic(home: Path) -> list[Path]:
    """A real request, then the `<synthetic>` API-error line Claude Code writes (zero usage)."""
    s, t = _claude_case("2025-09-06T09:00:00", "synthetic")
    s.assistant(t, model=SONNET_45, msg_id="msg_01Real", request_id="req_01Real",
                usage=claude_usage(40, 60), content=[claude_text("ok")])
    s.assistant(t + timedelta(seconds=1), model="<synthetic>", msg_id=stable_uuid("synthetic"),
                request_id=None, usage=claude_usage(0, 0, service_tier="standard"),
                content=[claude_text("API Error: 529 Overloaded")], isApiErrorMessage=True)
    return [s.write(home)]


def _claude_broken(home: Path) -> list[Path]:
    """One good line (10+20) and lines a reader must survive: garbage, a truncated line, a line
    without output_tokens, and an unterminated good-looking last line (input 1, output 2)."""
    s, t = _claude_case("2025-09-07T09:00:00", "broken")
    s.assistant(t, model=SONNET_45, msg_id="msg_01Good", request_id="req_01Good",
                usage=claude_usage(10, 20), content=[claude_text("ok")])
    s.add("this is not json")
    s.add('{"parentUuid":"x","message":{"id":"msg_01Trunc","usage":{"input_tokens":5,')
    s.assistant(t, model=SONNET_45, msg_id="msg_01NoOut", request_id="req_01NoOut",
                usage={"input_tokens": 9}, content=[])
    s.assistant(t + timedelta(seconds=1), model=SONNET_45, msg_id="msg_01Tail",
                request_id="req_01Tail", usage=claude_usage(1, 2), content=[claude_text(".")])
    return [s.write(home, final_newline=False)]


def _claude_model_switch(home: Path) -> list[Path]:
    """Sonnet 4.5, then /model opus 4.1, then haiku 4.5, in one session."""
    s, t = _claude_case("2025-09-08T09:00:00", "model-switch")
    for i, model in enumerate((SONNET_45, OPUS_41, HAIKU_45)):
        s.user(t + timedelta(minutes=i), f"step {i}")
        s.assistant(t + timedelta(minutes=i, seconds=5), model=model, msg_id=f"msg_01Sw{i}",
                    request_id=f"req_01Sw{i}", usage=claude_usage(100 * (i + 1), 50,
                                                                 cache_read=1000),
                    content=[claude_text("done")])
    return [s.write(home)]


def _claude_long_context(home: Path) -> list[Path]:
    """A sonnet 4.5 request over 200k: input 250,000 (+ cache read 10,000), output 1,000."""
    s, t = _claude_case("2025-09-09T09:00:00", "long-context")
    s.assistant(t, model=SONNET_45, msg_id="msg_01Long", request_id="req_01Long",
                usage=claude_usage(250_000, 1000, cache_read=10_000),
                content=[claude_text("long")])
    return [s.write(home)]


def _claude_multi_day(home: Path) -> list[Path]:
    """Seeded traffic on 2025-09-10..12 in two sessions, one crossing midnight UTC."""
    rng = random.Random(20250910)
    paths = []
    for k, start in enumerate(("2025-09-10T21:30:00", "2025-09-11T23:10:00")):
        s, t = _claude_case(start, f"multi-day-{k}")
        for i in range(12):
            t += timedelta(minutes=rng.randint(3, 17), milliseconds=rng.randint(0, 999))
            s.user(t, f"turn {i}")
            model = SONNET_45 if rng.random() < 0.7 else HAIKU_45
            s.streamed(t + timedelta(seconds=2), model=model, msg_id=f"msg_01Md{k}x{i}",
                       request_id=f"req_01Md{k}x{i}", content=[claude_text("a"),
                       claude_tool_use(f"toolu_Md{k}x{i}", "Edit", {"file_path": "x.py"})],
                       usage=claude_usage(rng.randint(1, 40), rng.randint(50, 3000),
                                          cache_read=rng.randint(0, 90_000),
                                          cache_5m=rng.randint(0, 6000)))
        paths.append(s.write(home))
    return paths


def _claude_subagent(home: Path) -> list[Path]:
    """A Task call: the subagent's 2 messages in subagents/agent-*.jsonl, both echoed in the
    parent as agent_progress lines, plus a third progress-only message (no direct copy)."""
    s, t = _claude_case("2025-09-13T09:00:00", "subagent")
    s.assistant(t, model=SONNET_45, msg_id="msg_01Task", request_id="req_01Task",
                usage=claude_usage(20, 120, cache_read=3000),
                content=[claude_tool_use("toolu_01Task", "Task", {"prompt": "grep TODOs"})])
    sub = ClaudeSession(s.session_id, cwd=s.cwd, agent_id="f00dfeed")
    sub.user(t + timedelta(seconds=1), "grep TODOs")
    for i, out in enumerate((300, 500)):
        line = sub.assistant(t + timedelta(seconds=2 + i), model=HAIKU_45,
                             msg_id=f"msg_01Sub{i}", request_id=f"req_01Sub{i}",
                             usage=claude_usage(5, out, cache_read=800),
                             content=[claude_text("found")])
        s.agent_progress(t + timedelta(seconds=2 + i), line, tool_use_id="toolu_01Task")
    orphan = ClaudeSession(s.session_id, cwd=s.cwd, agent_id="0ddba11")
    s.agent_progress(t + timedelta(seconds=5), orphan.assistant(
        t + timedelta(seconds=5), model=HAIKU_45, msg_id="msg_01SubOnly", request_id=
        "req_01SubOnly", usage=claude_usage(4, 40), content=[claude_text("x")]),
        tool_use_id="toolu_01Task")
    s.tool_result(t + timedelta(seconds=6), "toolu_01Task", "3 TODOs")
    return [s.write(home), sub.write(home)]


def _claude_rejected(home: Path) -> list[Path]:
    """Lines ccusage skips although they parse: microsecond timestamp, `"cwd":null`, an
    empty requestId; and one it counts (a good line, 1+1)."""
    s, t = _claude_case("2025-09-14T09:00:00", "rejected")
    kw: Json = {"model": SONNET_45, "content": [claude_text("x")]}
    s.assistant(t, msg_id="msg_01Ok", request_id="req_01Ok", usage=claude_usage(1, 1), **kw)
    line = s.assistant(t, msg_id="msg_01Micro", request_id="req_01Micro",
                       usage=claude_usage(100, 100), **kw)
    line["timestamp"] = "2025-09-14T09:00:01.123456Z"
    s.assistant(t, msg_id="msg_01NullCwd", request_id="req_01NullCwd",
                usage=claude_usage(1000, 1000), cwd=None, **kw)
    s.assistant(t, msg_id="msg_01EmptyReq", request_id="", usage=claude_usage(10_000, 0), **kw)
    return [s.write(home)]


def _claude_recent_models(home: Path) -> list[Path]:
    """Opus 4.6, 4.7 and 4.8 and Sonnet 4.6, one request each with every bucket, Sonnet 4.6
    past 200k (its 1M context has no long-context price)."""
    s, t = _claude_case("2025-09-15T09:00:00", "recent-models")
    for i, model in enumerate(("claude-opus-4-6", "claude-opus-4-7-20260401",
                               "claude-opus-4-8", "claude-sonnet-4-6")):
        size = 240_000 if model == "claude-sonnet-4-6" else 1000
        s.assistant(t + timedelta(minutes=i), model=model, msg_id=f"msg_01Recent{i}",
                    request_id=f"req_01Recent{i}", usage=claude_usage(
                        size, 300, cache_read=5000, cache_5m=700, cache_1h=900),
                    content=[claude_text("ok")])
    return [s.write(home)]


CLAUDE_CASES: dict[str, Case] = {
    "streamed": _claude_streamed,            # 2025-09-01
    "sidechain": _claude_sidechain,          # 2025-09-02
    "no_request_id": _claude_no_request_id,  # 2025-09-03
    "no_message_id": _claude_no_message_id,  # 2025-09-04
    "cache_1h": _claude_cache_1h,            # 2025-09-05
    "synthetic": _claude_synthetic,          # 2025-09-06
    "broken": _claude_broken,                # 2025-09-07
    "model_switch": _claude_model_switch,    # 2025-09-08
    "long_context": _claude_long_context,    # 2025-09-09
    "multi_day": _claude_multi_day,          # 2025-09-10..12
    "subagent": _claude_subagent,            # 2025-09-13
    "rejected": _claude_rejected,            # 2025-09-14
    "recent_models": _claude_recent_models,  # 2025-09-15
}


# --------------------------------------------------------------------------------------------
# Codex CLI: ~/.codex/{sessions,archived_sessions}/YYYY/MM/DD/rollout-<ts>-<uuid>.jsonl


def codex_usage(input_tokens: int, cached: int, output: int, reasoning: int = 0) -> Json:
    """Codex TokenUsage: cached is part of input, reasoning part of output, total = in + out."""
    return {"input_tokens": input_tokens, "cached_input_tokens": cached, "output_tokens": output,
            "reasoning_output_tokens": reasoning, "total_tokens": input_tokens + output}


def _rate_limits(used: float) -> Json:
    return {"primary": {"used_percent": used, "window_minutes": 300, "resets_in_seconds": 9000},
            "secondary": {"used_percent": used / 4, "window_minutes": 10080,
                          "resets_in_seconds": 400_000}}


@dataclass
class CodexRollout:
    """One Codex rollout file; the constructor writes session_meta and a turn_context."""

    session_id: str
    started: datetime
    model: str = "gpt-5-codex"
    cwd: str = "/home/dev/repo"
    branch: str | None = "main"
    forked_from_id: str | None = None
    source: str | Json = "cli"
    cli_version: str = "0.46.0"
    lines: list[Line] = field(default_factory=list)
    totals: Json = field(default_factory=lambda: codex_usage(0, 0, 0))
    last: Json | None = None

    def __post_init__(self) -> None:
        meta: Json = {"id": self.session_id, "timestamp": iso_ms(self.started), "cwd": self.cwd,
                      "originator": "codex_cli_rs", "cli_version": self.cli_version,
                      "instructions": None, "source": self.source, "model_provider": "openai"}
        if self.forked_from_id is not None:
            meta["forked_from_id"] = self.forked_from_id
        if self.branch is not None:
            meta["git"] = {"commit_hash": hashlib.sha1(self.session_id.encode()).hexdigest(),
                           "branch": self.branch,
                           "repository_url": "git@github.com:dev/repo.git"}
        self._item(self.started, "session_meta", meta)
        self.turn_context(self.started + timedelta(milliseconds=5))

    def _item(self, ts: datetime, kind: str, payload: Json) -> Json:
        line: Json = {"timestamp": iso_ms(ts), "type": kind, "payload": payload}
        self.lines.append(line)
        return line

    def turn_context(self, ts: datetime, model: str | None = None) -> Json:
        """A turn_context; a new `model` is a /model switch for the events after it."""
        self.model = model or self.model
        return self._item(ts, "turn_context", {
            "cwd": self.cwd, "approval_policy": "on-request",
            "sandbox_policy": {"mode": "workspace-write", "network_access": False},
            "model": self.model, "effort": "medium", "summary": "auto"})

    def user_message(self, ts: datetime, text: str) -> None:
        self._item(ts, "response_item", {"type": "message", "role": "user",
                                         "content": [{"type": "input_text", "text": text}]})
        self._item(ts, "event_msg", {"type": "user_message", "message": text, "images": []})

    def function_call(self, ts: datetime, call_id: str, name: str, arguments: Json,
                      output: str) -> None:
        """A tool call and its output as response_items."""
        self._item(ts, "response_item", {"type": "function_call", "name": name,
                                         "arguments": json.dumps(arguments), "call_id": call_id})
        self._item(ts + timedelta(milliseconds=300), "response_item", {
            "type": "function_call_output", "call_id": call_id,
            "output": json.dumps({"output": output, "metadata": {"exit_code": 0}})})

    def agent_message(self, ts: datetime, text: str) -> None:
        self._item(ts, "event_msg", {"type": "agent_message", "message": text})

    def token_count(self, ts: datetime, input_tokens: int, cached: int, output: int,
                    reasoning: int = 0, *, with_last: bool = True) -> Json:
        """One request's usage: totals advance by it; `with_last=False` writes only
        total_token_usage (older Codex)."""
        self.last = codex_usage(input_tokens, cached, output, reasoning)
        self.totals = {k: self.totals[k] + self.last[k] for k in self.totals}
        return self._emit(ts, with_last=with_last)

    def reemit(self, ts: datetime) -> Json:
        """The same token_count again (new timestamp, unchanged totals and last), as Codex does
        on a UI or rate-limit refresh."""
        return self._emit(ts, with_last=True)

    def rate_limits_only(self, ts: datetime) -> Json:
        return self._item(ts, "event_msg", {"type": "token_count", "info": None,
                                            "rate_limits": _rate_limits(7.0)})

    def _emit(self, ts: datetime, *, with_last: bool) -> Json:
        info: Json = {"total_token_usage": dict(self.totals)}
        if with_last and self.last is not None:
            info["last_token_usage"] = dict(self.last)
        info["model_context_window"] = 272_000
        return self._item(ts, "event_msg", {"type": "token_count", "info": info,
                                            "rate_limits": _rate_limits(12.5)})

    def relpath(self) -> Path:
        s = self.started.astimezone(UTC)
        name = f"rollout-{s.strftime('%Y-%m-%dT%H-%M-%S')}-{self.session_id}.jsonl"
        return Path(s.strftime("%Y"), s.strftime("%m"), s.strftime("%d"), name)

    def write(self, home: Path, *, archived: bool = False, final_newline: bool = True) -> Path:
        root = home / ".codex" / ("archived_sessions" if archived else "sessions")
        return write_jsonl(root / self.relpath(), self.lines, final_newline=final_newline)


def _codex_case(day: str, name: str, **kw: Any) -> tuple[CodexRollout, datetime]:
    t = utc(day)
    return CodexRollout(stable_uuid("codex", name), t, cwd=f"/home/dev/{name}", **kw), t


def _codex_turns(home: Path) -> list[Path]:
    """Three requests with tool calls: (1000 in, 200 cached, 300 out, 100 reasoning),
    (3000, 2500, 500, 0), (4200, 4000, 50, 20)."""
    r, t = _codex_case("2025-09-01T09:00:00", "turns")
    r.user_message(t + timedelta(seconds=1), "add a --json flag")
    r.function_call(t + timedelta(seconds=4), "call_1", "shell", {"command": ["rg", "json"]},
                    "cli.py:12")
    r.token_count(t + timedelta(seconds=5), 1000, 200, 300, 100)
    r.function_call(t + timedelta(seconds=9), "call_2", "apply_patch", {"input": "*** Begin"},
                    "Done!")
    r.token_count(t + timedelta(seconds=10), 3000, 2500, 500)
    r.agent_message(t + timedelta(seconds=14), "Added --json.")
    r.token_count(t + timedelta(seconds=15), 4200, 4000, 50, 20)
    return [r.write(home)]


def _codex_reemit(home: Path) -> list[Path]:
    """A request (2000, 1000, 100), a rate-limit-only line, 2 re-emits of it, then (500, 0, 50)."""
    r, t = _codex_case("2025-09-02T09:00:00", "reemit")
    r.token_count(t + timedelta(seconds=5), 2000, 1000, 100)
    r.rate_limits_only(t + timedelta(seconds=6))
    r.reemit(t + timedelta(seconds=20))
    r.reemit(t + timedelta(seconds=40))
    r.token_count(t + timedelta(seconds=50), 500, 0, 50)
    return [r.write(home)]


def _codex_model_switch(home: Path) -> list[Path]:
    """gpt-5-codex (1000, 0, 100), /model gpt-5 (1000, 0, 100), /model gpt-5.1-codex (1000, 0,
    100)."""
    r, t = _codex_case("2025-09-03T09:00:00", "model-switch")
    r.token_count(t + timedelta(seconds=5), 1000, 0, 100)
    r.turn_context(t + timedelta(seconds=6), model="gpt-5")
    r.token_count(t + timedelta(seconds=10), 1000, 0, 100)
    r.turn_context(t + timedelta(seconds=11), model="gpt-5.1-codex")
    r.token_count(t + timedelta(seconds=15), 1000, 0, 100)
    return [r.write(home)]


def _codex_totals_only(home: Path) -> list[Path]:
    """Events with total_token_usage only: (1000, 100, 10) then (2000, 1500, 20)."""
    r, t = _codex_case("2025-09-04T09:00:00", "totals-only")
    r.token_count(t + timedelta(seconds=5), 1000, 100, 10, with_last=False)
    r.token_count(t + timedelta(seconds=9), 2000, 1500, 20, with_last=False)
    return [r.write(home)]


def _codex_fork(home: Path) -> list[Path]:
    """A parent (1000/0/100 twice) and two children that replay its history first:
    a fork (forked_from_id = the parent, on disk) replaying both events 5 s apart, then its own
    request (10/0/1); a thread_spawn subagent whose parent is not on disk, replaying in a burst
    200 ms apart, then its own request (20/0/2)."""
    p, t = _codex_case("2025-09-05T09:00:00", "fork-parent")
    p.token_count(t + timedelta(seconds=5), 1000, 0, 100)
    p.token_count(t + timedelta(seconds=9), 1000, 0, 100)
    fork, c0 = _codex_case("2025-09-05T10:00:00", "fork-child", forked_from_id=p.session_id)
    spawn, _ = _codex_case("2025-09-05T10:00:00", "spawn-child", source={"subagent": {
        "thread_spawn": {"parent_thread_id": stable_uuid("codex", "gone"), "depth": 1}}})
    for child, gap, own in ((fork, 5000, 10), (spawn, 200, 20)):
        child.token_count(c0 + timedelta(seconds=1), 1000, 0, 100)
        child.token_count(c0 + timedelta(seconds=1, milliseconds=gap), 1000, 0, 100)
        child.user_message(c0 + timedelta(seconds=20), "now the tests")
        child.token_count(c0 + timedelta(seconds=30), own, 0, own // 10)
    return [p.write(home), fork.write(home), spawn.write(home)]


def _codex_archived(home: Path) -> list[Path]:
    """A rollout only in archived_sessions (300/0/30), and one in both sessions and
    archived_sessions under the same relative path (100/0/10)."""
    a, t = _codex_case("2025-09-06T09:00:00", "archived")
    a.token_count(t + timedelta(seconds=5), 300, 0, 30)
    b, _ = _codex_case("2025-09-06T11:00:00", "archived-both")
    b.token_count(utc("2025-09-06T11:00:05"), 100, 0, 10)
    return [a.write(home, archived=True), b.write(home), b.write(home, archived=True)]


def _codex_copied(home: Path) -> list[Path]:
    """A rollout (700/100/70) and a byte-identical copy of it under another name."""
    r, t = _codex_case("2025-09-07T09:00:00", "copied")
    r.token_count(t + timedelta(seconds=5), 700, 100, 70)
    path = r.write(home)
    copy = path.with_name(path.name.replace("rollout-", "rollout-copy-"))
    copy.write_bytes(path.read_bytes())
    return [path, copy]


def _codex_multi_day(home: Path) -> list[Path]:
    """Seeded requests from 2025-09-08 22:00 UTC into 2025-09-09, with re-emits."""
    rng = random.Random(20250908)
    r, t = _codex_case("2025-09-08T22:00:00", "multi-day", model="gpt-5.1-codex")
    for i in range(14):
        t += timedelta(minutes=rng.randint(4, 19), milliseconds=rng.randint(0, 999))
        r.function_call(t, f"call_md{i}", "shell", {"command": ["ls"]}, "ok")
        inp = rng.randint(2000, 60_000)
        r.token_count(t + timedelta(seconds=3), inp, rng.randint(0, inp), rng.randint(10, 4000),
                      rng.randint(0, 800))
        if rng.random() < 0.3:
            r.reemit(t + timedelta(seconds=rng.randint(5, 40)))
    return [r.write(home)]


def _codex_broken(home: Path) -> list[Path]:
    """A good request (100/0/10), garbage, a truncated token_count, an unterminated last line."""
    r, t = _codex_case("2025-09-10T09:00:00", "broken")
    r.token_count(t + timedelta(seconds=5), 100, 0, 10)
    r.lines.append("not json at all")
    r.lines.append('{"timestamp":"2025-09-10T09:00:06.000Z","type":"event_msg","payload":'
                   '{"type":"token_count","info":{"last_token_usage":{"input_tokens":5')
    r.token_count(t + timedelta(seconds=7), 1, 0, 1)
    return [r.write(home, final_newline=False)]


CODEX_CASES: dict[str, Case] = {
    "turns": _codex_turns,                # 2025-09-01
    "reemit": _codex_reemit,              # 2025-09-02
    "model_switch": _codex_model_switch,  # 2025-09-03
    "totals_only": _codex_totals_only,    # 2025-09-04
    "fork": _codex_fork,                  # 2025-09-05
    "archived": _codex_archived,          # 2025-09-06
    "copied": _codex_copied,              # 2025-09-07
    "multi_day": _codex_multi_day,        # 2025-09-08..09
    "broken": _codex_broken,              # 2025-09-10
}


# --------------------------------------------------------------------------------------------
# Gemini CLI: ~/.gemini/tmp/<projectHash>/chats/session-<YYYY-MM-DDTHH-MM>-<id8>.jsonl


def gemini_project_hash(project_root: str) -> str:
    return hashlib.sha256(project_root.encode()).hexdigest()


def gemini_tokens(input_tokens: int, output: int, cached: int = 0, thoughts: int = 0,
                  tool: int = 0, total: int | None = None) -> Json:
    """TokensSummary; cached is part of input (promptTokenCount), total = in+out+thoughts+tool."""
    return {"input": input_tokens, "output": output, "cached": cached, "thoughts": thoughts,
            "tool": tool,
            "total": input_tokens + output + thoughts + tool if total is None else total}


@dataclass
class GeminiChat:
    """One Gemini CLI chat recording (JSONL); the constructor writes the metadata line."""

    session_id: str
    started: datetime
    project_root: str = "/home/dev/repo"
    kind: str = "main"
    parent_session_id: str | None = None
    lines: list[Line] = field(default_factory=list)
    messages: dict[str, Json] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lines.append({"sessionId": self.session_id,
                           "projectHash": gemini_project_hash(self.project_root),
                           "startTime": iso_ms(self.started),
                           "lastUpdated": iso_ms(self.started), "kind": self.kind})

    def _message(self, record: Json) -> Json:
        self.messages[record["id"]] = record
        self.lines.append(record)
        return record

    def user(self, ts: datetime, text: str) -> Json:
        return self._message({"id": stable_uuid(self.session_id, "u", len(self.lines)),
                              "timestamp": iso_ms(ts), "type": "user",
                              "content": [{"text": text}]})

    def gemini(self, ts: datetime, *, model: str | None, tokens: Json | None,
               text: str = "Done.", tool_calls: Sequence[Json] = (),
               msg_id: str | None = None) -> Json:
        record: Json = {"id": msg_id or stable_uuid(self.session_id, "g", len(self.lines)),
                        "timestamp": iso_ms(ts), "type": "gemini", "content": text,
                        "thoughts": [], "tokens": tokens}
        if model is not None:
            record["model"] = model
        if tool_calls:
            record["toolCalls"] = list(tool_calls)
        return self._message(record)

    def fill_tokens(self, msg_id: str, tokens: Json) -> Json:
        """Re-append the whole message with the same id and its tokens filled in, as
        recordMessageTokens does."""
        return self._message({**self.messages[msg_id], "tokens": tokens})

    def set_metadata(self, ts: datetime, **fields: Any) -> None:
        self.lines.append({"$set": {"lastUpdated": iso_ms(ts), **fields}})

    def rewind_to(self, msg_id: str) -> None:
        self.lines.append({"$rewindTo": msg_id})

    def path(self, home: Path) -> Path:
        chats = home / ".gemini" / "tmp" / gemini_project_hash(self.project_root) / "chats"
        if self.parent_session_id is not None:
            return chats / self.parent_session_id / f"{self.session_id}.jsonl"
        stamp = self.started.astimezone(UTC).strftime("%Y-%m-%dT%H-%M")
        return chats / f"session-{stamp}-{self.session_id[:8]}.jsonl"

    def write(self, home: Path, *, final_newline: bool = True) -> Path:
        return write_jsonl(self.path(home), self.lines, final_newline=final_newline)

    def write_legacy_json(self, home: Path) -> Path:
        """The same conversation as a pre-JSONL `session-*.json` ConversationRecord."""
        meta = dict(self.lines[0]) if isinstance(self.lines[0], dict) else {}
        meta["messages"] = list(self.messages.values())
        path = self.path(home).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return path


def gemini_tool_call(call_id: str, name: str, args: Json, ts: datetime, result: str) -> Json:
    return {"id": call_id, "name": name, "args": args, "status": "success",
            "timestamp": iso_ms(ts),
            "result": [{"functionResponse": {"id": call_id, "name": name,
                                             "response": {"output": result}}}],
            "displayName": name, "renderOutputAsMarkdown": True}


PRO_25, FLASH_25 = "gemini-2.5-pro", "gemini-2.5-flash"


def _gemini_case(day: str, name: str, **kw: Any) -> tuple[GeminiChat, datetime]:
    t = utc(day)
    return GeminiChat(stable_uuid("gemini", name), t, project_root=f"/home/dev/{name}", **kw), t


def _gemini_basic(home: Path) -> list[Path]:
    """User, a gemini reply with a tool call (in 15,327 / cached 11,526 / out 23 / thoughts 919 /
    tool 7), the reply after it (in 16,000 / cached 15,000 / out 400)."""
    c, t = _gemini_case("2025-09-01T09:00:00", "basic")
    c.user(t, "what does main.py do?")
    c.gemini(t + timedelta(seconds=3), model=PRO_25, tokens=gemini_tokens(15327, 23, 11526, 919, 7),
             text="", tool_calls=[gemini_tool_call("read_file-1", "read_file",
                                                   {"absolute_path": "/home/dev/main.py"},
                                                   t + timedelta(seconds=3), "print('hi')")])
    c.gemini(t + timedelta(seconds=6), model=PRO_25, tokens=gemini_tokens(16000, 400, 15000))
    return [c.write(home)]


def _gemini_reappend(home: Path) -> list[Path]:
    """A reply first recorded with tokens null, then re-appended (same id) with tokens
    (1000/0/100); another recorded with (500/0/50) and re-appended with (800/0/80)."""
    c, t = _gemini_case("2025-09-02T09:00:00", "reappend")
    c.user(t, "hi")
    a = c.gemini(t + timedelta(seconds=2), model=FLASH_25, tokens=None)
    b = c.gemini(t + timedelta(seconds=3), model=FLASH_25, tokens=gemini_tokens(500, 50))
    c.fill_tokens(a["id"], gemini_tokens(1000, 100))
    c.fill_tokens(b["id"], gemini_tokens(800, 80))
    return [c.write(home)]


def _gemini_cached(home: Path) -> list[Path]:
    """cached inside input (total = in+out+thoughts+tool: 10,000/8,000/100/50 -> 10,150) and
    a total that also counts cached (10,000/8,000/100 with total 18,100)."""
    c, t = _gemini_case("2025-09-03T09:00:00", "cached")
    c.gemini(t, model=FLASH_25, tokens=gemini_tokens(10_000, 100, 8000, 50))
    c.gemini(t + timedelta(seconds=1), model=FLASH_25,
             tokens=gemini_tokens(10_000, 100, 8000, total=18_100))
    return [c.write(home)]


def _gemini_set_rewind(home: Path) -> list[Path]:
    """Two replies (300/0/30 each), a $rewindTo the first user message (both replies undone in
    the UI), a $set, then a new reply (200/0/20)."""
    c, t = _gemini_case("2025-09-04T09:00:00", "set-rewind")
    u = c.user(t, "try A")
    c.gemini(t + timedelta(seconds=2), model=FLASH_25, tokens=gemini_tokens(300, 30))
    c.gemini(t + timedelta(seconds=4), model=FLASH_25, tokens=gemini_tokens(300, 30))
    c.rewind_to(u["id"])
    c.set_metadata(t + timedelta(seconds=5), summary="try B instead")
    c.user(t + timedelta(seconds=6), "try B")
    c.gemini(t + timedelta(seconds=8), model=FLASH_25, tokens=gemini_tokens(200, 20))
    return [c.write(home)]


def _gemini_legacy_json(home: Path) -> list[Path]:
    """A legacy session-*.json (2 replies: 1000/0/10 and 2000/1000/20, model on each)."""
    c, t = _gemini_case("2025-09-05T09:00:00", "legacy-json")
    c.user(t, "hello")
    c.gemini(t + timedelta(seconds=2), model=PRO_25, tokens=gemini_tokens(1000, 10))
    c.gemini(t + timedelta(seconds=4), model=PRO_25, tokens=gemini_tokens(2000, 20, 1000))
    return [c.write_legacy_json(home)]


def _gemini_model_switch(home: Path) -> list[Path]:
    """gemini-2.5-pro (1000/0/100), then flash (1000/0/100), then one reply with no model
    field (1000/0/100)."""
    c, t = _gemini_case("2025-09-06T09:00:00", "model-switch")
    c.gemini(t, model=PRO_25, tokens=gemini_tokens(1000, 100))
    c.gemini(t + timedelta(seconds=1), model=FLASH_25, tokens=gemini_tokens(1000, 100))
    c.gemini(t + timedelta(seconds=2), model=None, tokens=gemini_tokens(1000, 100))
    return [c.write(home)]


def _gemini_subagent(home: Path) -> list[Path]:
    """A main session (400/0/40) and a subagent chat in chats/<parent>/<id>.jsonl (100/0/10)."""
    c, t = _gemini_case("2025-09-07T09:00:00", "subagent")
    c.gemini(t, model=PRO_25, tokens=gemini_tokens(400, 40))
    sub = GeminiChat(stable_uuid("gemini", "subagent-child"), t, project_root=c.project_root,
                     kind="subagent", parent_session_id=c.session_id)
    sub.gemini(t + timedelta(seconds=1), model=FLASH_25, tokens=gemini_tokens(100, 10))
    return [c.write(home), sub.write(home)]


def _gemini_broken(home: Path) -> list[Path]:
    """A good reply (100/0/10), garbage, a truncated reply, an unterminated good reply (1/0/1)."""
    c, t = _gemini_case("2025-09-08T09:00:00", "broken")
    c.gemini(t, model=FLASH_25, tokens=gemini_tokens(100, 10))
    c.lines.append("garbage")
    c.lines.append('{"id":"trunc","timestamp":"2025-09-08T09:00:01.000Z","type":"gemini",'
                   '"model":"gemini-2.5-flash","tokens":{"input":50')
    c.gemini(t + timedelta(seconds=2), model=FLASH_25, tokens=gemini_tokens(1, 1))
    return [c.write(home, final_newline=False)]


def _gemini_multi_day(home: Path) -> list[Path]:
    """Seeded replies from 2025-09-09 23:00 UTC into 2025-09-10, a few re-appended."""
    rng = random.Random(20250909)
    c, t = _gemini_case("2025-09-09T23:00:00", "multi-day")
    for i in range(10):
        t += timedelta(minutes=rng.randint(3, 15), milliseconds=rng.randint(0, 999))
        c.user(t, f"q{i}")
        inp = rng.randint(5000, 90_000)
        tokens = gemini_tokens(inp, rng.randint(10, 2000), rng.randint(0, inp),
                               rng.randint(0, 900), rng.randint(0, 20))
        if rng.random() < 0.4:
            m = c.gemini(t + timedelta(seconds=2), model=PRO_25, tokens=None)
            c.fill_tokens(m["id"], tokens)
        else:
            c.gemini(t + timedelta(seconds=2), model=PRO_25, tokens=tokens)
    return [c.write(home)]


GEMINI_CASES: dict[str, Case] = {
    "basic": _gemini_basic,                # 2025-09-01
    "reappend": _gemini_reappend,          # 2025-09-02
    "cached": _gemini_cached,              # 2025-09-03
    "set_rewind": _gemini_set_rewind,      # 2025-09-04
    "legacy_json": _gemini_legacy_json,    # 2025-09-05
    "model_switch": _gemini_model_switch,  # 2025-09-06
    "subagent": _gemini_subagent,          # 2025-09-07
    "broken": _gemini_broken,              # 2025-09-08
    "multi_day": _gemini_multi_day,        # 2025-09-09..10
}


# --------------------------------------------------------------------------------------------
# opencode: ~/.local/share/opencode/opencode.db (message table) + legacy storage/message/*.json


def opencode_data_dir(home: Path) -> Path:
    return home / ".local" / "share" / "opencode"


def opencode_assistant(msg_id: str, session_id: str, created: datetime, *, model_id: str,
                       provider_id: str, input_tokens: int, output: int, reasoning: int = 0,
                       cache_read: int = 0, cache_write: int = 0, cost: float = 0.0,
                       cwd: str = "/home/dev/repo", total: int | None = None) -> Json:
    """An assistant MessageV2.Info with its `id` and `sessionID` (the DB keeps those two in
    columns, not in `data`)."""
    tokens: Json = {"input": input_tokens, "output": output, "reasoning": reasoning,
                    "cache": {"read": cache_read, "write": cache_write}}
    if total is not None:
        tokens = {"total": total, **tokens}
    return {"id": msg_id, "sessionID": session_id, "role": "assistant",
            "time": {"created": epoch_ms(created), "completed": epoch_ms(created) + 4000},
            "parentID": f"{msg_id}u", "modelID": model_id, "providerID": provider_id,
            "mode": "build", "agent": "build", "path": {"cwd": cwd, "root": cwd},
            "cost": cost, "tokens": tokens, "finish": "stop"}


def opencode_user(msg_id: str, session_id: str, created: datetime, *, model_id: str,
                  provider_id: str) -> Json:
    return {"id": msg_id, "sessionID": session_id, "role": "user",
            "time": {"created": epoch_ms(created)}, "agent": "build",
            "model": {"providerID": provider_id, "modelID": model_id}}


_OPENCODE_SCHEMA = """
CREATE TABLE IF NOT EXISTS session (id TEXT PRIMARY KEY, project_id TEXT NOT NULL,
  parent_id TEXT, slug TEXT NOT NULL, directory TEXT NOT NULL, title TEXT NOT NULL,
  version TEXT NOT NULL, time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL
  REFERENCES session(id) ON DELETE CASCADE, time_created INTEGER NOT NULL,
  time_updated INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS message_session_time_created_id_idx
  ON message (session_id, time_created, id);
CREATE TABLE IF NOT EXISTS part (id TEXT PRIMARY KEY, message_id TEXT NOT NULL
  REFERENCES message(id) ON DELETE CASCADE, session_id TEXT NOT NULL,
  time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL, data TEXT NOT NULL);
"""


def write_opencode_db(home: Path, messages: Sequence[Json], *, name: str = "opencode.db") -> Path:
    """Add `messages` (opencode_assistant/opencode_user dicts) to the SQLite DB, creating it
    with opencode's tables (session, message, part; columns as in session.sql.ts) if needed."""
    path = opencode_data_dir(home) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(_OPENCODE_SCHEMA)
        for m in messages:
            created = m["time"]["created"]
            updated = m["time"].get("completed", created)
            cwd = m.get("path", {}).get("cwd", "/home/dev/repo")
            db.execute("INSERT OR IGNORE INTO session VALUES (?,?,?,?,?,?,?,?,?)",
                       (m["sessionID"], "prj", None, "slug", cwd, "title", "1.0.0", created,
                        updated))
            data = {k: v for k, v in m.items() if k not in ("id", "sessionID")}
            db.execute("INSERT INTO message VALUES (?,?,?,?,?)",
                       (m["id"], m["sessionID"], created, updated, dumps(data)))
            if m["role"] == "assistant":
                db.execute("INSERT INTO part VALUES (?,?,?,?,?,?)",
                           (f"prt_{m['id']}", m["id"], m["sessionID"], created, updated,
                            dumps({"type": "tool", "tool": "bash", "callID": f"call_{m['id']}",
                                   "state": {"status": "completed", "input": {"command": "ls"},
                                             "output": "a.py"}})))
    db.close()
    return path


def write_opencode_legacy(home: Path, messages: Sequence[Json]) -> list[Path]:
    """Legacy `storage/message/<sessionID>/<id>.json` files (id and sessionID inside)."""
    out = []
    for m in messages:
        path = opencode_data_dir(home) / "storage" / "message" / m["sessionID"] / f"{m['id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(m, indent=2), encoding="utf-8")
        out.append(path)
    return out


def _oc(day: str, n: str, **kw: Any) -> Json:
    kw.setdefault("model_id", "claude-sonnet-4-5-20250929")
    kw.setdefault("provider_id", "anthropic")
    return opencode_assistant(f"msg_{n}", f"ses_{n[:4]}", utc(day), **kw)


def _opencode_db(home: Path) -> list[Path]:
    """DB rows: sonnet with a stored cost 0.5 (1000/100, cache 10 read 20 write), gpt-5 with
    cost 0 (2000/200, read 1000), a user message, an all-zero assistant row."""
    t = utc("2025-09-01T09:00:00")
    rows = [opencode_user("msg_dbu1", "ses_db01", t, model_id=SONNET_45, provider_id="anthropic"),
            _oc("2025-09-01T09:00:01", "db01a", input_tokens=1000, output=100, cache_read=10,
                cache_write=20, cost=0.5),
            _oc("2025-09-01T09:00:02", "db01b", model_id="gpt-5", provider_id="openai",
                input_tokens=2000, output=200, cache_read=1000),
            _oc("2025-09-01T09:00:03", "db01c", input_tokens=0, output=0)]
    return [write_opencode_db(home, rows)]


def _opencode_legacy(home: Path) -> list[Path]:
    """Legacy JSON only: 300/30 (sonnet, cost 0)."""
    return write_opencode_legacy(home, [_oc("2025-09-02T09:00:00", "lg01a",
                                            input_tokens=300, output=30)])


def _opencode_dup(home: Path) -> list[Path]:
    """The same message id in the DB (400/40) and as a legacy JSON file (999/99)."""
    db = _oc("2025-09-03T09:00:00", "dp01a", input_tokens=400, output=40)
    js = _oc("2025-09-03T09:00:00", "dp01a", input_tokens=999, output=99)
    return [write_opencode_db(home, [db]), *write_opencode_legacy(home, [js])]


def _opencode_reasoning(home: Path) -> list[Path]:
    """gpt-5 rows with reasoning 500 (1000/100) and with reasoning 500 and total 1,600."""
    kw: Json = {"model_id": "gpt-5", "provider_id": "openai", "input_tokens": 1000,
                "output": 100, "reasoning": 500}
    rows = [_oc("2025-09-04T09:00:00", "rs01a", **kw),
            _oc("2025-09-04T09:00:01", "rs01b", total=1600, **kw)]
    return [write_opencode_db(home, rows)]


def _opencode_channel_db(home: Path) -> list[Path]:
    """A row (50/5) in opencode-beta.db beside opencode.db."""
    return [write_opencode_db(home, [_oc("2025-09-05T09:00:00", "ch01a", input_tokens=50,
                                         output=5)], name="opencode-beta.db")]


OPENCODE_CASES: dict[str, Case] = {
    "db": _opencode_db,                    # 2025-09-01
    "legacy": _opencode_legacy,            # 2025-09-02
    "dup": _opencode_dup,                  # 2025-09-03
    "reasoning": _opencode_reasoning,      # 2025-09-04
    "channel_db": _opencode_channel_db,    # 2025-09-05
}

CASES: dict[str, dict[str, Case]] = {
    "claude": CLAUDE_CASES, "codex": CODEX_CASES, "gemini": GEMINI_CASES,
    "opencode": OPENCODE_CASES,
}


def scenario(kind: str, home: Path, cases: Iterable[str] | None = None) -> list[Path]:
    """Write `cases` (all by default) of CLI `kind` under `home`; the files written."""
    table = CASES[kind]
    return [p for name in (table if cases is None else cases) for p in table[name](home)]


def claude_scenario(home: Path) -> list[Path]:
    return scenario("claude", home)


def codex_scenario(home: Path) -> list[Path]:
    return scenario("codex", home)


def gemini_scenario(home: Path) -> list[Path]:
    return scenario("gemini", home)


def opencode_scenario(home: Path) -> list[Path]:
    return scenario("opencode", home)
