"""pipeline.structs: the compiled decoder stages exactly what the checker's path stages (same
rows, same values, same rejects), refuses rather than guesses, and compiles only what it can
express."""

from __future__ import annotations

import io
import json
from typing import Any

import msgspec
import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from test_events import CORPUS, EVENTS, strict_parse
from test_intake import TRICKY, sample_lines

from pipeline import structs
from pipeline.events import Event, Validator
from pipeline.frames import DECODE_FROM_LINES, BlockStager, FrameBuilder, TypingJob
from pipeline.schemas import load_schemas
from pipeline.stage import StagedBlock
from pipeline.structs import DecodedChunk, NotCompilable, StructDecoder, compile_type

SCHEMAS = load_schemas()
VALIDATOR = Validator(SCHEMAS)
WITH_STRUCTS = BlockStager(VALIDATOR, decode_from=1)
CHECKER_ONLY = BlockStager(VALIDATOR, decode_from=None)
DECODER = StructDecoder(SCHEMAS)
PREFIX = "feedface-"
TS = "2025-03-01T12:00:00Z"


def stage_both(lines: list[bytes], position: int = 0, limit: int = 1 << 20,
               ) -> tuple[StagedBlock, StagedBlock]:
    block = b"".join(line + b"\n" for line in lines)
    return (WITH_STRUCTS.stage(block, position, "a.jsonl", PREFIX, limit),
            CHECKER_ONLY.stage(block, position, "a.jsonl", PREFIX, limit))


def assert_same_staging(lines: list[bytes], position: int = 0, limit: int = 1 << 20) -> None:
    fast, reference = stage_both(lines, position, limit)
    assert fast.counts == reference.counts
    assert set(fast.frames) == set(reference.frames)
    for event_type, ipc in reference.frames.items():
        assert_frame_equal(pl.read_ipc(io.BytesIO(fast.frames[event_type])),
                           pl.read_ipc(io.BytesIO(ipc)))
    assert [_without_time(r) for r in fast.rejected] == [
        _without_time(r) for r in reference.rejected]


def _without_time(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "detected_at"}


def decoded_lines(lines: list[bytes]) -> int:
    return sum(len(c.indexes) for c in DECODER.decode(lines).by_type.values())


# --------------------------------------------------------------------------------------------
# the same staging as the checker's path
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lines", [sample_lines(), CORPUS, [line for _, line, _ in TRICKY]],
                         ids=["sample_logs", "corpus", "tricky"])
def test_staging_equals_the_checker_path(lines: list[bytes]) -> None:
    lines = [line for line in lines if b"\n" not in line]
    assert_same_staging(lines, position=11)


@pytest.mark.parametrize("slice_lines", [1, 7, 1000])
def test_slices_of_a_block_merge_into_the_same_staging(monkeypatch: pytest.MonkeyPatch,
                                                      slice_lines: int) -> None:
    """A block decoded slice by slice (columns and line indexes joined across slices,
    refusals and row checks in any slice) stages what the checker's path stages."""
    lines = [line for line in [*sample_lines(), *CORPUS, *(line for _, line, _ in TRICKY)]
             if b"\n" not in line]
    monkeypatch.setattr(structs, "DECODE_SLICE_LINES", slice_lines)
    assert decoded_lines(lines) >= len(lines) // 4
    assert_same_staging(lines, position=5)


def test_the_comparison_exercises_the_decoder() -> None:
    samples = sample_lines()
    assert decoded_lines(samples) >= len(samples) // 2
    assert decoded_lines(CORPUS) >= 50


def test_decoded_values_are_the_reference_parse() -> None:
    """Every line the decoder takes parses, under the strict reference parser, to the values
    it decoded (absent fields None; integer phases as their digits; integers in number
    fields as floats, the column's type)."""
    checked = 0
    for line in CORPUS:
        chunk = DECODER.decode([line])
        for event_type, columns in chunk.by_type.items():
            reference = strict_parse(line)
            for name, [value] in columns.columns.items():
                expected = reference.get(name)
                if name in columns.integer_text:  # Polars writes the digits: see below
                    value = str(value)
                if name in DECODER.compiled[event_type].as_text and type(expected) is int:
                    expected = str(expected)
                if type(value) is float and type(expected) is int:  # a number field
                    expected = float(expected)
                assert value == expected and type(value) is type(expected), (line, name)
            checked += 1
    assert checked >= 50


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers past 64 bits
        return json.dumps(value, separators=(",", ":")).encode()


def _mutated(event: dict[str, Any], how: int, key: str, value: Any) -> bytes:
    body = _dumps(event)
    if how == 0:
        return body
    if how == 1:
        return _dumps({**event, key: value})  # a value of any kind in any field
    if how == 2:
        return _dumps({k: v for k, v in event.items() if k != key})
    if how == 3:  # a duplicate key: the reference keeps the last
        return body[:-1] + b"," + _dumps(key) + b":" + _dumps(value) + b"}"
    if how == 4:
        return _dumps({**event, key: None})
    return body[: len(body) * how // 10]  # torn


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=300))
values = st.one_of(
    scalars, st.just(TS), st.just("2025-02-30T00:00:00Z"), st.just("2025-01-01t00:00:00z"),
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-00:01",  # UTC year
                     "0001-01-01T00:00:00Z", "9999-12-31T23:59:59+00:01"]),  # 0, 10000; not
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.sampled_from(["prompt", "model", "x", ""]), inner,
                                   max_size=3), max_leaves=6))
keys = st.sampled_from(["agent", "ts", "event_id", "phase", "input_tokens", "cost_usd", "tool",
                        "ok", "schema_version", "event_type", "prefix_bytes", "no_such_field",
                        "tokens_used", "metrics", "data", "deliverables", "tables_migrated",
                        "progress", "status"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases=st.lists(st.tuples(st.one_of(*EVENTS.values()), st.integers(0, 9), keys, values),
                      max_size=25),
       position=st.integers(0, 10**9))
def test_mutated_events_stage_like_the_checker_path(
        cases: list[tuple[dict[str, Any], int, str, Any]], position: int) -> None:
    assert_same_staging([_mutated(*case) for case in cases], position=position)


def test_only_blocks_of_decode_from_lines_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    stager = BlockStager(VALIDATOR, decode_from=3)
    assert stager.decoder is not None
    decoded: list[int] = []
    real_decode = stager.decoder.decode

    def decode(lines: list[bytes]) -> DecodedChunk:
        decoded.append(len(lines))
        return real_decode(lines)

    monkeypatch.setattr(stager.decoder, "decode", decode)
    line = USAGE + b"}\n"
    for count in (1, 2, 3, 5):
        staged = stager.stage(line * count, 0, "a.jsonl", PREFIX, 1 << 20)
        assert staged.counts == {"agent_token_usage": count}
    assert decoded == [3, 5]


def lines_checked(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The lines WITH_STRUCTS hands to its checker from now on (those not decoded)."""
    checked: list[bytes] = []
    real_check = WITH_STRUCTS.checker.check_lines

    def check_lines(lines: list[bytes], *args: Any) -> Any:
        checked.extend(lines)
        return real_check(lines, *args)

    monkeypatch.setattr(WITH_STRUCTS.checker, "check_lines", check_lines)
    return checked


def test_columns_that_cannot_be_typed_go_to_the_checker(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> TypingJob:
        raise ValueError("cannot type these columns")

    monkeypatch.setattr(FrameBuilder, "prepare", refuse)
    checked = lines_checked(monkeypatch)
    assert_same_staging(sample_lines())
    assert checked == sample_lines()


def test_a_typing_query_that_fails_sends_only_its_type_to_the_checker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The types' queries run together; one failing leaves the others typed."""
    real_query = TypingJob.query

    def query(job: TypingJob, columns: Any = None) -> pl.LazyFrame:
        if job.builder.event_type == "tool_call":  # fails when run, as a bad cast would
            return pl.LazyFrame({"x": ["not a number"]}).select(pl.col("x").cast(pl.Int64))
        return real_query(job, columns)

    lines = sample_lines()
    checked = lines_checked(monkeypatch)
    stage_both(lines)
    left_anyway = list(checked)  # types not compiled, lines the decoder refuses
    checked.clear()
    monkeypatch.setattr(TypingJob, "query", query)
    assert_same_staging(lines)
    decoded_tool_calls = [lines[i] for i in DECODER.decode(lines).by_type["tool_call"].indexes]
    assert set(decoded_tool_calls) - set(left_anyway)
    assert set(checked) == set(left_anyway) | set(decoded_tool_calls)


def test_long_valid_line_is_quarantined_not_decoded() -> None:
    padded = orjson.dumps({"event_type": "tool_call", "ts": TS, "agent": "a", "tool": "x" * 200})
    lines = [padded, padded[:100]]
    fast, _ = stage_both(lines, limit=150)
    assert [r["reason"] for r in fast.rejected] == ["line_too_long", "invalid_json"]
    assert_same_staging(lines, limit=150)


def test_a_timestamp_outside_the_utc_years_goes_to_the_checker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [orjson.dumps({"event_type": "tool_call", "ts": ts, "agent": "a", "tool": "x"})
             for ts in [TS, "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z",
                        "9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59Z"]]
    assert decoded_lines(lines) == 5  # msgspec has no opinion on the UTC year
    checked = lines_checked(monkeypatch)
    fast, _ = stage_both(lines)
    assert checked == [lines[1], lines[3]]  # the typing query's check failed them
    assert fast.counts == {"tool_call": 3}
    assert [(r["reason"], r["offset"]) for r in fast.rejected] == [
        ("ts_out_of_range", sum(len(line) + 1 for line in lines[:i])) for i in (1, 3)]
    assert_same_staging(lines)


def test_a_catch_up_block_quarantines_timestamps_outside_the_utc_years(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A block long enough to decode (the stager's default): lines of every type, some at
    UTC year 0 or 10000, stage as the checker's path stages them."""
    stager = BlockStager(VALIDATOR)  # decodes from DECODE_FROM_LINES lines
    assert stager.decoder is not None
    decoded: list[int] = []
    real_decode = stager.decoder.decode

    def decode(lines: list[bytes]) -> DecodedChunk:
        decoded.append(len(lines))
        return real_decode(lines)

    monkeypatch.setattr(stager.decoder, "decode", decode)
    out = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-00:01",
           "0001-01-01T00:00:59.9999999+00:01"]
    kinds = [orjson.loads(line) for line in sample_lines()[:50]]
    lines, bad = [], []
    for i in range(DECODE_FROM_LINES + 500):
        event = kinds[i % len(kinds)] | {"event_id": f"e{i}"}
        if i % 97 == 5:
            event["ts"] = out[len(bad) % len(out)]
            bad.append(i)
        lines.append(orjson.dumps(event))
    block = b"".join(line + b"\n" for line in lines)
    staged = stager.stage(block, 0, "a.jsonl", PREFIX, 1 << 20)
    reference = CHECKER_ONLY.stage(block, 0, "a.jsonl", PREFIX, 1 << 20)
    assert decoded == [len(lines)]
    starts = [sum(len(line) + 1 for line in lines[:i]) for i in bad]
    assert [(r["reason"], r["pointer"], r["offset"]) for r in staged.rejected] == [
        ("ts_out_of_range", "/ts", start) for start in starts]
    assert sum(staged.counts.values()) == len(lines) - len(bad)
    assert len(staged.counts) >= 4
    assert staged.counts == reference.counts
    for event_type, ipc in reference.frames.items():
        assert_frame_equal(pl.read_ipc(io.BytesIO(staged.frames[event_type])),
                           pl.read_ipc(io.BytesIO(ipc)))
    assert [_without_time(r) for r in staged.rejected] == [
        _without_time(r) for r in reference.rejected]


def test_a_timestamp_the_calendar_refuses_goes_to_the_checker() -> None:
    bad = orjson.dumps({"event_type": "tool_call", "ts": "2025-04-31T00:00:00Z", "agent": "a",
                        "tool": "x"})
    good = orjson.dumps({"event_type": "tool_call", "ts": TS, "agent": "a", "tool": "x"})
    assert decoded_lines([bad, good]) == 2  # msgspec has no opinion on the calendar
    fast, _ = stage_both([good, bad, good])
    assert fast.counts == {"tool_call": 2}
    [record] = fast.rejected
    assert (record["reason"], record["offset"]) == ("schema_violation", len(good) + 1)


# --------------------------------------------------------------------------------------------
# refusing rather than guessing
# --------------------------------------------------------------------------------------------

USAGE = b'{"event_type":"agent_token_usage","ts":"' + TS.encode() + b'","agent":"a"'
PROGRESS = b'{"event_type":"task_progress","ts":"' + TS.encode() + b'","agent":"a","task":"t"'


@pytest.mark.parametrize("line", [
    USAGE + b',"task":null}',              # explicit null: the schema allows no null
    USAGE + b',"input_tokens":5.0}',       # valid, but msgspec reads no float as int
    USAGE + b',"schema_version":1.0}',
    USAGE + b',"input_tokens":-1,"input_tokens":5}',  # each duplicate is checked
    USAGE + b',"task":"a\xffb"}',          # invalid UTF-8
    USAGE + b',"cost_usd":NaN}',
    USAGE + b',"zzz":1}',
    b'{"event_type":"budget_alert","ts":"' + TS.encode() + b'","agent":"a"}',
    PROGRESS + b',"tokens_used":{"prompt":"5"}}',      # a declared field's type, per key
    PROGRESS + b',"tokens_used":{"model":7}}',
    PROGRESS + b',"tokens_used":{"cached":"x"}}',      # an extra's type
    PROGRESS + b',"metrics":{"n":1' + b"0" * 20 + b"}}",  # past 64 bits: the checker's call
    b"[1]", b"", b"{",
], ids=["null", "float_int", "float_version", "duplicate_invalid", "utf8", "nan", "unknown",
        "not_compiled", "declared_type", "declared_type_2", "extra_type", "big_int", "array",
        "empty", "torn"])
def test_decoder_leaves_what_it_cannot_vouch_for(line: bytes) -> None:
    chunk = DECODER.decode([USAGE + b"}", line])
    assert chunk.left == [1]
    assert chunk.by_type["agent_token_usage"].indexes == [0]


def test_duplicate_keys_keep_the_last_like_the_reference() -> None:
    line = USAGE + b',"input_tokens":5,"input_tokens":6,"ev\\u0065nt_id":"x"}'
    columns = DECODER.decode([line]).by_type["agent_token_usage"].columns
    reference = VALIDATOR.reference(line)
    assert isinstance(reference, Event)
    assert (columns["input_tokens"], columns["event_id"]) == ([6], ["x"])
    assert reference.data["input_tokens"] == 6


def test_objects_decode_to_dicts_and_lists_stay_lists() -> None:
    line = (PROGRESS + b',"tokens_used":{"prompt":5,"model":"m","cached":2},'
            b'"metrics":{"b":true,"n":null,"x":1.5,"i":3},"deliverables":["a","b"]}')
    reference = VALIDATOR.reference(line)
    assert isinstance(reference, Event)
    columns = DECODER.decode([line]).by_type["task_progress"].columns
    assert columns["tokens_used"] == [{"prompt": 5, "model": "m", "cached": 2}]
    assert columns["metrics"] == [reference.data["metrics"]]
    assert [type(v) for v in columns["metrics"][0].values()] == [bool, type(None), float, int]
    assert columns["deliverables"] == [["a", "b"]]


@pytest.mark.parametrize("phases", [[b"3", b'"3b"', None], [b"3", b"0", None],
                                    [b"1000000", b'"x"'], [b"7"]])
def test_phase_integers_are_stored_as_their_digits(phases: list[bytes | None]) -> None:
    """Beside strings the decoder writes the digits; in a column of integers Polars does."""
    lines = [USAGE + (b',"phase":' + phase if phase else b"") + b"}" for phase in phases]
    decoded = DECODER.decode(lines).by_type["agent_token_usage"]
    expected = [phase.decode().strip('"') if phase else None for phase in phases]
    if b'"' in b"".join(p or b"" for p in phases):
        assert decoded.columns["phase"] == expected and not decoded.integer_text
    else:
        assert decoded.integer_text == {"phase"}
    frame, failed = FrameBuilder("agent_token_usage", SCHEMAS).from_decoded(
        decoded, list(range(len(lines))), "a.jsonl", PREFIX)
    assert not failed and frame["phase"].to_list() == expected
    assert_same_staging(lines)


# --------------------------------------------------------------------------------------------
# the compiler
# --------------------------------------------------------------------------------------------

def test_every_type_but_one_compiles() -> None:
    assert set(DECODER.compiled) == set(SCHEMAS.types) - {"budget_alert"}
    with pytest.raises(NotCompilable, match="keywords"):  # its `date` format and pattern
        compile_type("budget_alert", SCHEMAS.flattened("budget_alert", 1), SCHEMAS)


BASE = SCHEMAS.flattened("tool_call", 1)


def _with(name: str, spec: Any, **top: Any) -> dict[str, Any]:
    return {**BASE, **top, "properties": {**BASE["properties"], name: spec}}


@pytest.mark.parametrize("flat", [
    _with("tool", {"type": "string", "pattern": "^x$"}),
    _with("tool", {"type": "string", "format": "email"}),
    _with("tool", {"type": "array", "items": {"type": "object"}}),
    _with("tool", {"type": "array", "items": {"type": "number"}}),
    _with("tool", {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
    _with("tool", {"type": "object", "properties": {"a": {"type": "string"}}}),
    _with("tool", {"type": "object", "properties": {"a": {"type": "integer", "maximum": 5}},
                   "additionalProperties": {"type": "integer"}}),
    _with("tool", {"type": "object", "additionalProperties": {"type": "string"},
                   "propertyNames": {"maxLength": 3}}),
    _with("tool", {"type": "object", "additionalProperties": False}),
    _with("tool", {"type": ["string", "null"]}),
    _with("tool", {"anyOf": [{"type": "integer"}, {"type": "number"}]}),
    _with("tool", {"enum": ["a", 1]}),
    _with("tool", {"const": True}),
    _with("tool", {"type": "integer", "multipleOf": 2}),
    _with("tool", {"type": "string", "minLength": 1, "not": {"const": "x"}}),
    _with("when", {"type": "string", "format": "date-time"}),  # not the envelope's timestamp
    _with("class", {"type": "string"}),
    _with("tool", {"type": "string"}, additionalProperties=True),
    _with("tool", {"type": "string"}, patternProperties={"^x": {}}),
    {**BASE, "properties": {**BASE["properties"], "event_type": {"type": "string"}}},
    _with("tool", {"anyOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]}),
    _with("tool", {"type": "object", "additionalProperties": {"type": "string",
                                                             "format": "date-time"}}),
    _with("tool", {"type": "array", "items": {"type": "string", "pattern": "^x"}}),
    _with("tool", {"type": "integer", "minimum": 1e300}),
    _with("tool", {"type": "integer", "maximum": -1e300}),
    _with("tool", {"type": "number", "maximum": 2**53 + 3}),  # a double would round it
], ids=["pattern", "format", "array_of_objects", "array_of_numbers", "unique_items",
        "declared_and_free_extras", "two_bounds_for_ints", "property_names", "empty_object",
        "nullable", "int_or_number", "mixed_enum",
        "bool_const", "multiple_of", "not", "other_date_time", "keyword_name", "open",
        "pattern_properties", "free_event_type", "nested_date_time", "date_time_values",
        "item_pattern", "minimum_past_64_bits", "maximum_below_64_bits", "inexact_bound"])
def test_what_the_compiler_refuses(flat: dict[str, Any]) -> None:
    with pytest.raises(NotCompilable):
        compile_type("tool_call", flat, SCHEMAS)


def test_compiled_struct_checks_bounds_lengths_and_enums() -> None:
    flat = _with("tool", {"enum": ["read", "write"]})
    flat = {**flat, "properties": {**flat["properties"],
                                   "output_length": {"type": "integer", "exclusiveMinimum": 2,
                                                     "maximum": 9}}}
    decode = msgspec.json.Decoder(compile_type("tool_call", flat, SCHEMAS).struct).decode
    head = b'{"event_type":"tool_call","ts":"x","agent":"a",'
    assert decode(head + b'"tool":"read","output_length":9}').output_length == 9
    for bad in [b'"tool":"exec"}', b'"tool":"read","output_length":2}',
                b'"tool":"read","output_length":10}', b'"tool":"read","agent":""}']:
        with pytest.raises(msgspec.ValidationError):
            decode(head + bad)


def test_a_type_with_two_versions_is_left_to_the_checker() -> None:
    class TwoVersions:
        types = ("tool_call",)
        envelope = SCHEMAS.envelope

        def versions(self, event_type: str) -> list[int]:
            return [1, 2]

    decoder = StructDecoder(TwoVersions())  # type: ignore[arg-type]
    assert decoder.compiled == {}
    line = b'{"event_type":"tool_call","ts":"' + TS.encode() + b'","agent":"a","tool":"x"}'
    assert decoder.decode([line]).left == [0]
