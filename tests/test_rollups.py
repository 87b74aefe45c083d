"""pipeline.rollups: the rollup tables compaction keeps, how they follow their event tables
commit by commit, and how a run killed before it caught up is caught up by the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import polars as pl
from conftest import make_home
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from pipeline.compactor import run_compaction
from pipeline.config import Home
from pipeline.query import ReportQuery
from pipeline.reports import cell_keys, cells_from_events, open_cells, summarize
from pipeline.rollups import (
    SOURCE_APP,
    prompt_class,
    reflected,
    rollup_path,
    touched_since,
    usage_rollup,
)
from pipeline.tailer import Tailer

TALLY = str(Path(sys.executable).with_name("tally"))
USAGE = "agent_token_usage"


def usage(event_id: str, ts: str, **extra: Any) -> dict[str, Any]:
    return {"event_type": USAGE, "event_id": event_id, "ts": ts, "agent": "a",
            "input_tokens": 100, **extra}


def feed(home: Home, *events: dict[str, Any]) -> None:
    with open(home.logs / "a.jsonl", "ab") as handle:
        handle.write(b"".join(orjson.dumps(e) + b"\n" for e in events))
    with Tailer(home) as tailer:
        tailer.poll()


def test_prompt_classes_name_the_thresholds_around_each_prompt() -> None:
    frame = pl.DataFrame({"input_tokens": [10, 200, 201, 5000], "cache_read_tokens": [0] * 4,
                          "cache_write_tokens": [0] * 4})
    classes = frame.select(prompt_class([200, 1000])).rows()
    assert classes == [(0, 200), (0, 200), (200, 1000), (1000, None)]


def test_usage_rolls_up_per_quarter_hour_and_keys() -> None:
    from pipeline.frames import FrameBuilder

    rows = [usage(f"u{i}", ts, cost_usd=cost) for i, (ts, cost) in enumerate([
        ("2025-03-01T10:01:00Z", None), ("2025-03-01T10:14:59Z", None),
        ("2025-03-01T10:15:00Z", None), ("2025-03-01T10:16:00Z", 0.5)])]
    frame = FrameBuilder(USAGE).build([{k: v for k, v in r.items() if v is not None}
                                       for r in rows], ["a"] * 4, [0, 1, 2, 3]).lazy()
    rolled = usage_rollup(frame, []).collect().sort("bucket", "producer_cost")
    assert rolled.select("bucket", "producer_cost", "events", "input_tokens",
                         "cost_nano_usd").rows() == [
        (rolled["bucket"][0], False, 2, 200, 0),
        (rolled["bucket"][1], False, 1, 100, 0),
        (rolled["bucket"][1], True, 1, 100, 500_000_000)]
    assert [b.minute for b in rolled["bucket"]] == [0, 15, 15]


def test_rollups_follow_the_dates_each_commit_touched(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    feed(home, usage("x", "2025-03-01T10:00:00Z"), usage("y", "2025-03-02T10:00:00Z"))
    run_compaction(home)
    rollup = DeltaTable(str(rollup_path(home, "usage")))
    source = DeltaTable(str(home.lake / USAGE))
    assert reflected(rollup) == source.version()
    assert touched_since(source, reflected(rollup)) == set()
    feed(home, usage("z", "2025-03-05T10:00:00Z"))
    run_compaction(home)
    source.update_incremental()
    assert touched_since(source, source.version() - 1) == {"2025-03-05"}
    assert touched_since(source, None) is None
    rows = pl.read_delta(str(rollup_path(home, "usage")))
    assert sorted(str(d) for d in rows["date"].unique()) == [
        "2025-03-01", "2025-03-02", "2025-03-05"]
    assert rows["events"].sum() == 3


def report_equals_the_count_from_every_event(home: Home) -> None:
    for by in (("agent", "day"), ("agent", "task"), ("month",)):
        query = ReportQuery(by=by)
        keys = cell_keys(by)
        assert summarize(open_cells(home, query, keys), by).collect().equals(
            summarize(cells_from_events(home, query, keys), by).collect())


def test_a_run_killed_before_it_caught_the_rollups_up_is_caught_up_by_the_next(
        tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    feed(home, usage("x", "2025-03-01T10:00:00Z"),
         {"event_type": "task_progress", "event_id": "p1", "ts": "2025-03-01T11:00:00Z",
          "agent": "a", "task": "T", "tokens_used": {"prompt": 5, "completion": 5}})
    run_compaction(home)
    feed(home, usage("late", "2025-03-04T10:00:00Z", input_tokens=7),
         usage("x", "2025-03-02T00:00:00Z", input_tokens=900))  # replaces x, another day
    killed = subprocess.run([TALLY, "compact", "--home", str(home.root)],
                            env={**os.environ, "TALLY_FAULT": "compact:after_commit"},
                            capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    rollup = DeltaTable(str(rollup_path(home, "usage")))
    source = DeltaTable(str(home.lake / USAGE))
    assert (rollup.transaction_version(SOURCE_APP) or 0) < source.version()  # behind
    report_equals_the_count_from_every_event(home)  # readers count the lag from events
    run_compaction(home)
    rollup.update_incremental()
    source.update_incremental()
    assert reflected(rollup) == source.version()
    report_equals_the_count_from_every_event(home)
    rows = pl.read_delta(str(rollup_path(home, "usage")))
    assert rows.filter(pl.col("date").cast(pl.String) == "2025-03-01").is_empty()
    assert rows["input_tokens"].sum() == 907


def usage_task_rows(home: Home) -> list[tuple[str, str, str]]:
    rows = pl.read_delta(str(rollup_path(home, "usage_tasks")))
    return sorted((str(d), a, t) for d, a, t in rows.select("date", "agent", "task").rows())


def test_usage_tasks_stays_one_file_whatever_dates_it_holds(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    feed(home, usage("x", "2025-03-01T10:00:00Z", task="T1"),
         usage("y", "2025-03-02T10:00:00Z", task="T2"))
    run_compaction(home)
    feed(home, usage("z", "2025-03-05T10:00:00Z", task="T3"),
         usage("x", "2025-03-03T10:00:00Z", task="T9", input_tokens=900))  # x moves
    run_compaction(home)
    table = DeltaTable(str(rollup_path(home, "usage_tasks")))
    assert table.metadata().partition_columns == []
    assert len(table.file_uris()) == 1
    assert usage_task_rows(home) == [("2025-03-02", "a", "T2"), ("2025-03-03", "a", "T9"),
                                     ("2025-03-05", "a", "T3")]


def test_a_usage_tasks_table_partitioned_by_date_is_made_one_file(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    feed(home, usage("x", "2025-03-01T10:00:00Z", task="T1"))
    run_compaction(home)
    path = rollup_path(home, "usage_tasks")
    older = pl.read_delta(str(path))  # as an older tally kept it: a partition per date
    write_deltalake(str(path), older, mode="overwrite", partition_by=["date"],
                    schema_mode="overwrite",
                    commit_properties=CommitProperties(app_transactions=[Transaction(
                        SOURCE_APP, DeltaTable(str(home.lake / USAGE)).version())]))
    assert DeltaTable(str(path)).metadata().partition_columns == ["date"]
    feed(home, usage("y", "2025-03-04T10:00:00Z", task="T2"))
    run_compaction(home)
    assert DeltaTable(str(path)).metadata().partition_columns == []
    assert usage_task_rows(home) == [("2025-03-01", "a", "T1"), ("2025-03-04", "a", "T2")]
    report_equals_the_count_from_every_event(home)


def test_a_usage_rollup_without_project_and_branch_is_computed_again(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    feed(home, usage("p1", "2025-03-01T10:00:00Z", project="/w/a", branch="main"),
         usage("p2", "2025-03-01T10:05:00Z", project="/w/b"))
    run_compaction(home)
    path = rollup_path(home, "usage")
    old = pl.scan_delta(str(path)).drop("project", "branch").collect()
    source = DeltaTable(str(home.lake / USAGE))
    write_deltalake(str(path), old.to_arrow(), mode="overwrite", schema_mode="overwrite",
                    partition_by=["date"], commit_properties=CommitProperties(
                        app_transactions=[Transaction(SOURCE_APP, source.version())]))
    query = ReportQuery(by=("project",))
    cells = open_cells(home, query, cell_keys(query.by))
    by_project = {r["project"]: r["input_tokens"]
                  for r in summarize(cells, query.by).collect().rows(named=True)}
    assert by_project == {"/w/a": 100, "/w/b": 100}  # from the events meanwhile
    feed(home, usage("p3", "2025-03-02T10:00:00Z", project="/w/a"))
    run_compaction(home)
    assert {"project", "branch"} <= set(pl.scan_delta(str(path)).collect_schema().names())
    rows = pl.scan_delta(str(path)).filter(pl.col("project") == "/w/a").collect()
    assert rows.get_column("input_tokens").sum() == 200
