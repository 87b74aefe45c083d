"""pipeline.lake read path on homes that have only a stage (no compaction yet): scan_events reads
committed batches only, conforms them to the stage schema, and counts each event_id once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from conftest import event, event_line

from pipeline.checkpoint import CHECKPOINT, Checkpoint, load_checkpoint, save_checkpoint
from pipeline.config import Home
from pipeline.dedupe import dedupe
from pipeline.frames import FrameBuilder, stage_schema, write_stage_frame
from pipeline.lake import scan_events
from pipeline.stage import BatchId
from pipeline.tailer import Tailer

USAGE = "agent_token_usage"


def tail(home: Home) -> None:
    with Tailer(home) as tailer:
        tailer.poll()


def append(path: Path, *lines: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(b"".join(lines))


def collect(home: Home, event_type: str = USAGE) -> pl.DataFrame:
    frame = scan_events(home, event_type)
    assert frame is not None
    return frame.collect()


def stage_batch(home: Home, batch: int, event_type: str, rows: list[dict[str, Any]],
                source: str = "hand.jsonl", commit: bool = True) -> None:
    """Write one stage batch by hand (as the tailer would) in the checkpoint's stream,
    optionally moving the watermark."""
    frame = FrameBuilder(event_type).build([dict(r) for r in rows], [source] * len(rows),
                                           [i * 100 for i in range(len(rows))])
    checkpoint = load_checkpoint(home.state)
    if not (home.state / CHECKPOINT).exists():  # a fresh checkpoint's stream is new each load
        save_checkpoint(home.state, checkpoint)
    write_stage_frame(home.stage, BatchId(checkpoint.stream, batch), frame)
    if commit:
        checkpoint.batch = max(checkpoint.batch, batch)
        save_checkpoint(home.state, checkpoint)


def test_nothing_staged_gives_none(home: Home) -> None:
    assert scan_events(home, USAGE) is None
    append(home.logs / "a.jsonl", event_line())
    tail(home)
    assert scan_events(home, "tool_call") is None
    assert scan_events(home, USAGE) is not None


def test_staged_events_are_read_with_the_stage_schema(home: Home) -> None:
    lines = [event_line(input_tokens=n) for n in range(5)]
    append(home.logs / "a.jsonl", *lines[:3])
    tail(home)
    append(home.logs / "a.jsonl", *lines[3:])
    tail(home)
    frame = collect(home)
    assert dict(frame.schema) == {**stage_schema(USAGE), "host": pl.String()}
    assert frame["host"].to_list() == [home.host] * 5  # staged on this host
    assert sorted(frame["event_id"].to_list()) == sorted(
        orjson.loads(line)["event_id"] for line in lines)
    assert sorted(frame["input_tokens"].to_list()) == [0, 1, 2, 3, 4]


def test_batches_above_the_watermark_are_invisible(home: Home) -> None:
    committed = [event(), event()]
    stage_batch(home, 1, USAGE, committed)
    stage_batch(home, 2, USAGE, [event()], commit=False)  # written, checkpoint not yet moved
    assert sorted(collect(home)["event_id"].to_list()) == sorted(e["event_id"]
                                                                 for e in committed)
    stream = load_checkpoint(home.state).stream
    save_checkpoint(home.state, Checkpoint(batch=2, stream=stream))
    assert collect(home).height == 3


def test_the_same_event_id_in_two_files_counts_once(home: Home) -> None:
    line = event_line()
    append(home.logs / "a.jsonl", line)
    append(home.logs / "b.jsonl", line)  # a producer retry into another file
    tail(home)
    frame = collect(home)
    assert frame.height == 1
    assert frame["_source"].to_list() == ["a.jsonl"]


def test_token_usage_duplicate_keeps_the_largest_total(home: Home) -> None:
    small = event(event_id="dup", input_tokens=10, output_tokens=5)
    large = event(event_id="dup", input_tokens=10, output_tokens=50, cache_read_tokens=None)
    nulls = event(event_id="dup", input_tokens=None, output_tokens=None)
    other = event(event_id="solo", input_tokens=1, output_tokens=1)
    stage_batch(home, 1, USAGE, [small, other])
    stage_batch(home, 2, USAGE, [nulls, large])
    frame = collect(home).sort("event_id")
    assert frame["event_id"].to_list() == ["dup", "solo"]
    assert frame.row(0, named=True)["output_tokens"] == 50


def test_token_usage_tie_is_broken_by_source_and_offset(home: Home) -> None:
    first = event(event_id="tie", input_tokens=5, output_tokens=5, agent="first")
    second = event(event_id="tie", input_tokens=5, output_tokens=5, agent="second")
    stage_batch(home, 1, USAGE, [second], source="z.jsonl")
    stage_batch(home, 2, USAGE, [first], source="a.jsonl")
    assert collect(home)["agent"].to_list() == ["first"]


def test_other_types_keep_the_first_staged_copy(home: Home) -> None:
    base = {"event_type": "tool_call", "ts": "2025-03-01T12:00:00Z", "event_id": "t1",
            "tool": "grep"}
    stage_batch(home, 1, "tool_call", [{**base, "agent": "early", "duration_ms": 5}])
    stage_batch(home, 2, "tool_call", [{**base, "agent": "late", "duration_ms": 9}])
    frame = collect(home, "tool_call")
    assert frame["agent"].to_list() == ["early"]


def test_dedupe_is_a_pure_lazy_function() -> None:
    frame = pl.LazyFrame({
        "event_id": ["a", "a", "b"], "input_tokens": [1, 2, 3], "output_tokens": [0, 0, None],
        "cache_read_tokens": [None, None, None], "cache_write_tokens": [0, 0, 0],
        "_source": ["s", "s", "s"], "_offset": [0, 1, 2]})
    out = dedupe(frame, USAGE)
    assert isinstance(out, pl.LazyFrame)
    rows = out.collect().sort("event_id").select("event_id", "input_tokens").rows()
    assert rows == [("a", 2), ("b", 3)]


@pytest.mark.parametrize("event_type", ["task_progress", "metric", "context_compiled"])
def test_every_type_reads_back_from_a_stage_only_home(home: Home, event_type: str) -> None:
    bodies = {
        "task_progress": {"task": "T-1", "status": "completed", "progress": 100,
                          "tokens_used": {"prompt": 1, "completion": 2, "total": 3, "x": 4}},
        "metric": {"name": "latency", "data": {"p50": 1.5, "ok": True}},
        "context_compiled": {"prefix_bytes": 10, "volatile_bytes": 5, "prefix_hash": "h",
                             "input_tokens_estimate": 4},
    }
    line = orjson.dumps({"event_type": event_type, "ts": "2025-03-01T12:00:00+01:00",
                         "agent": "a", "event_id": "only", **bodies[event_type]}) + b"\n"
    append(home.logs / "a.jsonl", line, line)
    tail(home)
    frame = collect(home, event_type)
    assert frame.height == 1
    assert dict(frame.schema) == {**stage_schema(event_type), "host": pl.String()}
    assert str(frame["ts"][0]) == "2025-03-01 11:00:00+00:00"
