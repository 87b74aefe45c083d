"""pipeline.compactor and pipeline.lake: stage -> Delta tables, exactly once (DESIGN.md 1, 6, 7).

Every test works on a real home in tmp_path: lines are appended under logs/, staged by
the real `Tailer`, compacted into real Delta tables, and read back with polars, pyarrow
and DuckDB. Each `tail()` call makes one tailer batch, so batch numbers are predictable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import stderr_on_a_terminal
from deltalake import DeltaTable

import pipeline.files
from pipeline import compactor
from pipeline.checkpoint import read_watermark
from pipeline.cli import main
from pipeline.commit_plan import file_rows
from pipeline.compactor import (
    add_partition_date,
    optimize_lake,
    run_compaction,
    vacuum_lake,
)
from pipeline.config import Home, init_home, load_home
from pipeline.errors import LakeError
from pipeline.events import Validator
from pipeline.id_index import index_dir
from pipeline.lake import scan_events
from pipeline.ledger import app_id, open_table, stream_batch, table_path
from pipeline.maintenance import RUN_MARKER
from pipeline.schemas import SchemaSet, load_schemas, schema_dir
from pipeline.stage import BatchId, batch_id, batch_name, staged_files
from pipeline.tailer import PollResult, Tailer
from tests.s3 import MotoServer, shared_lake_home

REPO = Path(__file__).resolve().parent.parent
TALLY = str(Path(sys.executable).with_name("tally"))
USAGE = "agent_token_usage"
PROGRESS = "task_progress"
SUMMARY = re.compile(r"^compact: (?P<events>[\d,]+) events in (?P<commits>\d+) commit\(s\), "
                     r"(?P<partitions>\d+) partition\(s\) touched, (?P<seconds>[\d.]+) s "
                     r"\((?P<rate>[\d,]+) events/s\)$", re.MULTILINE)


# ------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TALLY_HOME", "TALLY_DEBUG", "TALLY_FAULT"):
        monkeypatch.delenv(name, raising=False)


def make_home(root: Path, config: str = "") -> Home:
    init_home(root)
    if config:
        (root / "config.toml").write_text(config, encoding="utf-8")
    return load_home(root)


def usage(event_id: str, ts: str, *, agent: str = "claude", input_tokens: int = 100,
          output_tokens: int = 10, **extra: Any) -> dict[str, Any]:
    return {"event_type": USAGE, "event_id": event_id, "ts": ts, "agent": agent,
            "input_tokens": input_tokens, "output_tokens": output_tokens, **extra}


def progress(event_id: str, ts: str, **extra: Any) -> dict[str, Any]:
    return {"event_type": PROGRESS, "event_id": event_id, "ts": ts, "agent": "gemini",
            "task": "GM-004", **extra}


def append(home: Home, name: str, events: list[dict[str, Any]]) -> None:
    home.logs.mkdir(parents=True, exist_ok=True)
    with open(home.logs / name, "ab") as handle:
        for event in events:
            handle.write(orjson.dumps(event) + b"\n")


def tail(home: Home, validator: Validator | None = None) -> PollResult:
    with Tailer(home, validator=validator) as tailer:
        return tailer.poll()


def day_events(prefix: str, days: list[str], per_day: int) -> list[dict[str, Any]]:
    """`per_day` usage events on each day, with distinct ids and token counts."""
    return [usage(f"{prefix}-{d}-{i}", f"{d}T{i % 24:02d}:{i % 60:02d}:00Z",
                  agent=f"agent-{i % 3}", input_tokens=1000 + i, output_tokens=i)
            for d in days for i in range(per_day)]


def lake(home: Home, event_type: str = USAGE) -> pl.DataFrame:
    """The raw table (no dedupe), one row per stored row."""
    return pl.read_delta(str(table_path(home, event_type)))


def events(home: Home, event_type: str = USAGE,
           schemas: SchemaSet | None = None) -> pl.DataFrame:
    """What every reader sees: lake + stage, deduped, sorted by event_id."""
    frame = scan_events(home, event_type, schemas)
    assert frame is not None
    return frame.collect().sort("event_id")


def table(home: Home, event_type: str = USAGE) -> DeltaTable:
    found = open_table(table_path(home, event_type))
    assert found is not None
    return found


def stream_of(home: Home) -> str:
    """The stream of the home's tailer batches."""
    return read_watermark(home.state).stream


def lake_batch(home: Home, event_type: str = USAGE) -> int:
    """The highest batch of the home's stream that the type's table holds."""
    return stream_batch(table(home, event_type), stream_of(home), home.host)


def stage_files(home: Home, event_type: str = USAGE) -> list[Path]:
    directory = home.stage / event_type
    return sorted(directory.glob("*.arrow")) if directory.is_dir() else []


def live_files(home: Home, event_type: str = USAGE) -> set[Path]:
    return {Path(uri.removeprefix("file://")) for uri in table(home, event_type).file_uris()}


def parquet_on_disk(home: Home, event_type: str = USAGE) -> set[Path]:
    return set(table_path(home, event_type).path.rglob("*.parquet"))


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


# ------------------------------------------------------------------------------- layout


def test_partition_date_is_the_utc_date() -> None:
    frame = pl.LazyFrame({"ts": ["2025-08-01T23:30:00-05:00", "2025-08-02T00:30:00+02:00"]})
    frame = frame.with_columns(pl.col("ts").str.to_datetime(time_unit="us", time_zone="UTC"))
    dates = add_partition_date(frame).collect()["date"].to_list()
    assert dates == [date(2025, 8, 2), date(2025, 8, 1)]


def test_compaction_writes_zstd_parquet_partitioned_by_utc_date(home: Home) -> None:
    append(home, "a.jsonl", [
        usage("late-evening-chicago", "2025-08-01T23:30:00-05:00"),   # 2025-08-02 04:30 UTC
        usage("early-morning-berlin", "2025-08-02T00:30:00+02:00"),   # 2025-08-01 22:30 UTC
        usage("plain-utc", "2025-08-03T12:00:00Z"),
    ])
    tail(home)
    result = run_compaction(home)
    assert (result.events, result.commits) == (3, 1)
    assert result.partitions == {(USAGE, "2025-08-01"), (USAGE, "2025-08-02"),
                                 (USAGE, "2025-08-03")}

    root = table_path(home, USAGE).path
    assert root == home.lake / USAGE
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("date=")) == [
        "date=2025-08-01", "date=2025-08-02", "date=2025-08-03"]
    expected = {"late-evening-chicago": "2025-08-02", "early-morning-berlin": "2025-08-01",
                "plain-utc": "2025-08-03"}
    files = live_files(home)
    assert files and all(f.parent.parent == root for f in files)
    for file in files:
        partition = file.parent.name.removeprefix("date=")
        parquet = pq.ParquetFile(file)
        codecs = {parquet.metadata.row_group(g).column(c).compression
                  for g in range(parquet.metadata.num_row_groups)
                  for c in range(parquet.metadata.num_columns)}
        assert codecs == {"ZSTD"}, f"{file}: {codecs}"
        for event_id in parquet.read(columns=["event_id"])["event_id"].to_pylist():
            assert expected.pop(event_id) == partition
    assert expected == {}

    rows = {r["event_id"]: r for r in lake(home).to_dicts()}
    assert rows["late-evening-chicago"]["ts"] == datetime(2025, 8, 2, 4, 30, tzinfo=UTC)
    assert rows["late-evening-chicago"]["date"] == date(2025, 8, 2)
    assert rows["early-morning-berlin"]["date"] == date(2025, 8, 1)


def test_typed_columns(home: Home) -> None:
    append(home, "a.jsonl", [
        usage("u1", "2025-08-01T10:00:00Z", phase=3, cache_read_tokens=7, cost_usd=0.25),
        usage("u2", "2025-08-01T11:00:00Z", phase="review", reasoning_tokens=5),
        progress("p1", "2025-08-01T12:00:00Z", status="in_progress", progress=60,
                 deliverables=["schema.sql", "api.py"], metrics={"coverage": 0.9, "ok": True},
                 tokens_used={"prompt": 1000, "completion": 1500, "total": 2600,
                              "model": "gpt-5", "embedding_generation": 100}),
    ])
    tail(home)
    run_compaction(home)

    schema = pa.schema(table(home, USAGE).schema().to_arrow())
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    for column in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                   "reasoning_tokens", "cache_write_1h_tokens", "schema_version"):
        assert schema.field(column).type == pa.int64(), column
    assert schema.field("phase").type in (pa.string(), pa.large_string(), pa.string_view())
    assert schema.field("cost_usd").type == pa.float64()
    assert schema.field("date").type == pa.date32()
    assert table(home, USAGE).metadata().partition_columns == ["date"]
    assert dict(zip(*lake(home).select("event_id", "phase"), strict=True)) == {
        "u1": "3", "u2": "review"}

    progress_schema = pa.schema(table(home, PROGRESS).schema().to_arrow())
    tokens = progress_schema.field("tokens_used").type
    assert pa.types.is_struct(tokens)
    assert {tokens.field(n).type for n in ("prompt", "completion", "total")} == {pa.int64()}
    deliverables = progress_schema.field("deliverables").type
    assert pa.types.is_list(deliverables) or pa.types.is_large_list(deliverables)
    row = lake(home, PROGRESS).row(0, named=True)
    assert row["deliverables"] == ["schema.sql", "api.py"]
    assert row["tokens_used"]["prompt"] == 1000 and row["tokens_used"]["total"] == 2600
    assert row["tokens_used"]["model"] == "gpt-5"
    assert json.loads(row["tokens_used"]["extra"]) == {"embedding_generation": 100}
    assert json.loads(row["metrics"]) == {"coverage": 0.9, "ok": True}  # free-form map: JSON
    assert row["progress"] == 60.0


def test_every_staged_type_gets_its_own_table(home: Home) -> None:
    from bench.generate import write_log

    write_log(home.logs / "gen.jsonl", 3000, seed=5, days=3)
    tail(home)
    staged = {t.name: pl.scan_ipc(stage_files(home, t.name)).select(pl.len()).collect().item()
              for t in home.stage.iterdir() if stage_files(home, t.name)}
    assert len(staged) >= 4 and sum(staged.values()) == 3000
    result = run_compaction(home)
    assert result.events == 3000
    assert {t: lake(home, t).height for t in staged} == staged
    assert result.partitions == {(t, str(d)) for t in staged
                                 for d in lake(home, t)["ts"].dt.date().unique()}
    assert {p for _, p in result.partitions} >= {"2025-08-01", "2025-08-02", "2025-08-03"}


# ------------------------------------------------------------------------------- exactly once


def test_stage_files_removed_after_commit_and_rerun_is_a_no_op(home: Home) -> None:
    append(home, "a.jsonl", day_events("a", ["2025-08-01", "2025-08-02"], 20))
    tail(home)
    assert len(stage_files(home)) == 1
    first = run_compaction(home)
    assert (first.events, first.files_removed) == (40, 1)
    assert stage_files(home) == []
    version = table(home).version()

    again = run_compaction(home)
    assert (again.events, again.commits, again.files_removed) == (0, 0, 0)
    assert again.partitions == set()
    assert table(home).version() == version
    assert lake(home).height == 40


def test_transaction_version_is_the_highest_batch_of_each_commit(home: Home) -> None:
    for cycle in range(3):
        append(home, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01"], 10))
        tail(home)
    append(home, "b.jsonl", [progress("only-progress", "2025-08-01T00:00:00Z")])
    tail(home)  # batch 4 holds no token usage
    stream = stream_of(home)
    assert read_watermark(home.state) == (stream, 4)

    result = run_compaction(home, rows_per_commit=1)  # one batch per commit
    assert result.commits == 3 + 1
    usage_table = table(home, USAGE)
    assert usage_table.transaction_version(app_id(stream, home.host)) == 3 == lake_batch(home)
    assert lake_batch(home, PROGRESS) == 4
    batches = sorted(int(h["tally.batch"]) for h in usage_table.history()
                     if h.get("operation") == "WRITE")
    assert batches == [1, 2, 3]

    # Several batches in one commit: the commit records the highest.
    other = make_home(home.root.parent / "other")
    for cycle in range(3):
        append(other, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01"], 10))
        tail(other)
    assert run_compaction(other).commits == 1
    assert lake_batch(other) == 3


def test_batches_already_committed_are_deleted_not_written_again(home: Home,
                                                                  tmp_path: Path) -> None:
    """A kill after the commit but before the cleanup: the next run only cleans up."""
    for cycle in range(3):
        append(home, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01", "2025-08-02"], 15))
        tail(home)
    saved = tmp_path / "saved"
    shutil.copytree(home.stage, saved)
    run_compaction(home, rows_per_commit=30)
    version, rows = table(home).version(), lake(home).height
    assert rows == 90 and stage_files(home) == []

    shutil.rmtree(home.stage)
    shutil.copytree(saved, home.stage)  # the stage as the kill left it
    assert len(stage_files(home)) == 3
    assert events(home).height == 90  # readers already skip batches <= the recorded one
    again = run_compaction(home)
    assert (again.events, again.commits, again.files_removed) == (0, 0, 3)
    assert stage_files(home) == []
    assert table(home).version() == version
    assert lake(home)["event_id"].value_counts().get_column("count").max() == 1

    # Only the first commit made it: its batches are skipped, the rest are written.
    partial = make_home(tmp_path / "partial")
    for cycle in range(3):
        append(partial, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01"], 15))
        tail(partial)
    files = stage_files(partial)
    kept = tmp_path / "kept.arrow"
    shutil.copy(files[0], kept)
    files[1].rename(files[1].with_suffix(".hold"))
    files[2].rename(files[2].with_suffix(".hold"))
    run_compaction(partial)  # commits batch 1 alone
    shutil.copy(kept, files[0])
    for file in files[1:]:
        file.with_suffix(".hold").rename(file)
    result = run_compaction(partial)
    assert result.events == 30 and lake_batch(partial) == 3
    counts = lake(partial)["event_id"].value_counts()
    assert counts.height == 45 and counts["count"].max() == 1


def test_a_failed_deletion_is_reported_and_the_next_run_finishes_it(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    for cycle in range(3):
        append(home, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01"], 10))
        tail(home)

    def refuse(*_: Any) -> None:
        raise PermissionError("stage directory is read-only")

    monkeypatch.setattr(compactor, "_remove", refuse)
    with pytest.raises(LakeError, match=r"could not be deleted.*read-only") as raised:
        run_compaction(home, rows_per_commit=10)
    assert "in the lake already" in str(raised.value)
    assert lake(home).height == 30 and len(stage_files(home)) == 3  # committed, not deleted
    monkeypatch.undo()
    again = run_compaction(home)
    assert (again.events, again.files_removed) == (0, 3)
    assert stage_files(home) == [] and events(home).height == 30


def test_stage_files_are_counted_the_way_polars_reads_them(home: Home) -> None:
    for cycle, per_day in enumerate((1, 7, 40)):
        append(home, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01", "2025-08-03"], per_day))
        tail(home)
    one = stage_files(home)[-1]
    parts = pl.read_ipc(one)
    several = one.with_name(batch_name(BatchId(stream_of(home), 99), "arrow"))  # 3 batches
    table = parts.rechunk().to_arrow()
    with pa.ipc.new_file(str(several), table.schema) as writer:
        for start in (0, 5, 30):
            writer.write_table(table.slice(start, 25 if start < 30 else None))
    assert pa.ipc.open_file(str(several)).num_record_batches == 3
    for path in stage_files(home):
        assert file_rows(path) == pl.read_ipc(path).height
    assert file_rows(several) == pl.read_ipc(several).height == 25 + 25 + parts.height - 30


def test_a_kill_at_the_fault_points_loses_and_duplicates_nothing(home: Home) -> None:
    """Real SIGKILLs through the TALLY_FAULT hook, then a clean run."""
    for cycle in range(4):
        append(home, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01", "2025-08-02"], 10))
        tail(home)
    ids = set(events(home)["event_id"])
    base = [TALLY, "compact", "--home", str(home.root), "--rows-per-commit", "20"]
    batches = {"compact:before_write:2": [2, 3, 4],  # batch 1 committed and cleaned up
               "compact:after_commit:2": [3, 4]}     # batch 3 committed, not cleaned up
    for fault, left in batches.items():
        env = {**os.environ, "TALLY_FAULT": fault}
        killed = subprocess.run(base, env=env, capture_output=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        found = {batch_id(p) for p in stage_files(home)}
        # The files of a batch the lake holds may be deleted or not yet (in the background).
        committed = {BatchId(stream_of(home), n) for n in range(1, lake_batch(home) + 1)}
        assert {BatchId(stream_of(home), n) for n in left} <= found
        assert found - {BatchId(stream_of(home), n) for n in left} <= committed
    assert lake_batch(home) == 3
    assert events(home)["event_id"].is_unique().all() and set(events(home)["event_id"]) == ids
    done = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = lake(home)["event_id"].value_counts()
    assert set(counts["event_id"]) == ids and counts["count"].max() == 1
    assert stage_files(home) == []


def test_files_written_but_never_committed_are_invisible_and_removed(home: Home) -> None:
    append(home, "a.jsonl", day_events("a", ["2025-08-01"], 30))
    tail(home)
    run_compaction(home)
    (live,) = live_files(home)
    orphan = live.with_name("part-00000-00000000-dead-beef-0000-000000000000-c000.zstd.parquet")
    shutil.copy(live, orphan)  # what a compaction killed inside write_deltalake leaves,
    (home.state / RUN_MARKER).touch()  # with its run's marker
    assert lake(home).height == 30 and events(home).height == 30
    append(home, "a.jsonl", day_events("b", ["2025-08-01"], 5))
    tail(home)
    result = run_compaction(home)  # newer than the last commit: the next run deletes it
    assert (result.events, result.uncommitted_files_removed) == (5, 1)
    assert not orphan.exists()
    assert lake(home).height == 35
    # Only the files the automatic merge of the day replaced are left to delete.
    assert result.optimized == {USAGE: 2}
    assert vacuum_lake(home, retention_hours=0)[USAGE] == 2
    assert parquet_on_disk(home) == live_files(home)
    assert lake(home).height == 35


# ------------------------------------------------------------------------------- readers


def test_readers_see_the_same_rows_before_during_and_after_compaction(home: Home) -> None:
    days = ["2025-08-01", "2025-08-02", "2025-08-03"]
    for cycle in range(5):
        append(home, "a.jsonl", day_events(f"c{cycle}", days, 12))
        append(home, "b.jsonl", [progress(f"p{cycle}", "2025-08-02T10:00:00Z",
                                          tokens_used={"prompt": cycle, "total": cycle})])
        tail(home)
    before = {t: events(home, t) for t in (USAGE, PROGRESS)}
    assert before[USAGE].height == 5 * 36
    assert set(before[USAGE].columns) >= {"event_id", "ts", "input_tokens", "_source"}
    seen: list[int] = []

    def check(done: int, total: int) -> None:  # runs between commits: lake + stage mixed
        seen.append(done)
        assert events(home, USAGE).equals(before[USAGE])

    result = run_compaction(home, progress=check, rows_per_commit=36)
    assert len(seen) == result.commits >= 5
    assert seen[-1] == 5 * 36 + 5
    for event_type, frame in before.items():
        assert events(home, event_type).equals(frame), event_type
    assert stage_files(home) == []


def test_a_compaction_between_table_and_stage_reads_loses_nothing(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.lake

    for cycle in range(3):
        append(home, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01"], 10))
        tail(home)
    assert events(home).height == 30
    real_open = pipeline.lake.open_table
    fired: list[bool] = []

    def open_then_compact(path: Path) -> DeltaTable | None:
        found = real_open(path)
        if not fired:  # another process compacts right after this reader took its snapshot
            fired.append(True)
            run_compaction(home)
        return found

    monkeypatch.setattr(pipeline.lake, "open_table", open_then_compact)
    frame = scan_events(home, USAGE)
    assert fired and frame is not None
    assert frame.collect().height == 30


class _OneCommitDone(Exception):
    pass


def _stop_after_first_commit(done: int, total: int) -> None:
    raise _OneCommitDone


def test_a_reader_survives_a_commit_during_every_read_attempt(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.lake

    for cycle in range(8):
        append(home, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01"], 10))
        tail(home)
    real_open = pipeline.lake.open_table
    commits: list[int] = []

    def open_then_one_commit(path: Path) -> DeltaTable | None:
        found = real_open(path)
        with contextlib.suppress(_OneCommitDone):  # another process commits one batch
            run_compaction(home, rows_per_commit=1, progress=_stop_after_first_commit)
        commits.append(1)
        return found

    monkeypatch.setattr(pipeline.lake, "open_table", open_then_one_commit)
    frame = scan_events(home, USAGE)
    assert frame is not None and commits
    assert frame.collect()["event_id"].n_unique() == 80


def test_duplicate_event_ids_count_once_keeping_the_largest_total(home: Home) -> None:
    ts = "2025-08-01T10:00:00Z"
    # Within one batch: a producer retry with more tokens.
    append(home, "a.jsonl", [usage("retry", ts, input_tokens=100),
                             usage("retry", ts, input_tokens=5000),
                             usage("single", ts),
                             progress("p-dup", ts, progress=10),
                             progress("p-dup", ts, progress=10)])
    tail(home)
    frame = events(home)
    assert frame["event_id"].to_list() == ["retry", "single"]
    assert frame.filter(pl.col("event_id") == "retry")["input_tokens"].item() == 5000
    assert events(home, PROGRESS).height == 1
    run_compaction(home)
    written = lake(home)  # the rule is kept on write: the lake holds each event_id once
    assert sorted(written["event_id"]) == ["retry", "single"]
    assert written.filter(pl.col("event_id") == "retry")["input_tokens"].item() == 5000
    assert lake(home, PROGRESS).height == 1

    # Across lake and stage, whichever side holds the larger total wins.
    append(home, "a.jsonl", [usage("lake-wins", ts, input_tokens=900),
                             usage("stage-wins", ts, input_tokens=10)])
    tail(home)
    run_compaction(home)
    append(home, "a.jsonl", [usage("lake-wins", ts, input_tokens=20),
                             usage("stage-wins", ts, input_tokens=700),
                             usage("retry", ts, input_tokens=1)])
    tail(home)
    for stage_pending in (True, False):
        assert bool(stage_files(home)) is stage_pending
        frame = events(home)
        assert frame["event_id"].to_list() == ["lake-wins", "retry", "single", "stage-wins"]
        tokens = dict(zip(*frame.select("event_id", "input_tokens"), strict=True))
        assert tokens == {"lake-wins": 900, "retry": 5000, "single": 100, "stage-wins": 700}
        run_compaction(home)
    written = lake(home)
    assert written["event_id"].n_unique() == written.height == 4  # once each, in the lake too
    tokens = dict(zip(*written.select("event_id", "input_tokens"), strict=True))
    assert tokens == {"lake-wins": 900, "retry": 5000, "single": 100, "stage-wins": 700}


def test_duplicates_arriving_months_later_replace_their_row_or_add_nothing(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    def rows(frame: pl.DataFrame) -> set[tuple[Any, ...]]:
        return set(frame.select("event_id", "_source", "_offset", "date").iter_rows())

    january = [usage(f"jan-{i}", f"2025-01-{10 + i % 3}T08:00:{i:02d}Z", input_tokens=100 + i)
               for i in range(12)]
    no_id = {k: v for k, v in usage("-", "2025-01-11T09:00:00Z").items() if k != "event_id"}
    append(home, "agent-jan.jsonl", [*january, no_id, progress("jan-p", "2025-01-12T10:00:00Z",
                                                                progress=40)])
    assert tail(home).staged == 14
    run_compaction(home)
    before, progress_before = lake(home), lake(home, PROGRESS)
    assert before.height == 13 and progress_before.height == 1
    # The log is rotated away; a week later the tailer forgets the file (its identity and
    # offset: FORGET_AFTER_SECONDS), which it keeps in mind until its next commit.
    saved = (home.logs / "agent-jan.jsonl").read_bytes()
    (home.logs / "agent-jan.jsonl").unlink()
    monkeypatch.setattr(pipeline.files, "FORGET_AFTER_SECONDS", 0)
    with Tailer(home) as tailer:
        tailer.poll()
        assert tailer.checkpoint.files == {}
        # June: the old log comes back from a backup under another name (one that sorts
        # after the original's), and producer retries of two January events have larger
        # totals: one with its January ts, one with a June ts.
        (home.logs / "restored").mkdir()
        (home.logs / "restored" / "agent-jan.jsonl").write_bytes(saved)
        append(home, "agent-jun.jsonl", [
            usage("jun-1", "2025-06-03T12:00:00Z"),
            usage("jan-3", "2025-01-10T08:00:03Z", input_tokens=9000),
            usage("jan-7", "2025-06-03T12:05:00Z", input_tokens=8000)])
        # The copy is read as a new file of the old identity: its derived ids are equal.
        assert tailer.poll().staged == 14 + 3
    run_compaction(home)

    after = lake(home)
    assert after["event_id"].n_unique() == after.height == 13 + 1
    june = after.filter(pl.col("_source") == "agent-jun.jsonl")
    assert set(june.select("event_id", "date", "input_tokens").iter_rows()) == {
        ("jun-1", date(2025, 6, 3), 100), ("jan-3", date(2025, 1, 10), 9000),
        ("jan-7", date(2025, 6, 3), 8000)}  # each in the partition of its own ts
    # The rest is January's rows as they were, from the original file: the copy added
    # nothing, and the two rows the retries replaced are gone from their partitions.
    others = after.filter(pl.col("_source") != "agent-jun.jsonl")
    assert rows(others) == rows(before.filter(~pl.col("event_id").is_in(["jan-3", "jan-7"])))
    assert rows(lake(home, PROGRESS)) == rows(progress_before)
    assert stage_files(home) == []


def test_duplicates_of_every_earlier_run_are_found_through_the_growing_id_index(
        home: Home) -> None:
    for run in range(4):  # the index is built by the second run and grows in the others
        append(home, "a.jsonl", [usage(f"run{run}-{i}", f"2025-03-0{1 + run}T10:00:{i:02d}Z")
                                 for i in range(3)])
        append(home, "b.jsonl", [usage(f"run{earlier}-1", "2025-04-01T10:00:00Z",
                                       input_tokens=100 + run) for earlier in range(run)])
        tail(home)
        run_compaction(home)
        rows = lake(home)
        assert rows["event_id"].n_unique() == rows.height == 3 * (run + 1)
    assert len(list(index_dir(home.state, USAGE).glob("*.arrow"))) == 3
    winners = lake(home).filter(pl.col("event_id").str.ends_with("-1"))
    assert sorted(winners.select("event_id", "input_tokens").rows()) == [
        ("run0-1", 103), ("run1-1", 103), ("run2-1", 103), ("run3-1", 100)]


def test_an_id_index_that_cannot_be_read_is_rebuilt_and_duplicates_still_found(
        home: Home) -> None:
    append(home, "a.jsonl", [usage("first", "2025-03-01T10:00:00Z")])
    tail(home)
    run_compaction(home)
    append(home, "a.jsonl", [usage("second", "2025-03-02T10:00:00Z")])
    tail(home)
    run_compaction(home)  # the index of the table is built here
    index = index_dir(home.state, USAGE)
    segments = list(index.glob("*.arrow"))
    assert segments
    for segment in segments:  # readable, but not an index: its hashes are text
        pl.DataFrame({"_id_hash": ["x"], "date": [date(2025, 3, 1)]}).write_ipc(segment)
    append(home, "b.jsonl", [usage("first", "2025-03-05T10:00:00Z", input_tokens=900)])
    tail(home)
    run_compaction(home)
    assert sorted(lake(home).select("event_id", "input_tokens").rows()) == [
        ("first", 900), ("second", 100)]
    append(home, "b.jsonl", [usage("second", "2025-03-06T10:00:00Z", input_tokens=5)])
    tail(home)
    run_compaction(home)  # the index built anew finds it
    assert sorted(lake(home).select("event_id", "input_tokens").rows()) == [
        ("first", 900), ("second", 100)]


def test_duckdb_and_pyarrow_read_the_table(home: Home) -> None:
    duckdb = pytest.importorskip("duckdb")
    append(home, "a.jsonl", day_events("a", ["2025-08-01", "2025-08-02", "2025-08-03"], 40))
    tail(home)
    run_compaction(home, rows_per_commit=1)
    files = sorted(str(f) for f in live_files(home))
    count, days, tokens = duckdb.sql(
        f"select count(*), count(distinct date), sum(input_tokens) "
        f"from read_parquet({files!r}, hive_partitioning=true)").fetchall()[0]
    expected = lake(home)
    assert (count, days, tokens) == (120, 3, expected["input_tokens"].sum())

    dataset = table(home).to_pyarrow_dataset()
    assert dataset.count_rows() == 120
    import pyarrow.dataset as ds

    one_day = dataset.to_table(filter=ds.field("date") == date(2025, 8, 2))
    assert one_day.num_rows == 40
    assert set(one_day["event_id"].to_pylist()) == {f"a-2025-08-02-{i}" for i in range(40)}


# ------------------------------------------------------------------------------- schema evolution


def v2_schema_dir(tmp_path: Path) -> Path:
    target = tmp_path / "schemas-v2"
    shutil.copytree(schema_dir(), target)
    document = json.loads((target / f"{USAGE}.v1.schema.json").read_text())
    document["$id"] = document["$id"].replace(".v1.", ".v2.")
    document["properties"]["schema_version"] = {"const": 2}
    document["properties"]["service_tier"] = {"type": "string", "maxLength": 64}
    (target / f"{USAGE}.v2.schema.json").write_text(json.dumps(document, indent=2))
    return target


def test_a_v2_schema_adds_a_nullable_column(home: Home, tmp_path: Path) -> None:
    schemas = load_schemas(v2_schema_dir(tmp_path))
    assert schemas.versions(USAGE) == [1, 2]
    append(home, "a.jsonl", [usage(f"v1-{i}", "2025-08-01T10:00:00Z") for i in range(5)])
    tail(home)  # the shipped schemas only: the stage has no service_tier column
    run_compaction(home)
    assert "service_tier" not in table(home).schema().to_arrow().names

    append(home, "a.jsonl", [usage(f"v2-{i}", "2025-08-02T10:00:00Z", schema_version=2,
                                   service_tier="priority") for i in range(3)])
    result = tail(home, validator=Validator(schemas))
    assert (result.staged, result.quarantined) == (3, 0)
    run_compaction(home)

    field = pa.schema(table(home).schema().to_arrow()).field("service_tier")
    assert field.nullable and field.type in (pa.string(), pa.large_string(), pa.string_view())
    frame = lake(home).sort("event_id")
    tiers = dict(zip(*frame.select("event_id", "service_tier"), strict=True))
    assert tiers == {**{f"v1-{i}": None for i in range(5)},
                     **{f"v2-{i}": "priority" for i in range(3)}}
    assert dict(zip(*frame.select("event_id", "schema_version"), strict=True)) == {
        **{f"v1-{i}": 1 for i in range(5)}, **{f"v2-{i}": 2 for i in range(3)}}
    scanned = pl.scan_delta(str(table_path(home, USAGE))).filter(
        pl.col("service_tier").is_null()).select(pl.len()).collect().item()
    assert scanned == 5
    seen = events(home, schemas=schemas)
    assert seen.height == 8 and seen["service_tier"].null_count() == 5


# ------------------------------------------------------------------------------- maintenance


def test_optimize_merges_small_files_and_vacuum_deletes_the_replaced(tmp_path: Path) -> None:
    # Automatic merging off: this is about `--optimize` on its own.
    home = make_home(tmp_path / "home", "[compactor]\nauto_optimize_files = 0\n")
    for cycle in range(4):
        append(home, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01", "2025-08-02"], 25))
        tail(home)
        run_compaction(home)
    before = events(home)
    partition = table_path(home, USAGE).path / "date=2025-08-01"
    assert len([f for f in live_files(home) if f.parent == partition]) == 4

    result = invoke("compact", "--home", str(home.root), "--optimize", "--target-mb", "64")
    assert result.exit_code == 0, result.output
    assert re.search(rf"optimize: .*{USAGE} 8 files merged", result.output), result.output
    live = live_files(home)
    assert len([f for f in live if f.parent == partition]) == 1
    assert len(live) == 2
    assert all(pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"
               for f in live)
    assert events(home).equals(before)
    assert lake_batch(home) == 4  # optimize keeps the transaction version
    assert len(parquet_on_disk(home)) == 8 + 2  # replaced files stay until vacuum

    # Default retention (168 h) keeps the fresh replaced files a running reader may need,
    # and a fraction of an hour is rounded up, never down to 0.
    assert vacuum_lake(home)[USAGE] == 0
    assert vacuum_lake(home, retention_hours=0.5)[USAGE] == 0
    assert len(parquet_on_disk(home)) == 8 + 2
    result = invoke("compact", "--home", str(home.root), "--vacuum", "--retention-hours", "0")
    assert result.exit_code == 0, result.output
    assert f"vacuum: {USAGE} 8 files deleted" in result.output
    assert parquet_on_disk(home) == live_files(home)
    assert events(home).equals(before)

    # The lake keeps working: a new batch lands exactly once beside the merged files.
    append(home, "a.jsonl", day_events("after", ["2025-08-01"], 5))
    tail(home)
    assert run_compaction(home).events == 5
    counts = lake(home)["event_id"].value_counts()
    assert counts.height == 205 and counts["count"].max() == 1
    assert optimize_lake(home)[USAGE] == 2


# ------------------------------------------------------------------------------- lock and CLI


HOLDER = """
import sys, time
from pathlib import Path
from pipeline.checkpoint import ProcessLock
lock = ProcessLock(Path(sys.argv[1]), "compaction").acquire(0)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def lock_holder(home: Home) -> Iterator[subprocess.Popen[str]]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home.state / "compact.lock"),
                               "60"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield holder
    holder.kill()
    holder.wait()


def test_a_second_compaction_gives_up_after_the_lock_timeout(
        home: Home, lock_holder: subprocess.Popen[str]) -> None:
    append(home, "a.jsonl", day_events("a", ["2025-08-01"], 5))
    tail(home)
    started = time.monotonic()
    result = invoke("compact", "--home", str(home.root), "--lock-timeout", "0.5")
    waited = time.monotonic() - started
    assert result.exit_code == 75, result.output
    assert "another compaction is running" in result.output
    assert f"pid {lock_holder.pid}" in result.output
    assert "compact.lock" in result.output
    assert 0.5 <= waited < 10
    assert open_table(table_path(home, USAGE)) is None and len(stage_files(home)) == 1
    # --optimize and --vacuum take the same lock
    with pytest.raises(Exception, match="another compaction is running"):
        vacuum_lake(home, retention_hours=0, lock_timeout=0.2)


def test_a_waiting_compaction_runs_once_the_lock_is_released(home: Home) -> None:
    append(home, "a.jsonl", day_events("a", ["2025-08-01"], 5))
    tail(home)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home.state / "compact.lock"),
                               "1.0"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        result = run_compaction(home, lock_timeout=30)
        assert time.monotonic() - started >= 0.5
    finally:
        holder.kill()
        holder.wait()
    assert result.events == 5


def test_cli_compact_prints_a_one_line_summary(home: Home) -> None:
    append(home, "a.jsonl", day_events("a", ["2025-08-01", "2025-08-02"], 50))
    append(home, "b.jsonl", [progress("p", "2025-08-03T00:00:00Z")])
    tail(home)
    result = invoke("compact", "--home", str(home.root))
    assert result.exit_code == 0, result.output
    match = SUMMARY.search(result.output)
    assert match, result.output
    assert match["events"] == "101" and match["partitions"] == "3"
    assert int(match["commits"]) == 2
    assert float(match["seconds"]) > 0 and int(match["rate"].replace(",", "")) > 0
    assert len(result.output.strip().splitlines()) == 1

    again = invoke("compact", "--home", str(home.root))
    assert SUMMARY.search(again.output)["events"] == "0"  # type: ignore[index]


def test_cli_compact_shows_progress_on_a_terminal(home: Home) -> None:
    for cycle in range(3):
        append(home, "a.jsonl", day_events(f"c{cycle}", ["2025-08-01"], 10))
        tail(home)
    stdout, shown = stderr_on_a_terminal("compact", "--rows-per-commit", "10",
                                         "--home", str(home.root))
    assert SUMMARY.search(stdout) and "compacting" in shown and "100%" in shown
    assert lake(home).height == 30


def test_cli_help_has_examples() -> None:
    result = invoke("compact", "--help")
    assert result.exit_code == 0
    assert re.search(r"Examples?:\n\s+tally compact", result.output), result.output
    assert "--rows-per-commit" not in invoke("compact", "--help").output  # hidden test knob


def test_staged_files_above_the_watermark_are_not_compacted(home: Home) -> None:
    """A tailer killed after writing batch N's stage file but before its checkpoint."""
    append(home, "a.jsonl", day_events("a", ["2025-08-01"], 5))
    tail(home)
    (committed,) = stage_files(home)
    stream = stream_of(home)
    uncommitted = committed.with_name(batch_name(BatchId(stream, 2), "arrow"))
    shutil.copy(committed, uncommitted)
    assert staged_files(home.stage, USAGE, read_watermark(home.state)) == [
        (BatchId(stream, 1), committed)]
    result = run_compaction(home)
    assert result.events == 5 and uncommitted.exists()
    assert events(home).height == 5


# ------------------------------------------------------------------ a lake many hosts share


def test_a_commit_another_host_made_first_is_planned_again(
        tmp_path: Path, s3_lake: str, moto_server: MotoServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    lake = s3_lake
    here, there = (load_home(shared_lake_home(tmp_path, name, lake)) for name in ("here", "there"))
    both = [{"event_type": USAGE, "event_id": f"both-{i}", "ts": "2025-08-01T10:00:00Z",
             "agent": "claude", "input_tokens": 5} for i in range(3)]
    for home, name in ((here, "h"), (there, "t")):
        own = [{**event, "event_id": f"{name}-{i}"} for i, event in enumerate(both)]
        (home.logs / "a.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in both + own))
        with Tailer(home) as tailer:
            tailer.poll()
    write = compactor.write_commit
    interrupted: list[Any] = []

    def other_host_first(*args: Any) -> Any:
        if not interrupted:  # between this host's plan and its commit, the other one commits
            interrupted.append(None)
            interrupted[0] = run_compaction(there)
        return write(*args)

    monkeypatch.setattr(compactor, "write_commit", other_host_first)
    result = run_compaction(here)

    assert result.conflicts == 1 and interrupted[0].events == 6
    rows = pl.read_delta(f"{lake}/{USAGE}", storage_options=moto_server.options)
    assert sorted(rows["event_id"]) == sorted(
        [f"both-{i}" for i in range(3)] + [f"{n}-{i}" for n in "ht" for i in range(3)])
    assert result.events == 3  # planned again, its copies of the shared events lost the tie
