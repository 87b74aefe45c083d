"""pipeline.ledger: which batches of which stream the lake holds, the high-water file the
tailer reads instead of the lake, and tables found older than compaction left them."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import Home
from pipeline.errors import DamagedFile, LakeError
from pipeline.ledger import (
    HIGH_WATER_FILE,
    app_id,
    check_not_behind,
    lake_high_water,
    lost_commits,
    open_table,
    raise_high_water,
    record_versions,
    recorded_versions,
    stream_batch,
    table_path,
)


def commit(home: Home, event_type: str, batches: dict[str, int]) -> DeltaTable:
    write_deltalake(str(table_path(home, event_type)), pa.table({"x": [1]}), mode="append",
                    commit_properties=CommitProperties(app_transactions=[
                        Transaction(app_id(stream), n) for stream, n in batches.items()]))
    return DeltaTable(str(table_path(home, event_type)))


def test_app_ids_keep_the_name_older_homes_used() -> None:
    assert app_id("") == "tally-stage"
    assert app_id("0123abcd") == "tally-stage-0123abcd"


def test_each_stream_has_its_own_highest_batch(home: Home) -> None:
    table = commit(home, "agent_token_usage", {"aa": 3, "bb": 7})
    assert stream_batch(table, "aa", "h") == 3 and stream_batch(table, "bb", "h") == 7
    assert stream_batch(table, "cc", "h") == 0 and stream_batch(None, "aa", "h") == 0


def test_each_host_commits_under_app_ids_of_its_own(home: Home) -> None:
    assert app_id("0123abcd", "build-01") == "tally-stage-build-01-0123abcd"
    write_deltalake(str(table_path(home, "t")), pa.table({"x": [1]}), commit_properties=
                    CommitProperties(app_transactions=[Transaction(app_id("aa", "h1"), 5)]))
    table = DeltaTable(str(table_path(home, "t")))
    assert stream_batch(table, "aa", "h1") == 5 and stream_batch(table, "aa", "h2") == 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["aa", "bb", ""]), st.integers(0, 50)),
                max_size=12))
def test_the_high_water_never_goes_down(tmp_path_factory: pytest.TempPathFactory,
                                        raises: list[tuple[str, int]]) -> None:
    home = Home(root=tmp_path_factory.mktemp("home"), logs=tmp_path_factory.mktemp("logs"))
    highest: dict[str, int] = {}
    for stream, batch in raises:
        raise_high_water(home, {app_id(stream): batch})
        highest[stream] = max(highest.get(stream, 0), batch)
    for stream in ("aa", "bb", ""):
        assert lake_high_water(home, stream) == highest.get(stream, 0)


def test_a_damaged_high_water_file_reads_as_nothing_and_is_written_anew(home: Home) -> None:
    home.lake.mkdir(exist_ok=True)
    (home.lake / HIGH_WATER_FILE).write_text("{not json")
    assert lake_high_water(home, "aa") == 0
    raise_high_water(home, {app_id("aa"): 4})
    assert lake_high_water(home, "aa") == 4


def test_a_table_that_lost_its_latest_commits_is_reported(home: Home) -> None:
    for n in range(1, 5):
        table = commit(home, "agent_token_usage", {"aa": n})
    record_versions(home, {"agent_token_usage": table.version()})
    assert recorded_versions(home) == {"agent_token_usage": 3}  # versions 0-3
    assert lost_commits(home, "agent_token_usage", open_table(table_path(
        home, "agent_token_usage"))) is None
    for version in (2, 3):
        log = table_path(home, "agent_token_usage").path / "_delta_log"
        (log / f"{version:020d}.json").unlink()
    shrunk = open_table(table_path(home, "agent_token_usage"))
    problem = lost_commits(home, "agent_token_usage", shrunk)
    assert problem is not None and "at version 1" in problem and "version 3" in problem
    with pytest.raises(LakeError, match="commits were lost"):
        check_not_behind(home, "agent_token_usage", shrunk)


def test_a_table_missing_altogether_is_reported(home: Home) -> None:
    record_versions(home, {"tool_call": 2})
    assert "missing" in (lost_commits(home, "tool_call", None) or "")
    assert lost_commits(home, "metric", None) is None  # never compacted: nothing expected


def test_a_gap_in_the_delta_log_is_a_damaged_table_in_one_line(home: Home) -> None:
    for n in range(1, 4):
        commit(home, "agent_token_usage", {"aa": n})
    (table_path(home, "agent_token_usage").path / "_delta_log" / f"{1:020d}.json").unlink()
    with pytest.raises(DamagedFile) as raised:
        open_table(table_path(home, "agent_token_usage"))
    assert "gap" in raised.value.message and "\n" not in raised.value.message
    assert "rebuild" in (raised.value.hint or "")


def test_a_table_handed_out_is_not_moved_by_a_later_open(home: Home) -> None:
    commit(home, "agent_token_usage", {"s": 1})
    path = table_path(home, "agent_token_usage")
    first = open_table(path)
    assert first is not None and open_table(path) is first  # nothing new: the same object
    scan = pl.scan_delta(first)  # resolves its files when collected
    commit(home, "agent_token_usage", {"s": 2})
    later = open_table(path)
    assert later is not None and later is not first
    assert (first.version(), later.version()) == (0, 1)
    assert scan.collect().height == 1 and pl.scan_delta(later).collect().height == 2
    assert stream_batch(first, "s", "h") == 1 and stream_batch(later, "s", "h") == 2
