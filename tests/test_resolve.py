"""pipeline.resolve: a run's decisions against the lake, and the upgrade of a table an older
tally wrote (duplicates kept in the lake, no `_id_hash`)."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl
import pytest
from conftest import make_home
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from pipeline.compactor import run_compaction
from pipeline.config import Home
from pipeline.frames import FrameBuilder
from pipeline.id_index import lake_hashes
from pipeline.resolve import FILE, ROW, needs_upgrade, resolve
from pipeline.tailer import Tailer

USAGE = "agent_token_usage"


def usage(event_id: str, ts: str, tokens: int, source: str = "a.jsonl",
          offset: int = 0) -> dict[str, object]:
    return {"event_type": USAGE, "event_id": event_id, "ts": ts, "agent": "a",
            "input_tokens": tokens, "_source": source, "_offset": offset}


def stage_file(tmp_path: Path, name: str, rows: list[dict[str, object]]) -> Path:
    frame = FrameBuilder(USAGE).build([{k: v for k, v in r.items() if not k.startswith("_")}
                                       for r in rows], [str(r["_source"]) for r in rows],
                                      [int(str(r["_offset"])) for r in rows])
    path = tmp_path / name
    frame.write_ipc(path)
    return path


@pytest.mark.parametrize("hashes_from", ["table", "index"])
def test_decisions_span_the_run_and_the_lake(home: Home, tmp_path: Path,
                                             hashes_from: str) -> None:
    (home.logs / "a.jsonl").write_bytes(b"".join(orjson.dumps(
        {k: v for k, v in usage(i, "2025-03-01T10:00:00Z", n).items() if not k.startswith("_")}
    ) + b"\n" for i, n in [("in-lake-wins", 50), ("in-lake-loses", 5)]))
    with Tailer(home) as tailer:
        tailer.poll()
    run_compaction(home)
    first = stage_file(tmp_path, "1.arrow", [usage("in-lake-wins", "2025-03-01T10:00:00Z", 1),
                                             usage("twice", "2025-03-02T10:00:00Z", 3)])
    second = stage_file(tmp_path, "2.arrow", [usage("in-lake-loses", "2025-03-05T10:00:00Z", 9),
                                              usage("twice", "2025-03-02T10:00:00Z", 4,
                                                    offset=1)])
    table = DeltaTable(str(home.lake / USAGE))
    hashes = (None if hashes_from == "table"
              else lake_hashes(tmp_path / "index", table, home.lake / USAGE))
    decided = resolve([first, second], table, USAGE, hashes)
    # Dropped: file 0 row 0 (the lake's 50 wins) and file 0 row 1 ("twice" with 3 < 4).
    assert sorted(decided.dropped.rows()) == [(0, 0), (0, 1)]
    assert decided.replaced.select("event_id", FILE).rows() == [("in-lake-loses", 1)]
    assert decided.tombstones({0}).is_empty()
    assert decided.tombstones({1})["event_id"].to_list() == ["in-lake-loses"]
    kept = decided.kept(pl.DataFrame({FILE: [0, 0, 1, 1], ROW: pl.Series([0, 1, 0, 1],
                                                                          dtype=pl.UInt32)}))
    assert kept.rows() == [(1, 0), (1, 1)]


def older_tally_table(home: Home) -> None:
    """A table as tallies before the rule on write left it: duplicates across days and
    identical rows staged twice, no `_id_hash`, and a stream's transaction."""
    rows = [usage("dup", "2025-03-01T10:00:00Z", 1, offset=0),
            usage("dup", "2025-03-02T10:00:00Z", 8, offset=100),
            usage("twin", "2025-03-01T11:00:00Z", 2, offset=200),
            usage("twin", "2025-03-01T11:00:00Z", 2, offset=200),
            usage("solo", "2025-03-03T11:00:00Z", 4, offset=300)]
    frame = FrameBuilder(USAGE).build([{k: v for k, v in r.items() if not k.startswith("_")}
                                       for r in rows], [str(r["_source"]) for r in rows],
                                      [int(str(r["_offset"])) for r in rows])
    for half in (frame[:2], frame[2:]):
        write_deltalake(str(home.lake / USAGE), half.with_columns(date=pl.col("ts").dt.date()),
                        mode="append", partition_by=["date"],
                        commit_properties=CommitProperties(
                            app_transactions=[Transaction("tally-stage", 7)]))


def test_an_older_tallys_table_is_upgraded_once_by_the_next_compaction(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    older_tally_table(home)
    assert needs_upgrade(DeltaTable(str(home.lake / USAGE)))
    (home.logs / "a.jsonl").write_bytes(orjson.dumps(
        {k: v for k, v in usage("new", "2025-03-04T10:00:00Z", 1).items()
         if not k.startswith("_")}) + b"\n")
    with Tailer(home) as tailer:
        tailer.poll()
    result = run_compaction(home)
    assert result.upgraded == {USAGE: 2}  # the losing "dup" and one "twin"
    table = DeltaTable(str(home.lake / USAGE))
    assert not needs_upgrade(table)
    assert table.transaction_version("tally-stage") == 7
    rows = pl.read_delta(str(home.lake / USAGE)).sort("event_id")
    assert rows.select("event_id", "input_tokens").rows() == [
        ("dup", 8), ("new", 1), ("solo", 4), ("twin", 2)]
    assert rows["_id_hash"].null_count() == 0
    assert run_compaction(home).upgraded == {}
