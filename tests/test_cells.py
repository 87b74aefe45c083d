"""pipeline.cells: the rollups' answer equals the count from every event, whatever the
events, the batches they were compacted in, the query, its time zone and the prices.

Differential: random event streams (duplicates across batches and days, snapshots out of
order, producers' costs, prompts around a long-context threshold) are tailed and compacted
in random splits, some left staged; every query answered from the rollups
(`reports.open_cells`) must equal the count from every event (`reports.cells_from_events`,
the implementation before the rollups, kept as the reference).
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from conftest import make_home
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from pipeline.compactor import run_compaction
from pipeline.config import Home, load_home
from pipeline.query import GROUP_KEYS, ReportQuery
from pipeline.reports import (
    cell_keys,
    cells_from_events,
    context_from_events,
    open_cells,
    run_context_report,
    summarize,
)
from pipeline.tailer import Tailer

ZONES = ["UTC", "Asia/Kathmandu", "America/St_Johns", "Europe/Berlin", "Pacific/Chatham"]
MODELS = ["claude-sonnet-4-5", "gpt-5", "mystery-model"]
PRICES = ('[pricing."mystery-model"]\ninput = 1.0\noutput = 2.0\n'
          'long_context_threshold = 500\nlong_context_input = 3.0\nlong_context_output = 4.0\n')


def stamp(day: int, minute: int, offset: str) -> str:
    return f"2025-03-{day:02d}T{minute // 60:02d}:{minute % 60:02d}:00{offset}"


@st.composite
def usage_event(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "agent_token_usage",
        "event_id": f"u{draw(st.integers(0, 25))}",  # a small pool: duplicates happen
        "ts": stamp(draw(st.integers(1, 4)), draw(st.integers(0, 1439)),
                    draw(st.sampled_from(["Z", "+05:45", "-03:30", "+14:00"]))),
        "agent": draw(st.sampled_from(["claude", "codex", "gemini"])),
        "model": draw(st.sampled_from(MODELS)),
        "input_tokens": draw(st.integers(0, 400)),
        "output_tokens": draw(st.integers(0, 300)),
        "cache_read_tokens": draw(st.integers(0, 300)),
        "cache_write_tokens": draw(st.integers(0, 100)),
    }
    for key, values in (("role", ["dev", "qa"]), ("phase", [1, 2, "review"]),
                        ("task", ["T1", "T2", "T3"]), ("session_id", ["s1", "s2"])):
        if draw(st.booleans()):
            event[key] = draw(st.sampled_from(values))
    if draw(st.integers(0, 4)) == 0:
        event["cost_usd"] = draw(st.floats(0, 2, allow_nan=False).map(lambda x: round(x, 6)))
    if draw(st.integers(0, 3)) == 0:
        event["cache_write_1h_tokens"] = draw(st.integers(0, 150))
    return event


@st.composite
def snapshot(draw: st.DrawFn) -> dict[str, Any]:
    prompt, completion = draw(st.integers(0, 5000)), draw(st.integers(0, 5000))
    return {
        "event_type": "task_progress",
        "event_id": f"p{draw(st.integers(0, 30))}",
        "ts": stamp(draw(st.integers(1, 4)), draw(st.integers(0, 1439)), "Z"),
        "agent": draw(st.sampled_from(["claude", "codex", "gemini"])),
        "task": draw(st.sampled_from(["T1", "T2", "T4", "T5"])),
        "status": draw(st.sampled_from(["in_progress", "completed"])),
        "tokens_used": {"prompt": prompt, "completion": completion,
                        "total": prompt + completion + draw(st.integers(0, 50)),
                        "model": draw(st.sampled_from(MODELS))},
    }


@st.composite
def compilation(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "context_compiled",
        "event_id": f"c{draw(st.integers(0, 20))}",
        "ts": stamp(draw(st.integers(1, 4)), draw(st.integers(0, 1439)), "Z"),
        "agent": draw(st.sampled_from(["claude", "codex"])),
        "prefix_bytes": draw(st.integers(0, 900)),
        "volatile_bytes": draw(st.integers(0, 300)),
        "prefix_hash": draw(st.sampled_from(["h1", "h2"])),
    }
    for key, values in (("role", ["dev", "qa"]), ("session_id", ["s1", "s2"])):
        if draw(st.booleans()):
            event[key] = draw(st.sampled_from(values))
    return event


@st.composite
def query(draw: st.DrawFn) -> ReportQuery:
    keys = draw(st.lists(st.sampled_from(GROUP_KEYS), min_size=1, max_size=3, unique=True))
    since = draw(st.none() | st.integers(1, 4).map(lambda d: date(2025, 3, d)))
    until = draw(st.none() | st.integers(1, 5).map(lambda d: date(2025, 3, d)))
    if since and until and since > until:
        since, until = until, since
    return ReportQuery(by=tuple(keys), since=since, until=until,
                       agents=tuple(draw(st.lists(st.sampled_from(["claude", "codex"]),
                                                  max_size=1))),
                       tz=draw(st.sampled_from(ZONES)),
                       cost_mode=draw(st.sampled_from(["auto", "calculate"])))


def append(home: Home, lines: list[dict[str, Any]], name: str) -> None:
    with open(home.logs / name, "ab") as handle:
        handle.write(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def build(root: Path, batches: list[list[dict[str, Any]]], compact: list[bool],
          priced: bool) -> Home:
    shutil.rmtree(root, ignore_errors=True)
    home = make_home(root, PRICES if priced else "")
    for index, (events, compacted) in enumerate(zip(batches, compact, strict=True)):
        append(home, events, f"log-{index % 2}.jsonl")
        with Tailer(home) as tailer:
            tailer.poll()
        if compacted:
            run_compaction(home, rows_per_commit=7)
    return load_home(root)


def report(cells: pl.LazyFrame, by: tuple[str, ...]) -> pl.DataFrame:
    return summarize(cells, by).collect()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches=st.lists(st.lists(usage_event() | snapshot() | compilation(), max_size=12),
                        min_size=1, max_size=4),
       data=st.data(), priced=st.booleans())
def test_the_rollups_answer_as_every_event_does(tmp_path_factory: pytest.TempPathFactory,
                                                batches: list[list[dict[str, Any]]],
                                                data: st.DataObject, priced: bool) -> None:
    compact = data.draw(st.lists(st.booleans(), min_size=len(batches),
                                 max_size=len(batches)))
    home = build(tmp_path_factory.mktemp("cells") / "home", batches, compact, priced)
    for _ in range(4):
        asked = data.draw(query())
        keys = cell_keys(asked.by)
        expected = report(cells_from_events(home, asked, keys), asked.by)
        found = report(open_cells(home, asked, keys), asked.by)
        assert_frame_equal(found, expected, check_exact=False, rel_tol=1e-9)
        assert_frame_equal(run_context_report(home, asked), context_from_events(home, asked))


def test_a_zone_off_the_quarter_hour_grid_counts_the_events_at_a_day_boundary(
        tmp_path: Path) -> None:
    # Monrovia kept -00:44:30 until 1972-01-07 00:44:30 UTC, then UTC. The UTC bucket
    # 00:30-00:45 of that day starts on local 01-06 23:45:30 (off the quarter-hour grid),
    # but its event at 00:44:40 is local 01-07 00:44:40; the day's other rows are on it.
    events = [{"event_type": "agent_token_usage", "event_id": f"m{i}", "ts": ts,
               "agent": "claude", "model": "gpt-5", "input_tokens": tokens}
              for i, (ts, tokens) in enumerate([("1972-01-07T00:44:40Z", 7),
                                                ("1972-01-07T00:31:00Z", 100),
                                                ("1972-01-07T12:00:00Z", 1000)])]
    home = build(tmp_path / "home", [events], [True], priced=False)
    asked = ReportQuery(by=("agent", "day"), since=date(1972, 1, 7), tz="Africa/Monrovia")
    keys = cell_keys(asked.by)
    found = report(open_cells(home, asked, keys), asked.by)
    assert_frame_equal(found, report(cells_from_events(home, asked, keys), asked.by))
    assert found["input_tokens"].to_list() == [1007]
