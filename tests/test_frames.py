"""pipeline.frames: typed frames from parsed and decoded events, the stage schema, stage files
written, concatenated and scanned conformed."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from conftest import event, make_home
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_events import LAKE, edge_year_timestamps, utc_seconds

from pipeline.checkpoint import Watermark
from pipeline.compactor import run_compaction
from pipeline.events import Event, Validator
from pipeline.frames import (
    SOURCE_COLUMNS,
    TS_FORMAT,
    TS_TYPE,
    FrameBuilder,
    column_type,
    concat_ipc,
    conform,
    ipc_bytes,
    scan_stage_files,
    shape_format,
    stage_schema,
    write_stage_frame,
)
from pipeline.lake import scan_events
from pipeline.schemas import load_schemas
from pipeline.stage import (
    BatchId,
    batch_name,
    iter_quarantine,
    staged_files,
)
from pipeline.structs import StructDecoder
from pipeline.tailer import Tailer

SCHEMAS = load_schemas()


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator()


def parsed(validator: Validator, *lines: bytes) -> list[dict[str, Any]]:
    """Lines through the real validator (orjson, or the reference parser for big ints)."""
    rows = []
    for line in lines:
        result = validator.validate(line)
        assert isinstance(result, Event), result
        rows.append(result.data)
    return rows


def build(event_type: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    return FrameBuilder(event_type, SCHEMAS).build(
        rows, [f"src{i}.jsonl" for i in range(len(rows))], list(range(0, 100 * len(rows), 100)))


# --------------------------------------------------------------------------------------------
# FrameBuilder: column types
# --------------------------------------------------------------------------------------------

def test_timestamps_with_mixed_offsets_become_utc(validator: Validator) -> None:
    stamps = ["2025-03-01T12:00:00Z", "2025-03-01T14:30:00+02:30", "2025-03-01T07:00:00.5-05:00",
              "2025-03-01T12:00:00.123456789+00:00", "2025-03-02T01:00:00+13:00"]
    lines = [orjson.dumps({"event_type": "agent_token_usage", "ts": ts, "agent": "a"})
             for ts in stamps]
    frame = build("agent_token_usage", parsed(validator, *lines))
    assert frame.schema["ts"] == pl.Datetime("us", "UTC")
    assert frame["ts"].to_list() == [
        datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        datetime(2025, 3, 1, 12, 0, 0, 500000, tzinfo=UTC),
        datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
    ]


def test_phase_integer_and_label_share_a_string_column(validator: Validator) -> None:
    lines = [orjson.dumps({"event_type": "agent_token_usage", "ts": "2025-03-01T12:00:00Z",
                           "agent": "a", "phase": phase}) for phase in (3, "design", 0)]
    frame = build("agent_token_usage", parsed(validator, *lines))
    assert frame.schema["phase"] == pl.String
    assert frame["phase"].to_list() == ["3", "design", "0"]


def test_float_with_zero_fraction_in_an_integer_field(validator: Validator) -> None:
    line = (b'{"event_type":"agent_token_usage","ts":"2025-03-01T12:00:00Z","agent":"a",'
            b'"input_tokens":1.0,"output_tokens":2,"cache_read_tokens":1e3}')
    frame = build("agent_token_usage", parsed(validator, line))
    assert frame.schema["input_tokens"] == pl.Int64
    assert frame.row(0, named=True)["input_tokens"] == 1
    assert frame.row(0, named=True)["cache_read_tokens"] == 1000
    assert frame.row(0, named=True)["output_tokens"] == 2


def test_tokens_used_struct_keeps_extra_counters_as_json(validator: Validator) -> None:
    line = orjson.dumps({
        "event_type": "task_progress", "ts": "2025-03-01T12:00:00Z", "agent": "gemini",
        "task": "GM-004", "status": "in_progress", "progress": 60,
        "tokens_used": {"prompt": 1000, "completion": 1500, "total": 2600, "model": "g-2",
                        "embedding_generation": 100},
        "metrics": {"rows": 5, "ratio": 0.5, "note": "ok", "done": True, "none": None},
        "tables_migrated": {"users": 10},
        "deliverables": ["a.py", "b.py"],
    })
    plain = orjson.dumps({"event_type": "task_progress", "ts": "2025-03-01T12:00:00Z",
                          "agent": "gemini", "task": "GM-005",
                          "tokens_used": {"prompt": 1, "completion": 2, "total": 3}})
    frame = build("task_progress", parsed(validator, line, plain))
    tokens = frame.schema["tokens_used"]
    assert isinstance(tokens, pl.Struct)
    assert {f.name: f.dtype for f in tokens.fields} == {
        "prompt": pl.Int64, "completion": pl.Int64, "total": pl.Int64, "model": pl.String,
        "extra": pl.String}
    first, second = frame.to_dicts()
    assert first["tokens_used"] == {"prompt": 1000, "completion": 1500, "total": 2600,
                                    "model": "g-2", "extra": '{"embedding_generation":100}'}
    assert second["tokens_used"]["extra"] is None
    assert frame.schema["metrics"] == pl.String
    assert orjson.loads(first["metrics"]) == {"rows": 5, "ratio": 0.5, "note": "ok",
                                              "done": True, "none": None}
    assert orjson.loads(first["tables_migrated"]) == {"users": 10}
    assert second["metrics"] is None
    assert first["deliverables"] == ["a.py", "b.py"]
    assert frame.schema["deliverables"] == pl.List(pl.String)
    assert first["progress"] == 60.0 and frame.schema["progress"] == pl.Float64


def test_big_integer_in_metric_data_survives_as_json_text(validator: Validator) -> None:
    big = 123456789012345678901234567890
    line = (b'{"event_type":"metric","ts":"2025-03-01T12:00:00Z","agent":"a","name":"n",'
            b'"data":{"big":' + str(big).encode() + b',"small":-1,"f":1.5}}')
    # parsed exactly (the reference parser, as the writer does); see test_tailer for the
    # fast path, where orjson turns integers past 64 bits into floats
    result = validator.reference(line)
    assert isinstance(result, Event)
    frame = build("metric", [result.data])
    assert frame.schema["data"] == pl.String
    text = frame["data"][0]
    assert str(big) in text
    assert json.loads(text) == {"big": big, "small": -1, "f": 1.5}


def test_build_attaches_source_offset_and_default_version(validator: Validator) -> None:
    lines = [orjson.dumps({"event_type": "tool_call", "ts": "2025-03-01T12:00:00Z",
                           "agent": "a", "tool": "grep", "ok": True})]
    frame = FrameBuilder("tool_call").build(parsed(validator, *lines), ["x/y.jsonl"], [42])
    row = frame.row(0, named=True)
    assert (row["_source"], row["_offset"], row["schema_version"]) == ("x/y.jsonl", 42, 1)
    assert list(frame.schema) == list(stage_schema("tool_call"))
    assert dict(frame.schema) == stage_schema("tool_call")


def test_decoded_blocks_of_different_files_keep_their_own_ids_and_sources() -> None:
    """The typing query is reused across blocks; each block's ids and source are its own."""
    builder, decoder = FrameBuilder("tool_call", SCHEMAS), StructDecoder(SCHEMAS)
    with_id = orjson.dumps({"event_type": "tool_call", "event_id": "given", "agent": "a",
                            "ts": "2025-03-01T12:00:00Z", "tool": "grep"})
    without = orjson.dumps({"event_type": "tool_call", "agent": "a",
                            "ts": "2025-03-01T12:00:00+02:00", "tool": "grep"})
    seen = []
    for lines, source, prefix in [([without, with_id], "a.jsonl", "fa:"),
                                  ([without], "b.jsonl", "fb:"),
                                  ([with_id, without], "c.jsonl", "fc:")]:
        columns = decoder.decode(lines).by_type["tool_call"]
        frame, failed = builder.from_decoded(columns, [10, 20], source, prefix)
        assert not failed and list(frame.schema) == list(stage_schema("tool_call"))
        seen.append(frame.select("event_id", "_source", "_offset").rows())
    assert seen == [[("fa:10", "a.jsonl", 10), ("given", "a.jsonl", 20)],
                    [("fb:10", "b.jsonl", 10)],
                    [("given", "c.jsonl", 10), ("fc:20", "c.jsonl", 20)]]


def polars_parse(values: list[str]) -> list[datetime | None]:
    """The reference for the typing query's timestamps: Polars' parse of TS_FORMAT."""
    return pl.Series(values, dtype=pl.String).str.to_datetime(
        TS_FORMAT, time_unit="us", time_zone="UTC", strict=False, cache=False).to_list()


def type_tool_calls(*stamps: str) -> tuple[pl.DataFrame, list[int]]:
    """tool_call lines with these timestamps, decoded and typed as a catch-up does."""
    lines = [orjson.dumps({"event_type": "tool_call", "agent": "a", "ts": ts, "tool": "t"})
             for ts in stamps]
    columns = StructDecoder(SCHEMAS).decode(lines).by_type["tool_call"]
    return FrameBuilder("tool_call", SCHEMAS).from_decoded(
        columns, list(range(0, 100 * len(lines), 100)), "a.jsonl", "f:")


timestamps = st.builds(
    lambda moment, digits, offset: (f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}"
                                    + (f".{moment:%f}{moment:%f}"[:digits + 1] if digits else "")
                                    + offset),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(0, 9), st.sampled_from(["Z", "+00:00", "-00:00", "+05:30", "-23:59"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stamps=st.lists(timestamps, min_size=1, max_size=4))
def test_decoded_timestamps_are_typed_as_ts_format_parses_them(stamps: list[str]) -> None:
    """Whatever shape comes first, and whatever shapes follow, times are TS_FORMAT's."""
    frame, failed = type_tool_calls(*stamps)
    assert not failed
    assert frame["ts"].to_list() == polars_parse(stamps)


@pytest.mark.parametrize("bad", [
    "2025-02-29T00:00:07.100Z",  # not in the calendar
    "2025-8-01T00:00:07.100Z",  # the fast parser reads these; the pattern refuses them
    "2025-08-01T00:00:7.100Z",
    " 2025-08-01T00:00:07.100Z",
    "2025-08-01T00:00:60.100Z",
    "0001-01-01T00:00:00+14:00",  # valid RFC 3339, but year 0 in UTC
    "9999-12-31T23:59:59-00:01",  # year 10000 in UTC
    "0001-01-01T00:00:59.9999999+00:01",  # 0000-12-31T23:59:59.9999999 in UTC
])
def test_a_bad_timestamp_in_a_fast_shaped_block_fails_alone(bad: str) -> None:
    frame, failed = type_tool_calls("2025-08-01T00:00:07.100Z", bad, "2025-08-01T00:00:08.250Z")
    assert failed == [1]
    assert frame["ts"].to_list() == polars_parse(["2025-08-01T00:00:07.100Z",
                                                  "2025-08-01T00:00:08.250Z"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stamps=st.lists(edge_year_timestamps(), min_size=1, max_size=6))
def test_decoded_timestamps_outside_the_utc_years_fail(stamps: list[str]) -> None:
    """The typing query's check fails a time exactly when its UTC year is outside 1-9999."""
    frame, failed = type_tool_calls(*stamps)
    assert failed == [i for i, ts in enumerate(stamps) if utc_seconds(ts) not in LAKE]
    assert frame["ts"].to_list() == polars_parse(
        [ts for ts in stamps if utc_seconds(ts) in LAKE])


@pytest.mark.parametrize(("first", "expected"), [
    ("2025-08-01T00:00:07.100Z", "%Y-%m-%dT%H:%M:%S.%3fZ"),
    ("2025-08-01T00:00:07Z", "%Y-%m-%dT%H:%M:%SZ"),
    ("2025-08-01T00:00:07.123456+00:00", "%Y-%m-%dT%H:%M:%S.%6f+00:00"),
    ("2025-08-01T00:00:07.1Z", None),  # a shape with no fast format
    ("2025-08-01T00:00:07+02:00", None),  # an offset to apply: TS_FORMAT's work
])
def test_shape_format_follows_the_first_timestamp(first: str, expected: str | None) -> None:
    assert shape_format([None, first, "2025-08-01T00:00:07+02:00"]) == expected


@pytest.mark.parametrize("event_type", SCHEMAS.types)
def test_stage_schema_covers_every_schema_property(event_type: str) -> None:
    schema = stage_schema(event_type, SCHEMAS)
    for version in SCHEMAS.versions(event_type):
        document = SCHEMAS.get(event_type, version)
        names = set(SCHEMAS.envelope["properties"]) | set(document["properties"])
        assert names <= set(schema), names - set(schema)
    assert schema["schema_version"] == pl.Int64
    assert schema["ts"] == TS_TYPE
    for name, dtype in SOURCE_COLUMNS.items():
        assert schema[name] == dtype
    assert list(schema)[-2:] == list(SOURCE_COLUMNS)


@pytest.mark.parametrize(("spec", "expected"), [
    ({"type": "string", "format": "date-time"}, TS_TYPE),
    ({"type": "integer"}, pl.Int64()),
    ({"type": "number"}, pl.Float64()),
    ({"type": "boolean"}, pl.Boolean()),
    ({"type": "string"}, pl.String()),
    ({"enum": ["a", "b"]}, pl.String()),
    ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, pl.String()),
    ({"type": "array", "items": {"type": "integer"}}, pl.List(pl.Int64())),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, pl.String()),
    ({"type": "object", "properties": {"n": {"type": "integer"}}},
     pl.Struct({"n": pl.Int64(), "extra": pl.String()})),
    ({"$ref": "envelope.v1.schema.json#/$defs/count"}, pl.Int64()),
    ({"$ref": "envelope.v1.schema.json#/$defs/timestamp"}, TS_TYPE),
])
def test_column_type(spec: dict[str, Any], expected: pl.DataType) -> None:
    assert column_type(spec, SCHEMAS) == expected


# --------------------------------------------------------------------------------------------
# conform and scan_stage_files
# --------------------------------------------------------------------------------------------

def test_conform_adds_missing_columns_as_nulls_in_schema_order() -> None:
    frame = pl.LazyFrame({"b": [1, 2], "a": ["x", "y"], "dropped": [0, 0]})
    schema = {"a": pl.String(), "b": pl.Float64(), "c": pl.Int64(), "d": pl.List(pl.String())}
    out = conform(frame, schema).collect()
    assert list(out.schema) == ["a", "b", "c", "d"]
    assert dict(out.schema) == schema
    assert out["b"].to_list() == [1.0, 2.0]
    assert out["c"].null_count() == 2 and out["d"].null_count() == 2


def _stage_frame(ids: list[str], batch_source: str = "a.jsonl") -> pl.DataFrame:
    rows = [{"event_type": "tool_call", "ts": "2025-03-01T12:00:00Z", "agent": "a",
             "event_id": event_id, "tool": "t"} for event_id in ids]
    return FrameBuilder("tool_call").build(rows, [batch_source] * len(ids),
                                           list(range(len(ids))))


STREAM, EARLIER = "5eed", "01d"


def _scan(stage_dir: Path, up_to: int,
          schema: dict[str, pl.DataType] | None = None) -> pl.LazyFrame | None:
    files = [path for _, path in staged_files(stage_dir, "tool_call", Watermark(STREAM, up_to))]
    return scan_stage_files(files, schema)


def test_staged_files_are_committed_batches_only(tmp_path: Path) -> None:
    stage_dir = tmp_path / "stage"
    assert _scan(stage_dir, up_to=10) is None
    for batch in (1, 2, 3):
        write_stage_frame(stage_dir, BatchId(STREAM, batch),
                          _stage_frame([f"e{batch}a", f"e{batch}b"]))
    scan = _scan(stage_dir, up_to=2)
    assert scan is not None
    assert sorted(scan.collect()["event_id"].to_list()) == ["e1a", "e1b", "e2a", "e2b"]
    assert _scan(stage_dir, up_to=0) is None
    # a batch of an earlier stream was committed under a checkpoint since replaced
    write_stage_frame(stage_dir, BatchId(EARLIER, 9), _stage_frame(["e9a"]))
    earlier = _scan(stage_dir, up_to=1)
    assert earlier is not None
    assert sorted(earlier.collect()["event_id"].to_list()) == ["e1a", "e1b", "e9a"]
    assert [b for b, _ in staged_files(stage_dir, "tool_call", Watermark(STREAM, 3))] == [
        BatchId(EARLIER, 9), BatchId(STREAM, 1), BatchId(STREAM, 2), BatchId(STREAM, 3)]


def test_scan_conforms_batches_with_different_columns(tmp_path: Path) -> None:
    stage_dir = tmp_path / "stage"
    write_stage_frame(stage_dir, BatchId(STREAM, 1),
                      _stage_frame(["old"]).drop("duration_ms", "ok"))
    write_stage_frame(stage_dir, BatchId(STREAM, 2), _stage_frame(["new"]))
    schema = stage_schema("tool_call")
    scan = _scan(stage_dir, up_to=2, schema=schema)
    assert scan is not None
    frame = scan.collect()
    assert dict(frame.schema) == schema
    assert frame.height == 2


def test_stage_frame_round_trips_through_ipc(tmp_path: Path) -> None:
    frame = _stage_frame(["a", "b"])
    path = write_stage_frame(tmp_path, BatchId(STREAM, 7), frame)
    assert path == tmp_path / "tool_call" / batch_name(BatchId(STREAM, 7), "arrow")
    assert path.name == f"b000000000007-{STREAM}.arrow"
    assert pl.read_ipc(path).equals(frame)


def test_concat_ipc_joins_bytes_and_files_in_order(tmp_path: Path) -> None:
    first, second = _stage_frame(["a", "b"]), _stage_frame(["c"], batch_source="b.jsonl")
    part = tmp_path / ".part-1.tmp"
    part.write_bytes(ipc_bytes(second))
    joined = pl.read_ipc(io.BytesIO(concat_ipc([ipc_bytes(first), part, ipc_bytes(first)])))
    assert joined.equals(pl.concat([first, second, first]))


# --------------------------------------------------------------------------------------------
# end to end: a time the lake cannot hold is quarantined, never staged
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("valid_lines", [6, 2500], ids=["checker", "decoded"])
def test_a_time_outside_the_utc_years_is_quarantined_and_compaction_succeeds(
        tmp_path: Path, valid_lines: int) -> None:
    """Before, such a line was staged and every compaction failed on it (issue 18)."""
    home = make_home(tmp_path / "home")
    others = [
        {"event_type": "tool_call", "ts": "2025-03-01T12:00:00Z", "agent": "a", "tool": "t"},
        {"event_type": "metric", "ts": "0001-01-01T00:00:00Z", "agent": "a", "name": "n"},
        {"event_type": "task_progress", "ts": "9999-12-31T10:00:00+14:00", "agent": "a",
         "task": "T-1"},
    ]
    usages = [event(ts="0001-01-01T00:00:00-14:00" if i % 2 else "2025-03-01T12:00:00+14:00")
              for i in range(valid_lines)]
    year_zero = event(ts="0001-01-01T00:00:00+14:00")
    lines = [orjson.dumps(e) + b"\n" for e in [*usages[:3], *others, year_zero, *usages[3:]]]
    (home.logs / "a.jsonl").write_bytes(b"".join(lines))
    with Tailer(home) as tailer:
        tailer.poll()
    run_compaction(home)
    lake = scan_events(home, "agent_token_usage")
    assert lake is not None
    assert sorted(lake.collect()["event_id"]) == sorted(e["event_id"] for e in usages)
    for other in others:
        assert scan_events(home, other["event_type"]).collect().height == 1  # type: ignore[union-attr]
    [record] = iter_quarantine(home.quarantine)
    assert (record["reason"], record["pointer"]) == ("ts_out_of_range", "/ts")
    assert record["offset"] == sum(map(len, lines[:6]))
    assert record["length"] == len(lines[6]) - 1
    assert record["message"] == ("ts 0001-01-01T00:00:00+14:00 is 0000-12-31T10:00:00 in UTC, "
                                 "outside years 1-9999")
