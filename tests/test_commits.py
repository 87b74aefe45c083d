"""pipeline.commits: one Delta commit of a compaction: an append, or an overwrite of the
touched partitions that replaces lake rows; the dates it touched recorded; a full disk said
in one line."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import polars as pl
import pytest
from conftest import make_home
from deltalake import DeltaTable

from pipeline.errors import StorageError
from pipeline.tailer import Tailer

PANIC = "thread 'tokio-rt-worker' panicked at x.rs:1:1:\nNo space left on device (os error 28)\n"
USAGE = "agent_token_usage"


def test_a_full_disk_during_compaction_says_so_in_one_line(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    from pipeline import commits, compactor

    home = make_home(tmp_path / "home")
    (home.logs / "a.jsonl").write_bytes(
        b'{"event_type":"agent_token_usage","ts":"2025-03-01T12:00:00Z","agent":"a"}\n')
    with Tailer(home) as tailer:
        tailer.poll()

    def full(*args: object, **kwargs: object) -> None:
        (home.lake / "agent_token_usage").mkdir(parents=True, exist_ok=True)
        os.write(2, PANIC.encode())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(commits, "write_deltalake", full)
    with pytest.raises(StorageError) as raised:
        compactor.run_compaction(home)
    assert "No space left on device" in raised.value.message
    assert raised.value.exit_code == 74


def usage_line(event_id: str, ts: str, tokens: int) -> bytes:
    return orjson.dumps({"event_type": USAGE, "event_id": event_id, "ts": ts, "agent": "a",
                         "input_tokens": tokens}) + b"\n"


def compacted(home_root: Path, *lines: bytes) -> DeltaTable:
    from pipeline.compactor import run_compaction
    from pipeline.config import load_home

    home = load_home(home_root)
    with open(home.logs / "a.jsonl", "ab") as handle:
        handle.write(b"".join(lines))
    with Tailer(home) as tailer:
        tailer.poll()
    run_compaction(home)
    return DeltaTable(str(home.lake / USAGE))


def test_a_row_replacing_a_lake_row_of_another_day_is_one_commit(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    table = compacted(home.root, usage_line("retry", "2025-03-01T23:59:59Z", 10),
                      usage_line("other", "2025-03-01T10:00:00Z", 5))
    before = table.version()
    table = compacted(home.root, usage_line("retry", "2025-03-02T00:00:01Z", 99))
    assert table.version() == before + 1  # the delete and the insert in one commit
    [commit] = table.history(1)
    assert commit["operation"] == "WRITE"  # an overwrite of the partitions it touched
    assert commit["operationParameters"]["mode"] == "Overwrite"
    assert commit["tally.dates"] == "2025-03-01,2025-03-02"
    rows = pl.read_delta(str(home.lake / USAGE)).sort("event_id")
    assert rows.select("event_id", "input_tokens").rows() == [("other", 5), ("retry", 99)]
    assert str(rows.filter(pl.col("event_id") == "retry")["date"][0]) == "2025-03-02"


def test_a_plain_append_records_the_dates_it_touched(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    table = compacted(home.root, usage_line("x", "2025-03-01T10:00:00Z", 1),
                      usage_line("y", "2025-03-03T10:00:00Z", 1))
    [commit] = table.history(1)
    assert commit["operation"] == "WRITE" and commit["tally.dates"] == "2025-03-01,2025-03-03"
    assert set(pl.read_delta(str(home.lake / USAGE)).columns) >= {"_id_hash", "event_id"}


def test_a_losing_row_changes_nothing_in_the_lake(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    compacted(home.root, usage_line("keep", "2025-03-01T10:00:00Z", 50))
    table = compacted(home.root, usage_line("keep", "2025-03-01T10:00:00Z", 5))
    rows = pl.read_delta(str(home.lake / USAGE))
    assert rows.select("event_id", "input_tokens").rows() == [("keep", 50)]
    assert table.history(1)[0]["operation"] == "WRITE"  # an empty append keeps the batch
