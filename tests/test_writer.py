"""pipeline.writer: filling ids and timestamps, refusing bad events, typing shell words, safe
default paths, and many processes appending to one file at once."""

from __future__ import annotations

import multiprocessing
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import sized_event
from ulid import ULID

import pipeline.writer as writer
from pipeline.errors import InvalidEvent, StorageError, UnsafeName, UsageError
from pipeline.events import Event, Validator
from pipeline.schemas import load_schemas
from pipeline.settings import TailerSettings
from pipeline.writer import append_event, append_line, build_event, default_log_path, encode_event

ULID_TEXT = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                     r"(Z|[+-][0-9]{2}:[0-9]{2})")


def usage(**fields: Any) -> dict[str, Any]:
    return {"event_type": "agent_token_usage", "agent": "claude", **fields}


def read_lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [orjson.loads(line) for line in raw.splitlines()]


# --------------------------------------------------------------------------------------------
# append_event
# --------------------------------------------------------------------------------------------

def test_append_fills_event_id_and_ts_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "claude.jsonl"  # parent does not exist yet
    before = datetime.now(UTC)
    written = append_event(path, usage(input_tokens=5))
    after = datetime.now(UTC)
    assert ULID_TEXT.fullmatch(written["event_id"])
    assert RFC3339.fullmatch(written["ts"])
    ts = datetime.fromisoformat(written["ts"].replace("Z", "+00:00"))
    assert before - timedelta(milliseconds=1) <= ts <= after
    # the ULID's own time is the time of writing too
    assert abs(ULID.from_str(written["event_id"]).datetime - ts) < timedelta(seconds=1)
    assert read_lines(path) == [written]
    assert written["input_tokens"] == 5


def test_append_keeps_given_event_id_and_ts(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    event = usage(event_id="my-id-1", ts="2020-01-02T03:04:05+02:00", output_tokens=7)
    written = append_event(path, event)
    assert written == event
    assert read_lines(path) == [event]


def test_append_does_not_mutate_the_callers_event(tmp_path: Path) -> None:
    event = usage(input_tokens=1)
    append_event(tmp_path / "a.jsonl", event)
    assert event == usage(input_tokens=1)


def test_append_appends(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"pre": "existing"}\n')
    append_event(path, usage(input_tokens=1))
    append_event(path, usage(input_tokens=2))
    lines = path.read_bytes().splitlines()
    assert lines[0] == b'{"pre": "existing"}'
    assert [orjson.loads(line)["input_tokens"] for line in lines[1:]] == [1, 2]


def test_event_ids_are_time_ordered(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    ids = []
    for i in range(300):
        ids.append(append_event(path, usage(input_tokens=i))["event_id"])
        if i % 100 == 0:
            time.sleep(0.003)  # cross millisecond boundaries too
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert [e["event_id"] for e in read_lines(path)] == ids


@pytest.mark.parametrize(("event", "reason", "field"), [
    ({"event_type": "agent_token_usage"}, "missing_field", "/agent"),
    (usage(input_tokens=-1), "schema_violation", "/input_tokens"),
    (usage(inputtokens=1), "unknown_field", "/inputtokens"),
    (usage(ts="yesterday"), "schema_violation", "/ts"),
    (usage(ts="0001-01-01T00:00:00+14:00"), "ts_out_of_range", "/ts"),  # year 0 in UTC
    ({"event_type": "nope", "agent": "a"}, "unknown_event_type", "/event_type"),
    ({"event_type": "task_progress", "agent": "a"}, "missing_field", "/task"),
])
def test_invalid_event_raises_and_writes_nothing(tmp_path: Path, event: dict[str, Any],
                                                 reason: str, field: str) -> None:
    new = tmp_path / "sub" / "new.jsonl"
    with pytest.raises(InvalidEvent) as info:
        append_event(new, event)
    assert (info.value.reason, info.value.field) == (reason, field)
    assert field in str(info.value)
    assert not new.exists() and not new.parent.exists()

    existing = tmp_path / "existing.jsonl"
    existing.write_bytes(b"keep\n")
    with pytest.raises(InvalidEvent):
        append_event(existing, event)
    assert existing.read_bytes() == b"keep\n"


def line_length(event: dict[str, Any]) -> int:
    """The bytes of an event's line as the tailer counts them: without the newline."""
    return len(encode_event(event)) - 1


@pytest.mark.parametrize("limit", [200, 5000, TailerSettings().max_line_bytes])
def test_append_refuses_a_line_past_the_limit_and_writes_nothing(tmp_path: Path,
                                                                 limit: int) -> None:
    path = tmp_path / "a.jsonl"
    exact, over = sized_event(limit), sized_event(limit + 1)
    assert (line_length(exact), line_length(over)) == (limit, limit + 1)
    append_event(path, exact, max_line_bytes=limit)
    before = path.read_bytes()
    assert len(before) == limit + 1
    with pytest.raises(InvalidEvent) as info:
        append_event(path, over, max_line_bytes=limit)
    assert info.value.reason == "line_too_long"
    assert info.value.message == f"line of {limit + 1:,} bytes exceeds the {limit:,}-byte limit"
    assert info.value.hint == "shorten the event, or raise [tailer] max_line_bytes in config.toml"
    assert info.value.exit_code == 1
    assert path.read_bytes() == before


def test_append_default_limit_is_the_tailers_one_mib(tmp_path: Path) -> None:
    assert writer.DEFAULT_MAX_LINE_BYTES == TailerSettings().max_line_bytes == 1 << 20
    path = tmp_path / "a.jsonl"
    with pytest.raises(InvalidEvent) as info:
        append_event(path, sized_event(2_000_000))
    assert info.value.reason == "line_too_long"
    assert not path.exists()
    append_event(path, sized_event(1 << 20))
    assert len(path.read_bytes()) == (1 << 20) + 1


def test_append_line_to_a_full_device_is_a_storage_error() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is Linux only")
    with pytest.raises(StorageError) as info:
        append_line(Path("/dev/full"), b"{}\n")
    assert info.value.exit_code == 74
    assert info.value.message == "/dev/full: cannot append to the log: No space left on device"
    assert info.value.hint == ("free space on that file system, then log the event again "
                               "(it was not written)")


def test_append_line_where_no_file_can_be_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory\n")
    with pytest.raises(StorageError) as info:
        append_line(blocker / "a.jsonl", b"{}\n")
    assert info.value.message.startswith(f"{blocker / 'a.jsonl'}: cannot append to the log: ")


def test_a_short_write_is_a_storage_error(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = writer.os.write
    monkeypatch.setattr(writer.os, "write", lambda fd, data: real_write(fd, data[:3]))
    path = tmp_path / "a.jsonl"
    with pytest.raises(StorageError) as info:
        append_line(path, b'{"a": 1}\n')
    assert info.value.message == f"{path}: cannot append to the log: wrote 3 of 9 bytes"
    assert info.value.exit_code == 74


# --------------------------------------------------------------------------------------------
# build_event
# --------------------------------------------------------------------------------------------

def build(event_type: str, *pairs: str, **envelope: str | None) -> dict[str, Any]:
    return build_event(load_schemas(), event_type, pairs, envelope)


def test_build_maps_aliases_to_full_names() -> None:
    event = build("agent_token_usage", "role=dev", "input=5000", "output=1200",
                  "cache_read=3000", "cache_write=800", "cache_write_1h=100", "reasoning=50",
                  agent="claude", phase="1")
    assert event == {
        "event_type": "agent_token_usage", "agent": "claude", "phase": 1, "role": "dev",
        "input_tokens": 5000, "output_tokens": 1200, "cache_read_tokens": 3000,
        "cache_write_tokens": 800, "cache_write_1h_tokens": 100, "reasoning_tokens": 50,
    }
    assert all(type(event[k]) is int for k in ("input_tokens", "cache_write_tokens", "phase"))


def test_build_full_names_and_alias_of_role() -> None:
    event = build("agent_token_usage", "input_tokens=1_000", "agent_role=reviewer",
                  "session=s-1", agent="x")
    assert event["input_tokens"] == 1000
    assert event["role"] == "reviewer"
    assert event["session_id"] == "s-1"


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("0", 0), ("42", 42),
                                               ("design", "design"), ("1a", "1a")])
def test_build_phase_is_int_or_label(raw: str, expected: object) -> None:
    event = build("metric", "name=n", agent="a", phase=raw)
    assert event["phase"] == expected
    assert type(event["phase"]) is type(expected)


def test_build_types_values_from_the_schema() -> None:
    tool = build("tool_call", "tool=bash", "duration_ms=12.5", "output_length=512", "ok=true",
                 agent="a")
    assert tool["duration_ms"] == 12.5 and isinstance(tool["duration_ms"], float)
    assert tool["output_length"] == 512 and type(tool["output_length"]) is int
    assert tool["ok"] is True
    assert build("tool_call", "tool=t", "ok=no", agent="a")["ok"] is False
    assert build("tool_call", "tool=t", "ok=FALSE", agent="a")["ok"] is False
    assert build("tool_call", "tool=t", "duration_ms=3", agent="a")["duration_ms"] == 3

    progress = build(
        "task_progress", "task=GM-4", "status=in_progress", "progress=60",
        'deliverables=["a.js", "b.js"]', 'tokens_used={"prompt": 1000, "total": 2500}',
        'metrics={"coverage": 0.9, "ok": true}', 'tables_migrated={"users": 3}',
        "name=123", agent="gemini")
    assert progress["deliverables"] == ["a.js", "b.js"]
    assert progress["tokens_used"] == {"prompt": 1000, "total": 2500}
    assert progress["metrics"] == {"coverage": 0.9, "ok": True}
    assert progress["tables_migrated"] == {"users": 3}
    assert progress["progress"] == 60
    assert progress["name"] == "123"  # a string field keeps digits as text
    assert progress["status"] == "in_progress"

    metric = build("metric", "name=lat", 'data={"p50": 1.5, "host": "h"}', agent="a")
    assert metric["data"] == {"p50": 1.5, "host": "h"}

    # what build_event makes, the validator accepts
    validator = Validator()
    for event in (tool, progress, metric):
        event = {**event, "ts": "2025-01-01T00:00:00Z"}
        assert isinstance(validator.validate(orjson.dumps(event)), Event)


def test_build_rejects_unknown_key_with_a_suggestion() -> None:
    with pytest.raises(UsageError) as info:
        build("agent_token_usage", "inputtokens=5", agent="a")
    assert "inputtokens" in info.value.message
    assert info.value.hint is not None
    assert "did you mean 'input_tokens'" in info.value.hint


def test_build_alias_of_another_type_is_unknown() -> None:
    # cache_read maps to cache_read_tokens, which context_compiled does not have
    with pytest.raises(UsageError, match="cache_read"):
        build("context_compiled", "cache_read=5", agent="a")


@pytest.mark.parametrize("pair", ["input_tokens=abc", "input_tokens=", "input_tokens=1.5",
                                  "output_length=ten"])
def test_build_rejects_non_numbers_for_integer_fields(pair: str) -> None:
    event_type = "tool_call" if pair.startswith("output_length") else "agent_token_usage"
    with pytest.raises(UsageError) as info:
        build(event_type, pair, agent="a")
    assert pair.split("=")[0] in info.value.message


@pytest.mark.parametrize("pair", ["deliverables=[a.js", "tokens_used={prompt: 1}"])
def test_build_rejects_bad_json(pair: str) -> None:
    with pytest.raises(UsageError) as info:
        build("task_progress", "task=t", pair, agent="a")
    assert pair.split("=")[0] in info.value.message


@pytest.mark.parametrize("pairs", [("noequals",), ("=5",), ("event_type=metric",),
                                   ("schema_version=2",), ("input=1", "input_tokens=2")])
def test_build_rejects_malformed_pairs(pairs: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        build("agent_token_usage", *pairs, agent="a")


# --------------------------------------------------------------------------------------------
# default_log_path
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("agent", ["../x", "a/b", "a\x01b", "claude\n", "..", "", ".", ".hidden",
                                   "a..b", "/etc/passwd", "a\\b", "x" * 129, "a b", "é"])
def test_default_log_path_refuses_unsafe_names(tmp_path: Path, agent: str) -> None:
    with pytest.raises(UnsafeName) as info:
        default_log_path(tmp_path / "logs", agent)
    assert "--to" in (info.value.hint or "")


@pytest.mark.parametrize("agent", ["claude", "gpt-4.1_a-b", "A9", "x" * 128])
def test_default_log_path_accepts_plain_names(tmp_path: Path, agent: str) -> None:
    logs = tmp_path / "logs"
    path = default_log_path(logs, agent)
    assert path == logs / f"{agent}.jsonl"
    assert path.parent == logs


# --------------------------------------------------------------------------------------------
# concurrent writers
# --------------------------------------------------------------------------------------------

WRITERS = 8
PER_WRITER = 500


def _writer(path: str, writer: int, barrier: Any) -> None:
    validator = Validator()
    barrier.wait()
    for i in range(PER_WRITER):
        append_event(path, {"event_type": "tool_call", "agent": f"w{writer}", "tool": "bash",
                            "output_length": i, "ok": True,
                            "session_id": "s" * (writer * 30 + 1)}, validator)


def test_concurrent_writers_to_one_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "shared.jsonl"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    processes = [context.Process(target=_writer, args=(str(path), n, barrier))
                 for n in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * WRITERS

    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == WRITERS * PER_WRITER
    validator = Validator()
    seen: dict[str, set[int]] = {}
    ids = set()
    for line in lines:
        result = validator.validate(line)
        assert isinstance(result, Event), (line[:200], result)
        data = result.data
        ids.add(data["event_id"])
        seen.setdefault(data["agent"], set()).add(data["output_length"])
        # no interleaving inside a line: the padding matches its own writer
        assert data["session_id"] == "s" * (int(data["agent"][1:]) * 30 + 1)
    assert len(ids) == WRITERS * PER_WRITER
    assert seen == {f"w{n}": set(range(PER_WRITER)) for n in range(WRITERS)}
