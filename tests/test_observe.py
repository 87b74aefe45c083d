"""The reads behind the running totals (pipeline.observe): the seed is the report's count,
and batches counted one by one arrive at the seed's answer (a differential test)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.compactor import run_compaction
from pipeline.config import Home
from pipeline.observe import batch_rows, seed_totals
from pipeline.pricing import pricing_for
from pipeline.query import ReportQuery
from pipeline.reports import run_report
from pipeline.stage import BatchId
from pipeline.tailer import Tailer
from pipeline.totals import NANO, LiveTotals
from pipeline.writer import append_event
from tests.conftest import make_home

NOW = datetime.now(UTC).replace(microsecond=0)
_ids = itertools.count()


def stamp(minutes_ago: int) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def usage_event(agent: str, minutes_ago: int, tokens: int, **extra: Any) -> dict[str, Any]:
    return {"event_type": "agent_token_usage", "event_id": f"u{next(_ids)}",
            "ts": stamp(minutes_ago), "agent": agent, "session_id": f"{agent}-s",
            "model": "claude-sonnet-4-5", "input_tokens": tokens, "output_tokens": tokens // 10,
            **extra}


def progress_event(agent: str, task: str, minutes_ago: int, total: int) -> dict[str, Any]:
    return {"event_type": "task_progress", "ts": stamp(minutes_ago), "agent": agent,
            "task": task, "status": "in_progress", "session_id": f"{agent}-s",
            "tokens_used": {"prompt": total * 3 // 4, "completion": total // 4, "total": total,
                            "model": "claude-sonnet-4-5"}}


def days_of(totals: LiveTotals) -> dict[tuple[str, Any], tuple[int, int]]:
    return {key: (s.tokens, s.cost_nano) for key, s in totals.days.items() if s.tokens}


def same_days(counted: LiveTotals, seeded: LiveTotals, rows: int) -> None:
    """Tokens equal; cost equal to a nano-dollar per row (cells are priced summed)."""
    left, right = days_of(counted), days_of(seeded)
    assert set(left) == set(right)
    for key, (tokens, cost) in left.items():
        assert tokens == right[key][0], key
        assert abs(cost - right[key][1]) <= rows + 1, key


class Counter:
    """A tailer whose committed batches are counted into running totals as they land."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.totals = seed_totals(home, NOW)
        self.batches: list[tuple[BatchId, frozenset[str]]] = []
        self.tailer = Tailer(home, on_commit=lambda *batch: self.batches.append(batch))

    def poll(self) -> None:
        self.tailer.poll()
        for batch, types in self.batches:
            rows = batch_rows(self.home, batch, types, self.totals, pricing_for(self.home))
            assert rows is not None
            self.totals.add_rows(rows)
        self.batches.clear()


def test_the_seed_is_the_reports_count(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    log = home.logs / "a.jsonl"
    for n in range(20):
        append_event(log, usage_event("claude" if n % 3 else "codex", n * 7, 1000 + n))
    append_event(log, usage_event("claude", 5, 500, cost_usd=1.25))
    append_event(log, progress_event("gemini", "T-1", 30, 4000))
    append_event(log, progress_event("gemini", "T-1", 10, 6000))
    with Tailer(home) as tailer:
        tailer.poll()
    run_compaction(home)
    seeded = seed_totals(home, NOW)
    report = run_report(home, ReportQuery(by=("agent", "day"),
                                          since=NOW.date() - timedelta(days=7)))
    expected = {(r["agent"], r["day"]): (r["total_tokens"], round(r["cost_usd"] * NANO))
                for r in report.rows.iter_rows(named=True)}
    assert {(a, d.isoformat()): v for (a, d), v in days_of(seeded).items()} == expected
    assert seeded.snapshots["gemini", "T-1"].total == 6000
    assert seeded.tasks["gemini", "T-1"]["status"] == "in_progress"
    assert sum(s.tokens for m in seeded.minutes.values() for s in m.values()) == \
        sum(v[0] for k, v in expected.items() if k[0] != "gemini")


step = st.one_of(
    st.tuples(st.just("usage"), st.sampled_from(["claude", "codex"]),
              st.integers(0, 2000), st.integers(1, 5000)),
    st.tuples(st.just("copy"), st.booleans()),
    st.tuples(st.just("progress"), st.sampled_from(["T-1", "T-2"]), st.integers(0, 3000)),
    st.tuples(st.just("tracked"), st.integers(1, 3000)),
    st.tuples(st.just("compact"),),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(step, min_size=1, max_size=6), min_size=1, max_size=6))
def test_counting_batches_arrives_at_the_seeds_answer(tmp_path_factory: Any,
                                                      batches: list[list[tuple[Any, ...]]]
                                                      ) -> None:
    """Usage, exact and larger copies, snapshots of untracked pairs, usage of a tracked
    pair and compactions in between: the batches' count equals a fresh seed's."""
    home = make_home(tmp_path_factory.mktemp("home"))
    log = home.logs / "agents.jsonl"
    counter = Counter(home)
    written: list[dict[str, Any]] = []
    progress_total = {"T-1": 0, "T-2": 0}
    age = 3000
    try:
        for batch in batches:
            for kind, *args in batch:
                age -= 1
                if kind == "usage":
                    written.append(append_event(log, usage_event(args[0], args[1], args[2])))
                elif kind == "copy" and written:
                    copy = dict(written[-1])
                    if args[0]:
                        copy["output_tokens"] += 7  # a larger copy wins
                    append_event(log, copy)
                elif kind == "progress":
                    progress_total[args[0]] += args[1]
                    append_event(log, progress_event("asb", args[0], age,
                                                     progress_total[args[0]]))
                elif kind == "tracked":
                    append_event(log, usage_event("asb", 1, args[0], task="T-u"))
                elif kind == "compact":
                    counter.poll()
                    run_compaction(home)
            counter.poll()
        same_days(counter.totals, seed_totals(home, NOW), rows=len(written) + 50)
    finally:
        counter.tailer.close()


def test_a_batch_compacted_before_it_was_read_asks_for_a_seed(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    append_event(home.logs / "a.jsonl", usage_event("claude", 1, 100))
    counter = Counter(home)
    try:
        counter.tailer.poll()
        run_compaction(home)
        batch, types = counter.batches[0]
        assert types == {"agent_token_usage"}
        assert batch_rows(home, batch, types, counter.totals, pricing_for(home)) is None
    finally:
        counter.tailer.close()


def test_future_events_count_in_their_day_but_in_no_minute(tmp_path: Path) -> None:
    """A producer's clock ahead (or generated data): the day counts it, the burn rate
    does not, and the ids it leaves do not make every publish seed again."""
    home = make_home(tmp_path / "home")
    log = home.logs / "a.jsonl"
    append_event(log, usage_event("claude", -600, 5000))  # ten hours ahead
    append_event(log, usage_event("claude", 10, 100))
    with Tailer(home) as tailer:
        tailer.poll()
    seeded = seed_totals(home, NOW)
    assert sum(s.tokens for m in seeded.minutes.values() for s in m.values()) == 110
    assert len(seeded.seen) == 1 and not seeded.needs_seed
    assert sum(s.tokens for (a, d), s in seeded.days.items()) == 5500 + 110
