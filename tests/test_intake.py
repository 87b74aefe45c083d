"""pipeline.intake: checking blocks of lines gives the per-line validator's verdicts, a chunk
at a time; nested fields are converted; quarantine records keep where and why."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_events import CORPUS, EVENTS

from pipeline.events import Event, Rejection, Validator, timestamp_ok
from pipeline.frames import nested_fields
from pipeline.intake import (
    CHUNK_LINES,
    EXCERPT_BYTES,
    BlockChecker,
    CheckedBlock,
    convert_nested,
    json_text,
    quarantine_record,
)

SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"
VALIDATOR = Validator()
NESTED = {t: nested_fields(t, VALIDATOR.schemas) for t in VALIDATOR.schemas.types}
LIMIT = 1 << 20
PREFIX = "abcdef0123456789-"
TS = "2025-03-01T12:00:00Z"
REJECTION = Rejection("invalid_json", "bad", pointer="/x")

Staged = dict[int, tuple[str, dict[str, Any]]]


def usage(**overrides: Any) -> bytes:
    body = {"event_type": "agent_token_usage", "event_id": "u", "ts": TS, "agent": "a",
            "model": "m", "input_tokens": 1, "output_tokens": 2} | overrides
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def expected(lines: list[bytes], position: int = 0,
             limit: int = LIMIT) -> tuple[Staged, dict[int, str]]:
    """Line by line through Validator.validate: staged rows and reject reasons by offset."""
    staged, rejected = {}, {}
    for line in lines:
        if len(line) > limit:
            rejected[position] = "line_too_long"
        else:
            verdict = VALIDATOR.validate(line)
            if isinstance(verdict, Event):
                data = dict(verdict.data)
                data.setdefault("event_id", f"{PREFIX}{position}")
                convert_nested([data], NESTED[verdict.event_type])
                staged[position] = (verdict.event_type, data)
            else:
                rejected[position] = verdict.reason
        position += len(line) + 1
    return staged, rejected


def found(block: CheckedBlock) -> tuple[Staged, dict[int, str]]:
    staged = {}
    for event_type, typed in block.rows.items():
        assert len(typed.rows) == len(typed.offsets)
        for row, offset in zip(typed.rows, typed.offsets, strict=True):
            staged[offset] = (event_type, row)
    return staged, {record["offset"]: record["reason"] for record in block.rejected}


def check_lines(lines: list[bytes], position: int = 0, limit: int = LIMIT,
                fast: bool = True) -> CheckedBlock:
    block = b"".join(line + b"\n" for line in lines)
    return BlockChecker(VALIDATOR, NESTED).check(block, position, "logs/a.jsonl", PREFIX, limit,
                                                 fast=fast)


def sample_lines() -> list[bytes]:
    return [line for path in sorted(SAMPLE_LOGS.rglob("*.jsonl"))
            for line in path.read_bytes().split(b"\n") if line]


# --------------------------------------------------------------------------------------------
# the same verdicts as the per-line validator
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lines", [sample_lines(), CORPUS], ids=["sample_logs", "corpus"])
@pytest.mark.parametrize("fast", [True, False], ids=["chunks", "line_by_line"])
def test_block_verdicts_equal_the_line_validator(lines: list[bytes], fast: bool) -> None:
    lines = [line for line in lines if b"\n" not in line]
    block = check_lines(lines, position=7, fast=fast)
    assert block.lines == len(lines)
    assert found(block) == expected(lines, position=7)


def test_the_comparison_covers_both_verdicts() -> None:
    staged, rejected = expected([line for line in CORPUS if b"\n" not in line])
    assert len(staged) > 100 and len(rejected) > 100


METRIC = b'{"event_type":"metric","ts":"' + TS.encode() + b'","agent":"a","name":"n",'
TRICKY = [
    ("float_integer", usage(input_tokens=5.0), "valid"),
    ("float_version", usage(schema_version=1.0), "valid"),
    ("bool_version", usage(schema_version=True), "schema_violation"),
    ("unknown_version", usage(schema_version=2), "unknown_schema_version"),
    ("leap_day", usage(ts="2024-02-29T00:00:00Z"), "valid"),
    ("no_leap_day", usage(ts="2025-02-29T00:00:00Z"), "schema_violation"),
    ("april_31", usage(ts="2025-04-31T00:00:00Z"), "schema_violation"),
    ("utc_year_0", usage(ts="0001-01-01T00:00:00+14:00"), "ts_out_of_range"),
    ("utc_year_10000", usage(ts="9999-12-31T23:59:59-00:01"), "ts_out_of_range"),
    ("year_1_utc", usage(ts="0001-01-01T00:00:00Z"), "valid"),
    ("year_9999_east", usage(ts="9999-12-31T23:59:59+14:00"), "valid"),
    ("no_event_id", usage(event_id=None), "valid"),
    ("duplicate_key", b'{"event_type":"agent_token_usage","event_type":"tool_call","ts":"'
     + TS.encode() + b'","agent":"a","tool":"x"}', "valid"),
    ("int_past_64_bits", METRIC + b'"data":{"n":123456789012345678901234567890}}', "valid"),
    ("int_past_1e300", METRIC + b'"data":{"n":1' + b"0" * 301 + b"}}", "schema_violation"),
    ("empty", b"", "empty_line"),
    ("array", b"[1, 2]", "not_object"),
    ("unknown_type", b'{"event_type": "nope", "ts": "' + TS.encode() + b'", "agent": "a"}',
     "unknown_event_type"),
]


@pytest.mark.parametrize(("line", "verdict"), [(line, v) for _, line, v in TRICKY],
                         ids=[name for name, _, _ in TRICKY])
@pytest.mark.parametrize("fast", [True, False], ids=["chunks", "line_by_line"])
def test_tricky_line_among_valid_ones(line: bytes, verdict: str, fast: bool) -> None:
    lines = [usage(event_id=f"before-{i}") for i in range(5)] + [line, usage(event_id="after")]
    staged, rejected = found(check_lines(lines, fast=fast))
    assert (staged, rejected) == expected(lines)
    offset = sum(len(x) + 1 for x in lines[:5])
    assert (offset in staged) == (verdict == "valid")
    if verdict != "valid":
        assert rejected[offset] == verdict


def test_line_without_event_id_gets_prefix_and_offset() -> None:
    lines = [usage(), usage(event_id=None)]
    staged, _ = found(check_lines(lines, position=100))
    second = 100 + len(lines[0]) + 1
    assert staged[second][1]["event_id"] == f"{PREFIX}{second}"
    assert staged[100][1]["event_id"] == "u"


def test_long_line_is_a_record_and_the_rest_is_read() -> None:
    lines = [usage(), usage(agent="x" * 200), usage()]
    block = check_lines(lines, limit=150)
    staged, _ = found(block)
    assert set(staged) == {0, len(lines[0]) + len(lines[1]) + 2}
    [record] = block.rejected
    assert (record["reason"], record["length"]) == ("line_too_long", len(lines[1]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(st.one_of(*EVENTS.values()), max_size=30),
       garbage=st.lists(st.tuples(st.integers(0, 30), st.binary(max_size=40)), max_size=5),
       position=st.integers(0, 10**9))
def test_blocks_round_trip_like_lines(events: list[dict[str, Any]],
                                      garbage: list[tuple[int, bytes]], position: int) -> None:
    lines = [orjson.dumps(event) for event in events]
    for at, junk in garbage:
        lines.insert(min(at, len(lines)), junk.replace(b"\n", b" "))
    assert found(check_lines(lines, position=position)) == expected(lines, position=position)


# --------------------------------------------------------------------------------------------
# the fast path: one schema call per chunk, the line path only for chunks it refuses
# --------------------------------------------------------------------------------------------

def test_a_refused_chunk_alone_goes_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    checked_alone: list[bytes] = []
    real_validate = VALIDATOR.validate

    def validate(line: bytes) -> Event | Rejection:
        checked_alone.append(line)
        return real_validate(line)

    monkeypatch.setattr(VALIDATOR, "validate", validate)
    lines = [usage(event_id=f"e{i}") for i in range(3 * CHUNK_LINES)]
    lines[CHUNK_LINES + 5] = b"{oops"
    staged, rejected = found(check_lines(lines))
    assert len(staged) == 3 * CHUNK_LINES - 1
    assert list(rejected.values()) == ["invalid_json"]
    assert checked_alone == lines[CHUNK_LINES:2 * CHUNK_LINES]  # the middle chunk only


def test_valid_blocks_never_take_the_line_path(monkeypatch: pytest.MonkeyPatch) -> None:
    valid = [line for line in sample_lines() if isinstance(VALIDATOR.validate(line), Event)]

    def refuse(line: bytes) -> Event | Rejection:
        raise AssertionError("a valid chunk was checked line by line")

    monkeypatch.setattr(VALIDATOR, "validate", refuse)
    staged, rejected = found(check_lines(valid))
    assert len(staged) == len(valid) and not rejected


def test_a_timestamp_outside_the_utc_years_fails_its_chunk_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk holding one is checked line by line and loses only that line; a chunk of
    valid years 1 and 9999 (Go's zero time is 0001-01-01T00:00:00Z) stays fast."""
    checked_alone: list[bytes] = []
    real_validate = VALIDATOR.validate

    def validate(line: bytes) -> Event | Rejection:
        checked_alone.append(line)
        return real_validate(line)

    monkeypatch.setattr(VALIDATOR, "validate", validate)
    edges = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59Z",
             "9999-12-31T10:00:00+14:00", "2025-01-31T00:00:00+14:00"]
    lines = [usage(event_id=f"e{i}", ts=edges[i % len(edges)]) for i in range(2 * CHUNK_LINES)]
    lines[CHUNK_LINES + 7] = usage(event_id="year-0", ts="0001-01-01T00:00:00+00:01")
    block = check_lines(lines)
    staged, rejected = found(block)
    assert len(staged) == 2 * CHUNK_LINES - 1
    offset = sum(len(line) + 1 for line in lines[:CHUNK_LINES + 7])
    assert rejected == {offset: "ts_out_of_range"}
    [record] = block.rejected
    assert (record["pointer"], record["message"]) == (
        "/ts", "ts 0001-01-01T00:00:00+00:01 is 0000-12-31T23:59:00 in UTC, "
        "outside years 1-9999")
    assert checked_alone == lines[CHUNK_LINES:]  # the second chunk only


def test_accepts_all_is_the_fast_verdict_of_each() -> None:
    parsed = []
    for line in CORPUS:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    assert len(parsed) > 100
    for obj in parsed:
        version = obj.get("schema_version", 1) if isinstance(obj, dict) else None
        if isinstance(version, float):
            continue  # 1.0 passes here and goes to the reference there; both accept it
        stamp_ok = isinstance(obj, dict) and isinstance(obj.get("ts"), str) and timestamp_ok(
            obj["ts"])  # the caller's check, after the schema's
        assert (VALIDATOR.accepts_all([obj]) and stamp_ok) == VALIDATOR.fast_accepts(obj), obj
    assert VALIDATOR.accepts_all([]) is True


# --------------------------------------------------------------------------------------------
# nested fields, JSON text and quarantine records
# --------------------------------------------------------------------------------------------

def test_convert_nested_struct_and_free_form() -> None:
    rows: list[dict[str, Any]] = [
        {"tokens_used": {"input": 1, "bonus": 2}, "data": {"k": [1]}}, {"other": 1}]
    convert_nested(rows, {"tokens_used": frozenset({"input"}), "data": None})
    assert rows[0] == {"tokens_used": {"input": 1, "extra": '{"bonus":2}'}, "data": '{"k":[1]}'}
    assert rows[1] == {"other": 1}


def test_json_text_falls_back_for_big_integers() -> None:
    assert json_text({"a": 1, "b": [True, None]}) == '{"a":1,"b":[true,null]}'
    assert json_text({"x": 2**70}) == f'{{"x":{2**70}}}'


def test_quarantine_record_fields() -> None:
    record = quarantine_record("a.jsonl", 10, b'{"a": oops}', REJECTION)
    assert record["source"] == "a.jsonl"
    assert (record["offset"], record["length"]) == (10, 11)
    assert (record["reason"], record["message"], record["pointer"]) == ("invalid_json", "bad",
                                                                         "/x")
    assert record["excerpt"] == '{"a": oops}'
    assert record["excerpt_truncated"] is False
    detected = datetime.fromisoformat(record["detected_at"])
    assert detected.tzinfo is not None
    assert abs((datetime.now(UTC) - detected).total_seconds()) < 60


def test_quarantine_excerpt_is_escaped_and_capped() -> None:
    line = b"\xff\x00abc" + b"y" * 5000
    record = quarantine_record("a.jsonl", 0, line, REJECTION)
    excerpt = record["excerpt"]
    assert excerpt.startswith("\\xff\\x00abc")
    assert "\x00" not in excerpt
    assert excerpt.endswith("y") and excerpt.count("y") == EXCERPT_BYTES - 5
    assert record["length"] == len(line)
    assert record["excerpt_truncated"] is True
    # a head of a longer line given with its full length
    head = quarantine_record("a.jsonl", 0, b"z" * 100, REJECTION, length=10_000)
    assert (head["length"], head["excerpt_truncated"]) == (10_000, True)
    # survives a JSON round trip as text
    assert orjson.loads(orjson.dumps(record))["excerpt"] == excerpt


