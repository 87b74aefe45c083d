"""pipeline.events: the fast path agrees with an independent reference, rejections are precise,
and every valid event round-trips."""

from __future__ import annotations

import calendar
import copy
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import referencing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.events import FOUND_LIMIT, Event, Rejection, Validator, _allows_huge_numbers
from pipeline.writer import encode_event

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
TS = "2025-03-01T12:34:56.789Z"
BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------------------------
# The reference, built here from the schema files alone (not from pipeline code)
# --------------------------------------------------------------------------------------------

def _reference_validators() -> dict[tuple[str, int], jsonschema.Draft202012Validator]:
    documents: dict[tuple[str, int], dict[str, Any]] = {}
    registry: referencing.Registry[Any] = referencing.Registry()
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        registry = registry.with_resource(document["$id"],
                                          referencing.Resource.from_contents(document))
        match = re.fullmatch(r"([a-z0-9_]+)\.v([0-9]+)\.schema\.json", path.name)
        assert match, path
        if match[1] != "envelope":
            documents[(match[1], int(match[2]))] = document
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    return {key: jsonschema.Draft202012Validator(doc, registry=registry, format_checker=checker)
            for key, doc in documents.items()}


REFERENCE = _reference_validators()


class _NotJson(Exception):
    pass


def _raise_constant(name: str) -> Any:
    raise _NotJson(name)


def _has_surrogate(value: Any) -> bool:
    stack = [value]  # iterative: parsed documents may be nested ~1000 deep
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any(0xD800 <= ord(ch) <= 0xDFFF for ch in item):
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def strict_parse(line: bytes) -> Any:
    """RFC 8259 in UTF-8, strictly: raises _NotJson for anything else."""
    if line.startswith(BOM) or b"\x00" in line:
        raise _NotJson("bom or raw NUL")
    try:
        text = line.decode("utf-8")
        obj = json.loads(text, parse_constant=_raise_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _NotJson(str(exc)[:80]) from None
    if _has_surrogate(obj):
        raise _NotJson("lone surrogate")
    return obj


def reference_valid(line: bytes) -> bool:
    try:
        obj = strict_parse(line)
    except _NotJson:
        return False
    if not isinstance(obj, dict):
        return False
    event_type, version = obj.get("event_type"), obj.get("schema_version", 1)
    # Pick the schema by (type, version); a bool or non-number version selects none.
    if type(event_type) is not str or isinstance(version, bool) or not isinstance(
            version, int | float):
        return False
    # a float version such as 1.0 hashes like 1 and selects that schema, as the reference would
    validator = REFERENCE.get((event_type, version))  # type: ignore[arg-type]
    return validator is not None and validator.is_valid(obj) and utc_seconds(obj["ts"]) in LAKE


# The lake's times, in seconds since 1970 UTC: years 1-9999 (what a Python datetime holds).
def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 on the proleptic Gregorian calendar, for any year (H. Hinnant)."""
    year -= month <= 2
    era, year_of_era = divmod(year, 400)
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """The inverse of _days_from_civil."""
    era, day_of_era = divmod(days + 719468, 146097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524
                   - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day


LAKE = range(_days_from_civil(1, 1, 1) * 86400, _days_from_civil(10000, 1, 1) * 86400)
_STAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|([+-])(\d\d):(\d\d))")


def utc_seconds(ts: str) -> int:
    """The whole seconds of a timestamp's UTC instant (its fraction cannot cross a bound)."""
    match = _STAMP.fullmatch(ts)
    assert match, ts
    year, month, day, hour, minute, second = map(int, match.groups()[:6])
    offset = 0 if match[8] == "Z" else (int(match[10]) * 60 + int(match[11])) * 60
    return (_days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
            - (offset if match[9] == "+" else -offset))


def utc_text(ts: str) -> str:
    """The UTC time of a timestamp as the rejection words it: fraction as written, no zone."""
    days, seconds = divmod(utc_seconds(ts), 86400)
    year, month, day = _civil_from_days(days)
    fraction = _STAMP.fullmatch(ts)[7] or ""  # type: ignore[index]
    return (f"{year:04d}-{month:02d}-{day:02d}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}"
            f":{seconds % 60:02d}{fraction}")


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------

FULL: dict[str, dict[str, Any]] = {
    "agent_token_usage": {
        "event_type": "agent_token_usage", "schema_version": 1,
        "event_id": "01JNQ8Z6T5Q1V2W3X4Y5Z6A7B8", "ts": TS, "agent": "claude", "role": "dev",
        "session_id": "sess-1", "task": "T-1", "model": "claude-sonnet-4", "phase": 1,
        "input_tokens": 5000, "output_tokens": 1200, "cache_read_tokens": 3000,
        "cache_write_tokens": 800, "reasoning_tokens": 100, "cache_write_1h_tokens": 200,
        "cost_usd": 0.0421, "request_id": "req_01",
    },
    "task_progress": {
        "event_type": "task_progress", "ts": TS, "agent": "gemini", "task": "GM-004",
        "status": "in_progress", "progress": 60, "name": "Migrate tables",
        "duration": "2h 15m", "deliverables": ["a.sql", "b.sql"],
        "components_completed": ["schema"], "remaining": ["indexes"],
        "metrics": {"coverage": 0.93, "flaky": False, "note": "ok", "none": None},
        "tables_migrated": {"users": 1200, "orders": 0}, "total_records": 10000,
        "records_processed": 6000,
        "tokens_used": {"prompt": 1000, "completion": 1500, "total": 2600,
                        "model": "gemini-2.5-pro", "embedding_generation": 100},
    },
    "context_compiled": {
        "event_type": "context_compiled", "ts": TS, "agent": "codex", "role": "dev",
        "session_id": "s-9", "prefix_bytes": 40960, "volatile_bytes": 2048,
        "prefix_hash": "sha256:abcdef", "input_tokens_estimate": 11000,
        "cache_read_tokens_estimate": 10000, "cache_write_tokens_estimate": 0,
    },
    "tool_call": {
        "event_type": "tool_call", "ts": TS, "agent": "claude", "tool": "bash",
        "duration_ms": 12.5, "output_length": 512, "ok": True,
    },
    "budget_alert": {
        "event_type": "budget_alert", "ts": TS, "agent": "tally",
        "alert": "TOKEN_BUDGET_WARNING", "period": "daily", "scope": "all",
        "usage": 120000, "budget": 150000, "percentage": 80.0, "period_start": "2025-03-01",
    },
    "metric": {
        "event_type": "metric", "ts": TS, "agent": "claude", "name": "latency",
        "data": {"p50": 0.12, "p99": 1.5, "host": "box-1", "warm": True, "missing": None},
    },
}
ENVELOPE_REQUIRED = {"event_type", "ts", "agent"}
TYPE_REQUIRED = {
    "agent_token_usage": set(), "task_progress": {"task"},
    "context_compiled": {"prefix_bytes", "volatile_bytes", "prefix_hash"},
    "tool_call": {"tool"},
    "budget_alert": {"alert", "period", "scope", "usage", "budget", "percentage"},
    "metric": {"name"},
}
MINIMAL = {t: {k: v for k, v in e.items() if k in ENVELOPE_REQUIRED | TYPE_REQUIRED[t]}
           for t, e in FULL.items()}
COUNT_FIELDS = {
    "agent_token_usage": ["input_tokens", "output_tokens", "cache_read_tokens",
                          "cache_write_tokens", "reasoning_tokens", "cache_write_1h_tokens"],
    "task_progress": ["total_records", "records_processed"],
    "context_compiled": ["prefix_bytes", "volatile_bytes", "input_tokens_estimate"],
    "tool_call": ["output_length"],
    "budget_alert": [],
    "metric": [],
}
WRONG_VALUES: list[Any] = ["x", 7, 1.5, True, None, [], {}]
COUNT_VALUES: list[Any] = [0, 1.0, 1e3, 2.5, -1, -0.0, 10**15, 10**15 + 1, 1e15, 1e16, "5",
                           True, 10**30, -(10**30)]
TIMESTAMPS = [
    "2025-03-01T12:00:00Z", "2025-03-01T12:00:00+05:30", "2025-03-01T12:00:00-00:00",
    "2025-03-01T12:00:00.123456789Z", "2024-02-29T23:59:59Z", "0001-01-01T00:00:00Z",
    "2025-03-01T12:00:00", "2025-02-30T12:00:00Z", "2023-02-29T00:00:00Z",
    "2016-12-31T23:59:60Z", "2025-03-01t12:00:00z", "2025-03-01T12:00:00z",
    "2025-03-01", "2025-03-01T12:00:00Zjunk", "2025-03-01T12:00:00Z ", " 2025-03-01T12:00:00Z",
    "2025-03-01 12:00:00Z", "2025-03-01T24:00:00Z", "2025-03-01T12:00:00+24:00",
    "2025-03-01T12:00:00.1234567891Z", "2025-13-01T00:00:00Z", "2025-03-01T12:00:00.Z",
    "0000-01-01T00:00:00Z", "2025-03-01T12:00:00Z\n", "2025-04-31T00:00:00Z", "",
    "20250301T120000Z",
    # valid RFC 3339 whose UTC instant is outside years 1-9999 (and neighbours inside)
    "0001-01-01T00:00:00+14:00", "0001-01-01T13:59:59.999999999+14:00",
    "0001-01-01T14:00:00+14:00", "0001-01-01T00:00:59.9999999+00:01",
    "0001-01-01T00:00:00-23:59", "9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59-00:01",
    "9999-12-31T23:59:59.999999999Z", "9999-12-31T23:59:59+00:00", "9999-12-31T00:00:00-23:59",
    "9999-12-30T23:59:59-00:01", "0001-01-02T00:00:00+23:59", "0001-02-29T00:00:00-01:00",
]


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _swap(event_type: str, key: str, value: Any, base: dict[str, Any] | None = None) -> bytes:
    event = copy.deepcopy(base or FULL[event_type])
    event[key] = value
    return _dump(event)


def build_corpus() -> list[bytes]:
    lines: list[bytes] = []
    add = lines.append
    for event_type, full in FULL.items():
        add(_dump(full))
        add(_dump(MINIMAL[event_type]))
        add(orjson.dumps(full))
        # every field dropped in turn: required ones make it invalid, optional ones do not
        for key in full:
            add(_dump({k: v for k, v in full.items() if k != key}))
        # every field of the full event replaced by values of other types
        for key in full:
            for value in WRONG_VALUES:
                if key != "event_type":
                    add(_swap(event_type, key, value))
        for key in COUNT_FIELDS[event_type]:
            for value in COUNT_VALUES:
                add(_swap(event_type, key, value))
        # unknown fields, top level and nested
        add(_swap(event_type, "inputtokens", 5))
        add(_swap(event_type, "extra", None, MINIMAL[event_type]))
        add(_swap(event_type, "x" * 300, 1))
        for ts in TIMESTAMPS:
            add(_swap(event_type, "ts", ts, MINIMAL[event_type]))
        for version in [1, 2, 0, -1, True, False, "1", 1.0, 1.5, None, [], {}]:
            add(_swap(event_type, "schema_version", version, MINIMAL[event_type]))
        raw = _dump(MINIMAL[event_type])
        add(BOM + raw)
        add(raw + b" \t ")
        add(raw + b"\r")
        add(b" \r\n\t" + raw + b"\r\n")
        add(raw + b"\x0c")
        add(raw + b"x")
        add(raw + b"{}")
        add(raw + b"\x00")
        add(raw[:-1])  # cut off
        add(raw[:-1] + b', "agent": 5}')   # duplicate key, the last one wins
        add(raw[:-1] + b', "agent": "other"}')
        add(raw.replace(b'"agent"', b'"agent": 5, "agent"', 1))
    # unknown and malformed event types
    bad_types: list[Any] = ["agent_tokens", "", "AGENT_TOKEN_USAGE", "envelope", 5, None, [],
                            {}, True]
    for bad_type in bad_types:
        add(_swap("metric", "event_type", bad_type, MINIMAL["metric"]))
    # labels and enums at their limits
    for value in ["", "a", "a" * 256, "a" * 257, "😀" * 256, "😀" * 257, "\u0000", "x\ny"]:
        add(_swap("metric", "agent", value, MINIMAL["metric"]))
        add(_swap("tool_call", "tool", value, MINIMAL["tool_call"]))
    for value in ["", "e", "e" * 128, "e" * 129]:
        add(_swap("metric", "event_id", value, MINIMAL["metric"]))
    for phase in [0, 1, -1, 1_000_000, 1_000_001, 1.0, "alpha", "", "p" * 64, "p" * 65, True]:
        add(_swap("agent_token_usage", "phase", phase, MINIMAL["agent_token_usage"]))
    for status in ["started", "in_progress", "blocked", "completed", "failed", "done",
                   "COMPLETED"]:
        add(_swap("task_progress", "status", status))
    for progress in [0, 100, 100.0001, -0.5, 55.5]:
        add(_swap("task_progress", "progress", progress))
    for alert in ["TOKEN_BUDGET_EXCEEDED", "COST_BUDGET_WARNING", "token_budget_warning"]:
        add(_swap("budget_alert", "alert", alert))
    for period in ["weekly", "monthly"]:
        add(_swap("budget_alert", "period", period))
    for day in ["2025-02-28", "2025-02-30", "2025-3-1", "0000-01-01", "2025-03-01T00:00:00Z",
                "2025-03-01\n"]:
        add(_swap("budget_alert", "period_start", day))
    for ms in [0, 1e12, 1e12 + 1, -1]:
        add(_swap("tool_call", "duration_ms", ms))
    for cost in [0, 1e9, 1e9 + 1, -0.01]:
        add(_swap("agent_token_usage", "cost_usd", cost))
    # nested objects
    for data in [{}, {"a": 1, "b": "x", "c": True, "d": None, "e": -1.5}, {"a": []},
                 {"a": {"b": 1}}, {"\u0000": 1}, {str(i): i for i in range(1001)},
                 {str(i): i for i in range(1000)}, [], "x", {"big": 10**30},
                 {"neg": -(10**30)}, {"wide": 10**400}]:
        add(_swap("metric", "data", data))
    for tokens in [{}, {"prompt": 1}, {"model": 5}, {"model": ""}, {"foo": "bar"},
                   {"foo": 3}, {"prompt": -1}, {"prompt": 1.0}, {"x": {"y": 1}},
                   {str(i): i for i in range(101)}, {str(i): i for i in range(100)}]:
        add(_swap("task_progress", "tokens_used", tokens))
    for tables in [{"users": -1}, {"users": 1}, {"users": "1"}]:
        add(_swap("task_progress", "tables_migrated", tables))
    for items in [["a", 1], [], ["x" * 4096], ["x" * 4097], "a.sql", [None]]:
        add(_swap("task_progress", "deliverables", items))
    add(_swap("task_progress", "metrics", {"nested": {"deep": 1}}))
    # non-objects, empty and whitespace-only lines
    lines += [b"[]", b'[{"event_type": "metric"}]', b'"metric"', b"1", b"-1.5", b"null",
              b"true", b"", b" ", b"\t", b"\r", b" \r ", b"\x0c", b"{}", b"{", b"}"]
    # deep nesting, huge and long numbers
    lines += [b"[" * 5000, b"[" * 5000 + b"]" * 5000, b"{" * 5000,
              b'{"a":' * 3000 + b"1" + b"}" * 3000]
    metric = _dump(MINIMAL["metric"])
    usage = _dump(MINIMAL["agent_token_usage"])

    def field(line: bytes, key: bytes, value: bytes) -> bytes:
        return line[:-1] + b", " + key + b": " + value + b"}"

    lines += [
        field(metric, b'"data"', b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        field(metric, b'"data"', b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}"),
        field(usage, b'"input_tokens"', b"1" * 5000),
        field(metric, b'"data"', b'{"a": ' + b"1" * 5000 + b"}"),
        field(metric, b'"data"', b'{"a": -' + b"9" * 5000 + b"}"),
        field(metric, b'"data"', b'{"a": ' + b"1" * 30 + b"}"),
        field(metric, b'"data"', b'{"a": ' + b"7" * 400 + b"}"),
        field(usage, b'"input_tokens"', b"1" * 30),
        field(usage, b'"input_tokens"', b"1e3"),
        field(usage, b'"input_tokens"', b"1E3"),
        field(usage, b'"input_tokens"', b"1.0"),
        field(usage, b'"input_tokens"', b"1.000000000000000000001"),
        field(usage, b'"input_tokens"', b"-0"),
        field(usage, b'"input_tokens"', b"01"),
        field(usage, b'"input_tokens"', b"+1"),
        field(usage, b'"input_tokens"', b"0x10"),
        field(usage, b'"input_tokens"', b"1."),
        field(usage, b'"input_tokens"', b".5"),
        field(usage, b'"input_tokens"', b"NaN"),
        field(usage, b'"input_tokens"', b"Infinity"),
        field(metric, b'"data"', b'{"a": NaN}'),
        field(metric, b'"data"', b'{"a": Infinity}'),
        field(metric, b'"data"', b'{"a": -Infinity}'),
        field(metric, b'"data"', b'{"a": nan}'),
        field(metric, b'"data"', b'{"a": 1.5e308}'),
        field(metric, b'"data"', b'{"a": undefined}'),
        field(metric, b'"data"', b"{'a': 1}"),
        field(metric, b'"data"', b'{"a": 1,}'),
    ]
    # strings: invalid UTF-8, NULs, surrogates, escapes
    for raw_value in [b'"\xff"', b'"\xc3"', b'"\xc0\x80"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"',
                      b'"caf\xc3\xa9"', b'"a\x00b"', b'"a\\u0000b"', b'"\\ud800"', b'"\\udc00x"',
                      b'"\\ud83d\\ude00"', b'"\\ud83d"', b'"\\ude00\\ud83d"', b'"tab\there"',
                      b'"a\\tb"', b'"\\x41"', b'"\\u00e9"', b'"\x7f"', b"'single'"]:
        lines.append(field(metric, b'"data"', b'{"s": ' + raw_value + b"}"))
        lines.append(usage.replace(b'"agent": "claude"', b'"agent": ' + raw_value))
    lines.append(field(metric, b'"data"', b'{"\\ud800": 1}'))
    lines.append(field(metric, b'"data"', b'{"\xff": 1}'))
    lines.append(b"\x00" + metric)
    lines.append(metric.replace(b"{", b"{\x00", 1))
    lines.append(BOM)
    lines.append(b"\xff\xfe" + metric.decode().encode("utf-16-le"))
    lines.append(metric.decode().encode("utf-16"))
    return lines


REASONS = {"empty_line", "bom", "nul_byte", "invalid_utf8", "too_deep", "number_too_large",
           "invalid_json", "not_object", "missing_field", "unknown_field", "schema_violation",
           "unknown_event_type", "unknown_schema_version", "ts_out_of_range"}
CORPUS = build_corpus()
VERDICTS = [reference_valid(line) for line in CORPUS]


def test_corpus_is_large_and_mixed() -> None:
    assert len(CORPUS) >= 200
    assert sum(VERDICTS) >= 60
    assert len(VERDICTS) - sum(VERDICTS) >= 120
    # every type has valid lines, both full and minimal
    for event_type in FULL:
        assert reference_valid(_dump(FULL[event_type])), event_type
        assert reference_valid(_dump(MINIMAL[event_type])), event_type


def test_validator_agrees_with_reference_on_every_line() -> None:
    validator = Validator()
    disagreements = []
    for line, expected in zip(CORPUS, VERDICTS, strict=True):
        result = validator.validate(line)
        assert isinstance(result, Event | Rejection)
        if isinstance(result, Event) != expected:
            disagreements.append((line[:120], expected, result))
        if isinstance(result, Rejection):
            assert result.reason in REASONS, result
        else:
            assert result.event_type == result.data["event_type"]
            assert result.data == strict_parse(line) or _orjson_reads_differently(line)
    assert disagreements == []


def _orjson_reads_differently(line: bytes) -> bool:
    """orjson reads integers beyond 64 bits as floats; the stdlib keeps them exact."""
    try:
        return bool(orjson.loads(line) != strict_parse(line))
    except orjson.JSONDecodeError:
        return False


def _fast_alone(validator: Validator, line: bytes) -> bool:
    """orjson + the fast verdict (jsonschema-rs and the calendar check), nothing else."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return validator.fast_accepts(obj)


def test_fast_path_never_accepts_what_the_reference_rejects() -> None:
    validator = Validator()
    accepted = 0
    slipped = []
    for line, expected in zip(CORPUS, VERDICTS, strict=True):
        if _fast_alone(validator, line):
            accepted += 1
            if not expected:
                slipped.append(line[:200])
    assert slipped == []
    # the fast path must carry the bulk of the valid lines, not hand everything to the reference
    assert accepted >= sum(VERDICTS) * 0.8


def test_year_zero_is_rejected() -> None:
    """jsonschema-rs's date/date-time formats accept year 0000, Python's datetime (the
    reference) does not; the schema patterns exclude it so both paths agree."""
    validator = Validator()
    for line in [_swap("metric", "ts", "0000-06-01T00:00:00Z", MINIMAL["metric"]),
                 _swap("budget_alert", "period_start", "0000-06-01")]:
        assert not reference_valid(line)
        assert not _fast_alone(validator, line)
        assert isinstance(validator.validate(line), Rejection)
    assert isinstance(validator.validate(_swap("metric", "ts", "0001-06-01T00:00:00Z")), Event)


# --------------------------------------------------------------------------------------------
# Timestamps whose UTC instant the lake cannot hold
# --------------------------------------------------------------------------------------------

EDGES = [
    ("0001-01-01T00:00:00Z", True),
    ("0001-01-01T00:00:00+00:01", False),
    ("0001-01-01T00:00:00-14:00", True),
    ("9999-12-31T23:59:59Z", True),
    ("9999-12-31T23:59:59-00:01", False),
    ("9999-12-31T10:00:00+14:00", True),
]


def _usage_at(ts: str) -> dict[str, Any]:
    return {"event_type": "agent_token_usage", "ts": ts, "agent": "a", "input_tokens": 1}


@pytest.mark.parametrize(("ts", "valid"), EDGES, ids=[ts for ts, _ in EDGES])
def test_utc_years_edges(ts: str, valid: bool) -> None:
    validator = Validator()
    event = _usage_at(ts)
    for result in (validator.validate(orjson.dumps(event)), validator.validate_object(event)):
        if valid:
            assert isinstance(result, Event) and result.data == event
        else:
            assert isinstance(result, Rejection)
            assert (result.reason, result.pointer) == ("ts_out_of_range", "/ts")
    # a valid edge stays on the fast path (Go's zero time is 0001-01-01T00:00:00Z)
    assert _fast_alone(validator, orjson.dumps(event)) is valid


@pytest.mark.parametrize(("ts", "utc"), [
    ("0001-01-01T00:00:00+14:00", "0000-12-31T10:00:00"),
    ("9999-12-31T23:00:00-05:00", "10000-01-01T04:00:00"),
    ("9999-12-31T23:59:59.5-00:01", "10000-01-01T00:00:59.5"),
    ("0001-01-01T00:00:00.000000001+00:01", "0000-12-31T23:59:00.000000001"),
])
def test_out_of_range_rejection_words_the_utc_time(ts: str, utc: str) -> None:
    result = Validator().validate(orjson.dumps(_usage_at(ts)))
    assert isinstance(result, Rejection)
    assert result.message == f"ts {ts} is {utc} in UTC, outside years 1-9999"
    assert result.describe() == f"ts_out_of_range at /ts: {result.message}"
    assert result.found == json.dumps(ts)
    assert "UTC" in result.hint and "smaller offset" in result.hint


@st.composite
def edge_year_timestamps(draw: st.DrawFn) -> str:
    """Timestamps of years 1, 2, 9998 and 9999; half of them on the day an offset may take
    out of range, mostly with an offset that way."""
    year = draw(st.sampled_from([1, 2, 9998, 9999]))
    hour = draw(st.integers(0, 23))
    minutes = draw(st.integers(-1439, 1439))  # the offset, up to 23:59 either way
    if draw(st.booleans()):  # the first or last day of the years 1-9999
        year = 1 if year < 5000 else 9999
        month, day = (1, 1) if year == 1 else (12, 31)
        if draw(st.integers(0, 3)):  # the hour near that edge, an offset towards it
            hour = draw(st.sampled_from([0, 1] if year == 1 else [22, 23]))
            minutes = abs(minutes) if year == 1 else -abs(minutes)
    else:
        month = draw(st.integers(1, 12))
        day = draw(st.integers(1, calendar.monthrange(year, month)[1]))
    minute, second = draw(st.tuples(st.integers(0, 59), st.integers(0, 59)))
    fraction = draw(st.sampled_from(["", ".5", ".999999999", ".000001"]))
    offset = "Z" if minutes == 0 and draw(st.booleans()) else (
        f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}")
    return (f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
            f"{fraction}{offset}")


EDGE_VALIDATOR = Validator()


@settings(max_examples=400, deadline=None)
@given(ts=edge_year_timestamps())
def test_ts_out_of_range_exactly_when_the_utc_year_is(ts: str) -> None:
    validator = EDGE_VALIDATOR
    inside = utc_seconds(ts) in LAKE
    event = _usage_at(ts)
    line = orjson.dumps(event)
    for result in (validator.validate(line), validator.validate_object(event)):
        if inside:
            assert isinstance(result, Event), result
        else:
            assert isinstance(result, Rejection)
            assert (result.reason, result.pointer) == ("ts_out_of_range", "/ts")
            assert result.message == f"ts {ts} is {utc_text(ts)} in UTC, outside years 1-9999"
    assert _fast_alone(validator, line) is inside


@pytest.mark.parametrize(("spec", "huge"), [
    ({"type": "number", "minimum": 0, "maximum": 100}, False),
    ({"type": "number", "minimum": 0, "maximum": 1e300}, True),
    ({"type": "number", "maximum": 100}, True),  # no lower bound
    ({"type": "number", "minimum": -1e300, "maximum": 0}, True),
    ({"type": "object", "additionalProperties": {"type": "string"}}, False),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, True),  # extras: anything
    ({"type": "array", "items": {"type": "integer", "maximum": 5}}, False),
    ({"type": "array"}, True),
    ({"properties": {"free": {}}}, True),
])
def test_specs_that_may_hold_numbers_orjson_reads_inexactly(spec: dict[str, Any],
                                                            huge: bool) -> None:
    assert _allows_huge_numbers(spec) is huge


def test_unhashable_type_or_version_is_rejected_not_raised() -> None:
    validator = Validator()
    for line in [b'{"event_type": "metric", "schema_version": [], "ts": "x"}',
                 b'{"event_type": ["metric"], "ts": "x"}', b'{"event_type": {"a": 1}}']:
        result = validator.validate(line)
        assert isinstance(result, Rejection)
        assert result.reason == "schema_violation"


def test_version_is_an_int_even_when_written_as_float() -> None:
    line = _swap("metric", "schema_version", 1.0, MINIMAL["metric"])
    result = Validator().validate(line)
    assert isinstance(result, Event)
    assert type(result.version) is int and result.version == 1


# --------------------------------------------------------------------------------------------
# Rejection precision
# --------------------------------------------------------------------------------------------

def _without(event_type: str, key: str) -> bytes:
    return _dump({k: v for k, v in FULL[event_type].items() if k != key})


REJECTIONS: list[tuple[str, bytes, str, str]] = [
    ("missing agent", _without("agent_token_usage", "agent"), "missing_field", "/agent"),
    ("missing ts", _without("tool_call", "ts"), "missing_field", "/ts"),
    ("missing task", _without("task_progress", "task"), "missing_field", "/task"),
    ("missing event_type", _without("metric", "event_type"), "missing_field", "/event_type"),
    ("misspelt field", _swap("agent_token_usage", "inputtokens", 5), "unknown_field",
     "/inputtokens"),
    ("field of another type", _swap("metric", "tool", "bash"), "unknown_field", "/tool"),
    ("negative count", _swap("agent_token_usage", "input_tokens", -1), "schema_violation",
     "/input_tokens"),
    ("string count", _swap("agent_token_usage", "output_tokens", "5"), "schema_violation",
     "/output_tokens"),
    ("bad timestamp", _swap("tool_call", "ts", "2025-02-30T00:00:00Z"), "schema_violation",
     "/ts"),
    ("year 0 in UTC", _swap("tool_call", "ts", "0001-01-01T00:00:00+14:00"), "ts_out_of_range",
     "/ts"),
    ("bad status", _swap("task_progress", "status", "done"), "schema_violation", "/status"),
    ("nested count", _swap("task_progress", "tokens_used", {"prompt": -5}),
     "schema_violation", "/tokens_used/prompt"),
    ("nested non-scalar", _swap("metric", "data", {"p50": [1]}), "schema_violation",
     "/data/p50"),
    ("pointer escaping", _swap("metric", "data", {"a/b~c": {}}), "schema_violation",
     "/data/a~1b~0c"),
    ("unknown type", _swap("metric", "event_type", "agent_tokens"), "unknown_event_type",
     "/event_type"),
    ("unknown version", _swap("metric", "schema_version", 2), "unknown_schema_version",
     "/schema_version"),
    ("version as string", _swap("metric", "schema_version", "1"), "schema_violation",
     "/schema_version"),
    ("bom", BOM + _dump(FULL["metric"]), "bom", ""),
    ("invalid utf-8", _dump(FULL["metric"]).replace(b"latency", b"lat\xffency"),
     "invalid_utf8", ""),
    ("raw nul", _dump(FULL["metric"]).replace(b"latency", b"lat\x00ency"), "nul_byte", ""),
    ("deep", b"[" * 5000, "too_deep", ""),
    ("5000 digits", _dump(MINIMAL["agent_token_usage"])[:-1] + b', "input_tokens": '
     + b"9" * 5000 + b"}", "number_too_large", ""),
    ("empty", b"", "empty_line", ""),
    ("whitespace", b" \t \r", "empty_line", ""),
    ("array", b"[1, 2]", "not_object", ""),
    ("null", b"null", "not_object", ""),
    ("nan", _dump(MINIMAL["metric"])[:-1] + b', "data": {"a": NaN}}', "invalid_json", ""),
    ("lone surrogate", _dump(MINIMAL["metric"]).replace(b'"claude"', b'"\\ud800"'),
     "invalid_json", ""),
    ("trailing garbage", _dump(MINIMAL["metric"]) + b"x", "invalid_json", ""),
]


@pytest.mark.parametrize(("line", "reason", "pointer"), [r[1:] for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_rejection_reason_and_pointer(line: bytes, reason: str, pointer: str) -> None:
    result = Validator().validate(line)
    assert isinstance(result, Rejection)
    assert (result.reason, result.pointer) == (reason, pointer)
    assert result.message
    assert result.describe().startswith(reason)
    if pointer:
        assert f" at {pointer}:" in result.describe()


def test_negative_count_names_bound_and_value() -> None:
    result = Validator().validate(_swap("agent_token_usage", "input_tokens", -1))
    assert isinstance(result, Rejection)
    assert re.search(r"\b0\b", result.expected), result
    assert result.found == "-1"
    assert "-1" in result.message


def test_unknown_type_lists_the_known_ones() -> None:
    result = Validator().validate(_swap("metric", "event_type", "agent_tokens"))
    assert isinstance(result, Rejection)
    assert result.found == '"agent_tokens"'
    for event_type in FULL:
        assert event_type in result.expected


def test_missing_field_hint_names_the_field() -> None:
    result = Validator().validate(_without("tool_call", "tool"))
    assert isinstance(result, Rejection)
    assert result.pointer == "/tool" and '"tool"' in result.hint


def test_long_found_values_are_cut() -> None:
    result = Validator().validate(_swap("metric", "name", "n" * 10_000 + "x"))
    assert isinstance(result, Rejection) and result.pointer == "/name"
    assert len(result.found) <= FOUND_LIMIT


# --------------------------------------------------------------------------------------------
# Hypothesis round trip
# --------------------------------------------------------------------------------------------

labels = st.text(min_size=1, max_size=256)
counts = st.integers(min_value=0, max_value=10**15)
scalars = st.one_of(st.text(max_size=30), st.integers(-(2**63), 2**63 - 1),
                    st.floats(-1e300, 1e300, allow_nan=False), st.booleans(), st.none())


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    digits = draw(st.integers(min_value=0, max_value=9))
    fraction = "" if digits == 0 else "." + "".join(
        draw(st.lists(st.sampled_from("0123456789"), min_size=digits, max_size=digits)))
    minutes = draw(st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59))
    if draw(st.booleans()):
        offset = "Z"
    else:
        sign = "-" if minutes < 0 else "+"
        offset = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}{fraction}{offset}")


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def _event(event_type: str, required: dict[str, st.SearchStrategy[Any]],
           optional: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    envelope = st.fixed_dictionaries(
        {"event_type": st.just(event_type), "ts": timestamps(), "agent": labels},
        optional={"schema_version": st.just(1), "event_id": st.text(min_size=1, max_size=128),
                  "role": labels, "session_id": labels, "task": labels, "model": labels,
                  "phase": st.one_of(st.integers(0, 1_000_000),
                                     st.text(min_size=1, max_size=64))})
    body = st.fixed_dictionaries(required, optional=optional)
    return st.builds(lambda e, b: {**e, **b}, envelope, body)


def _numbers(low: float, high: float) -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(int(low), int(high)),
                     st.floats(low, high, allow_nan=False, allow_infinity=False))


string_lists = st.lists(st.text(max_size=40), max_size=5)
tokens_used = st.builds(
    lambda fixed, extra: {**extra, **fixed},
    _optional(prompt=counts, completion=counts, total=counts, model=labels),
    st.dictionaries(st.text(min_size=1, max_size=20).filter(
        lambda k: k not in {"prompt", "completion", "total", "model"}), counts, max_size=5))

EVENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "agent_token_usage": _event("agent_token_usage", {}, {
        "input_tokens": counts, "output_tokens": counts, "cache_read_tokens": counts,
        "cache_write_tokens": counts, "reasoning_tokens": counts,
        "cache_write_1h_tokens": counts, "cost_usd": _numbers(0, 1e9), "request_id": labels}),
    "task_progress": _event("task_progress", {"task": labels}, {
        "status": st.sampled_from(["started", "in_progress", "blocked", "completed", "failed"]),
        "progress": _numbers(0, 100), "name": st.text(max_size=100),
        "duration": st.text(max_size=30), "deliverables": string_lists,
        "components_completed": string_lists, "remaining": string_lists,
        "metrics": st.dictionaries(st.text(max_size=20), scalars, max_size=5),
        "tables_migrated": st.dictionaries(st.text(max_size=20), counts, max_size=5),
        "total_records": counts, "records_processed": counts, "tokens_used": tokens_used}),
    "context_compiled": _event("context_compiled", {
        "prefix_bytes": counts, "volatile_bytes": counts,
        "prefix_hash": st.text(min_size=1, max_size=256)}, {
        "input_tokens_estimate": counts, "cache_read_tokens_estimate": counts,
        "cache_write_tokens_estimate": counts}),
    "tool_call": _event("tool_call", {"tool": labels}, {
        "duration_ms": _numbers(0, 1e12), "output_length": counts, "ok": st.booleans()}),
    "budget_alert": _event("budget_alert", {
        "alert": st.sampled_from(["TOKEN_BUDGET_WARNING", "TOKEN_BUDGET_EXCEEDED",
                                  "COST_BUDGET_WARNING", "COST_BUDGET_EXCEEDED"]),
        "period": st.sampled_from(["daily", "weekly"]), "scope": labels,
        "usage": _numbers(0, 1e18), "budget": _numbers(0, 1e18),
        "percentage": _numbers(0, 1e6)}, {
        "period_start": st.dates(min_value=datetime(1, 1, 1).date()).map(
            lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}")}),
    "metric": _event("metric", {"name": labels}, {
        "data": st.dictionaries(st.text(max_size=20), scalars, max_size=8)}),
}


def test_strategies_cover_every_registered_type() -> None:
    assert set(EVENTS) == set(Validator().schemas.types)


ROUND_TRIP_VALIDATOR = Validator()


@pytest.mark.parametrize("event_type", sorted(EVENTS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_events_round_trip(event_type: str, data: st.DataObject) -> None:
    event = data.draw(EVENTS[event_type])
    validator = ROUND_TRIP_VALIDATOR
    line = orjson.dumps(event)
    result = validator.validate(line)
    assert isinstance(result, Event), (result, event)
    assert result.event_type == event_type
    assert result.version == 1
    assert result.data == event
    # the reference agrees
    assert reference_valid(line)
    # and the writer's encoding of it validates to the same event
    encoded = encode_event(event, validator)
    assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
    again = validator.validate(encoded[:-1])
    assert isinstance(again, Event) and again.data == event



def test_the_reference_is_built_only_when_a_line_needs_it() -> None:
    validator = Validator()
    valid = encode_event({"event_type": "tool_call", "ts": "2025-08-01T00:00:00Z",
                          "agent": "claude", "tool": "Edit"})
    assert isinstance(validator.validate(valid.rstrip(b"\n")), Event)
    assert "_reference" not in vars(validator)
    rejected = validator.validate(b'{"event_type": "tool_call"}')
    assert isinstance(rejected, Rejection) and rejected.reason == "missing_field"
    assert "_reference" in vars(validator)


def test_checking_valid_lines_does_not_import_jsonschema() -> None:
    """Workers and the tailer start without it (70 ms each) until a line needs the reference."""
    valid = encode_event({"event_type": "tool_call", "ts": "2025-08-01T00:00:00Z",
                          "agent": "claude", "tool": "Edit"}).rstrip(b"\n")

    def imports_jsonschema(line: bytes) -> bool:
        code = ("import sys, pipeline.cli, pipeline.tailer, pipeline.workers\n"
                "from pipeline.events import Validator\n"
                f"Validator().validate({line!r})\n"
                "print('jsonschema' in sys.modules)\n")
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                              text=True)
        return done.stdout.strip() == "True"

    assert not imports_jsonschema(valid)
    assert imports_jsonschema(b'{"event_type": "tool_call"}')
