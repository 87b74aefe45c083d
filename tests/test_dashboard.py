"""pipeline.dashboard: the overview's periods (a differential check against `run_report`
over each period), the quarantine with line numbers of real logs, the alert log, and
`Changes` noticing feed lines and commits in a real home."""

from __future__ import annotations

import random
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import event, event_line, make_home
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli_report import home_with, tail_once

from pipeline.alerts import alert_log, put_in_outbox
from pipeline.config import Home
from pipeline.dashboard import (
    READ_CHUNK,
    Changes,
    LineNumbers,
    alerts_view,
    overview,
    period_starts,
    quarantine_view,
)
from pipeline.live import feed_path
from pipeline.query import ReportQuery
from pipeline.records import json_records
from pipeline.reports import run_report

ZONES = ["UTC", "Asia/Tokyo", "America/Los_Angeles"]
FIRST, LAST = date(2025, 7, 20), date(2025, 9, 3)

# ---------------------------------------------------------------- period_starts


@pytest.mark.parametrize(("today", "week", "month"), [
    (date(2025, 8, 20), date(2025, 8, 18), date(2025, 8, 1)),  # a Wednesday
    (date(2025, 8, 18), date(2025, 8, 18), date(2025, 8, 1)),  # a Monday: its own week
    (date(2025, 8, 31), date(2025, 8, 25), date(2025, 8, 1)),  # a Sunday
    (date(2025, 8, 1), date(2025, 7, 28), date(2025, 8, 1)),   # the week began last month
    (date(2025, 1, 1), date(2024, 12, 30), date(2025, 1, 1)),  # ... and last year
])
def test_period_starts(today: date, week: date, month: date) -> None:
    assert period_starts(today) == {"today": today, "week": week, "month": month}


@given(st.dates())
def test_a_week_starts_on_the_monday_at_most_six_days_back(today: date) -> None:
    starts = period_starts(today)
    assert starts["week"].isoweekday() == 1
    assert 0 <= (today - starts["week"]).days <= 6
    assert starts["week"].isocalendar()[:2] == today.isocalendar()[:2]
    assert (starts["month"].year, starts["month"].month, starts["month"].day) == (
        today.year, today.month, 1)


# ---------------------------------------------------------------- overview


@pytest.fixture(scope="module")
def month_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """Six weeks of usage by three agents at all hours (some near midnight, so that the time
    zone moves them a day), priced, unpriced and with the producers' own cost."""
    rng = random.Random(20250820)
    models = ["claude-sonnet-4-5", "gpt-5", "local-llama-3-8b"]
    events = []
    for number in range((LAST - FIRST).days * 4):
        day = FIRST + timedelta(days=rng.randrange((LAST - FIRST).days + 1))
        hour, minute = rng.choice([(0, 30), (2, 0), (12, 0), (15, 45), (23, 30)])
        fields: dict[str, Any] = {
            "ts": f"{day.isoformat()}T{hour:02d}:{minute:02d}:00Z",
            "agent": rng.choice(["claude", "codex", "gemini"]),
            "model": models[number % 3],
            "input_tokens": rng.randrange(1, 50_000),
            "output_tokens": rng.randrange(0, 5_000)}
        if number % 7 == 0:
            fields["cost_usd"] = round(rng.random(), 4)
        events.append(event(**fields))
    return home_with(tmp_path_factory.mktemp("overview") / "home", events)


COUNTS = ("events", "total_tokens", "cost_usd", "unpriced_events")


def assert_counts_equal(got: dict[str, Any], row: dict[str, Any]) -> None:
    assert (got["events"], got["total_tokens"], got["unpriced_events"]) == (
        row["events"], row["total_tokens"], row["unpriced_events"])
    if row["cost_usd"] is None:
        assert got["cost_usd"] is None
    else:
        assert got["cost_usd"] == pytest.approx(row["cost_usd"], abs=1e-5)


@settings(max_examples=20, deadline=None)
@given(today=st.dates(min_value=FIRST, max_value=LAST), tz=st.sampled_from(ZONES),
       cost_mode=st.sampled_from(["auto", "calculate"]))
def test_overview_is_the_report_of_each_period(month_home: Home, today: date, tz: str,
                                                cost_mode: str) -> None:
    view = overview(month_home, today, tz, cost_mode)
    assert (view["date"], view["tz"], view["cost_mode"]) == (today.isoformat(), tz, cost_mode)
    for period, start in period_starts(today).items():
        shown = view[period]
        assert (shown["since"], shown["until"]) == (start.isoformat(), today.isoformat())
        query = ReportQuery(by=("agent",), since=start, until=today, tz=tz, cost_mode=cost_mode)
        rows = json_records(run_report(month_home, query).rows)
        assert [a["agent"] for a in shown["agents"]] == [r["agent"] for r in rows]
        for agent, row in zip(shown["agents"], rows, strict=True):
            assert_counts_equal(agent, row)
        everyone = json_records(run_report(month_home, ReportQuery(
            by=("month",), since=start, until=today, tz=tz, cost_mode=cost_mode)).rows)
        total = {name: sum(r[name] for r in everyone) for name in COUNTS if name != "cost_usd"}
        costs = [r["cost_usd"] for r in everyone if r["cost_usd"] is not None]
        assert_counts_equal(shown, {**total, "cost_usd": sum(costs) if costs else None})


def test_overview_periods_nest(month_home: Home) -> None:
    view = overview(month_home, date(2025, 8, 20), "UTC")
    today, week, month = (view[p] for p in ("today", "week", "month"))
    assert 0 < today["events"] < week["events"] < month["events"]
    assert today["total_tokens"] < week["total_tokens"] < month["total_tokens"]
    assert month["unpriced_events"] > 0 and month["cost_usd"] > 0


def test_overview_of_an_empty_home(home: Home) -> None:
    view = overview(home, date(2025, 8, 20), "Europe/Istanbul")
    for period in ("today", "week", "month"):
        assert {k: view[period][k] for k in (*COUNTS, "agents")} == {
            "events": 0, "total_tokens": 0, "cost_usd": None, "unpriced_events": 0,
            "agents": []}


# ---------------------------------------------------------------- quarantine_view


def bad_json() -> bytes:
    return b'{"event_type": "agent_token_usage", oops}\n'


def negative_tokens() -> bytes:
    return event_line(input_tokens=-5)


@pytest.fixture
def quarantined_home(tmp_path: Path) -> Home:
    """mixed.jsonl with bad lines 2 and 4, then (a later pass) 6; gone.jsonl with bad line 2,
    which is then deleted."""
    home = make_home(tmp_path / "home")
    mixed, gone = home.logs / "mixed.jsonl", home.logs / "gone.jsonl"
    mixed.write_bytes(event_line() + bad_json() + event_line() + negative_tokens()
                      + event_line())
    tail_once(home)
    time.sleep(0.01)  # detected_at has milliseconds: the second pass is later
    with open(mixed, "ab") as handle:
        handle.write(b"[1, 2, 3]\n" + event_line())
    gone.write_bytes(event_line() + bad_json())
    tail_once(home)
    gone.unlink()
    return home


def test_quarantine_rows_have_the_lines_of_their_files(quarantined_home: Home) -> None:
    view = quarantine_view(quarantined_home, limit=10)
    assert (view["total"], view["matching"]) == (4, 4)
    assert view["reasons"] == {"invalid_json": 2, "not_object": 1, "schema_violation": 1}
    assert list(view["reasons"]) == sorted(view["reasons"])
    rows = view["rows"]
    assert {(r["file"], r["line"], r["reason"]) for r in rows[:2]} == {
        ("mixed.jsonl", 6, "not_object"), ("gone.jsonl", None, "invalid_json")}
    assert {(r["file"], r["line"], r["reason"]) for r in rows[2:]} == {
        ("mixed.jsonl", 2, "invalid_json"), ("mixed.jsonl", 4, "schema_violation")}
    stamps = [r["detected_at"] for r in rows]
    assert stamps == sorted(stamps, reverse=True) and stamps[1] > stamps[2]  # newest first
    lines = (quarantined_home.logs / "mixed.jsonl").read_bytes().splitlines()
    for row in rows:
        if row["line"] is not None:  # the line the number names is the line rejected
            assert lines[row["line"] - 1].decode() == row["excerpt"]
            assert sum(len(line) + 1 for line in lines[:row["line"] - 1]) == row["offset"]
        assert set(row) == {"file", "line", "offset", "reason", "message", "pointer",
                            "excerpt", "excerpt_truncated", "detected_at"}


def test_quarantine_reason_filter_and_limit(quarantined_home: Home) -> None:
    only = quarantine_view(quarantined_home, limit=10, reason="invalid_json")
    assert (only["total"], only["matching"]) == (4, 2)
    assert only["reasons"] == quarantine_view(quarantined_home, limit=1)["reasons"]
    assert [(r["file"], r["line"]) for r in only["rows"]] == [("gone.jsonl", None),
                                                              ("mixed.jsonl", 2)]
    newest = quarantine_view(quarantined_home, limit=1)["rows"]
    assert len(newest) == 1 and newest[0]["reason"] in ("not_object", "invalid_json")
    assert newest[0]["detected_at"] == max(
        r["detected_at"] for r in quarantine_view(quarantined_home, limit=10)["rows"])
    none = quarantine_view(quarantined_home, limit=10, reason="bom")
    assert (none["total"], none["matching"], none["rows"]) == (4, 0, [])


def test_an_empty_quarantine(home: Home) -> None:
    assert quarantine_view(home, limit=5) == {"total": 0, "matching": 0, "reasons": {},
                                              "rows": []}


# ---------------------------------------------------------------- LineNumbers


def test_line_numbers_of_offsets(tmp_path: Path) -> None:
    lines = [b"first", b"", b"third line", b"x" * 300, b"last"]
    (tmp_path / "a.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    numbers = LineNumbers(tmp_path, {})
    offset = 0
    for number, line in enumerate(lines, 1):
        assert numbers.of({"source": "a.jsonl", "offset": offset}) == number
        if len(line) > 1:  # inside a line is no line's start
            assert numbers.of({"source": "a.jsonl", "offset": offset + 1}) is None
        offset += len(line) + 1
    assert numbers.of({"source": "a.jsonl", "offset": offset + 1}) is None  # beyond the end
    for record in ({"source": "missing.jsonl", "offset": 0}, {"source": "a.jsonl"},
                   {"offset": 0}, {"source": "a.jsonl", "offset": -1},
                   {"source": "a.jsonl", "offset": "0"}, {"source": 3, "offset": 0}):
        assert numbers.of(record) is None, record


def test_line_numbers_across_read_chunks(tmp_path: Path) -> None:
    rng = random.Random(5)
    lines = [b"y" * rng.randrange(0, 5000) for _ in range(1200)]  # ~3 MB: several chunks
    data = b"".join(line + b"\n" for line in lines)
    assert len(data) > 2 * READ_CHUNK
    (tmp_path / "big.jsonl").write_bytes(data)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    numbers = LineNumbers(tmp_path, {})
    for number in [*range(1, len(lines) + 1, 37), len(lines)]:
        assert numbers.of({"source": "big.jsonl", "offset": starts[number - 1]}) == number
    around = [s for s in starts if s % READ_CHUNK > READ_CHUNK - 5000][:5]
    for start in around:  # lines that end just before a chunk's end, or cross it
        assert numbers.of({"source": "big.jsonl", "offset": start}) == starts.index(start) + 1


def test_a_file_rewritten_shorter_has_no_such_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"one\ntwo\nthree\nfour\n")
    assert LineNumbers(tmp_path, {}).of({"source": "a.jsonl", "offset": 14}) == 4
    path.write_bytes(b"one\ntwo\n")
    assert LineNumbers(tmp_path, {}).of({"source": "a.jsonl", "offset": 14}) is None


def test_a_rotated_file_holds_another_line_at_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    path.write_bytes(b'{"ok":1}\n{bad json\n')
    record = {"source": "app.jsonl", "offset": 9, "excerpt": "{bad json"}
    assert LineNumbers(tmp_path, {}).of(record) == 2
    path.rename(tmp_path / "app.jsonl.1")
    path.write_bytes(b'{"ok":2}\n{"event_type":"metric"}\n')  # a valid line starts there now
    assert LineNumbers(tmp_path, {}).of(record) is None


def test_a_file_is_read_only_as_far_as_asked(tmp_path: Path) -> None:
    (tmp_path / "big.jsonl").write_bytes(b"x\n" * (3 * READ_CHUNK))
    numbers = LineNumbers(tmp_path, {"big.jsonl": 10})
    assert numbers.of({"source": "big.jsonl", "offset": 10, "excerpt": "x"}) == 6
    assert len(numbers._starts["big.jsonl"]) <= READ_CHUNK // 2 + 1  # one chunk's lines


def test_the_end_of_a_file_is_no_line(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"good\nbad\n")
    (tmp_path / "a.jsonl").write_bytes(b"good\n")  # the bad last line removed by hand
    assert LineNumbers(tmp_path, {}).of({"source": "a.jsonl", "offset": 5}) is None


# ---------------------------------------------------------------- alerts_view


def alert(ts: str, scope: str = "claude") -> bytes:
    return orjson.dumps({"event_type": "budget_alert", "event_id": f"alert-{scope}-{ts}",
                         "ts": ts, "agent": "tally", "scope": scope}) + b"\n"


def test_alerts_newest_first_skipping_torn_lines(home: Home) -> None:
    log = alert_log(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(alert("2025-08-02T10:00:00Z") + b"garbage, not json\n"
                    + alert("2025-08-03T09:00:00Z", "codex") + alert("2025-08-01T12:00:00Z")
                    + b'{"event_type": "budget_alert", "ts": "2025-08-0')  # torn: no end
    view = alerts_view(home, limit=10)
    assert (view["total"], view["pending_delivery"]) == (3, 0)
    assert [(a["ts"], a["scope"]) for a in view["rows"]] == [
        ("2025-08-03T09:00:00Z", "codex"), ("2025-08-02T10:00:00Z", "claude"),
        ("2025-08-01T12:00:00Z", "claude")]
    limited = alerts_view(home, limit=2)
    assert limited["total"] == 3 and limited["rows"] == view["rows"][:2]


def test_alerts_waiting_for_delivery_are_counted(home: Home) -> None:
    assert alerts_view(home, limit=5) == {"total": 0, "pending_delivery": 0, "rows": []}
    put_in_outbox(home, orjson.loads(alert("2025-08-02T10:00:00Z")))
    put_in_outbox(home, orjson.loads(alert("2025-08-02T11:00:00Z")))
    assert alerts_view(home, limit=5)["pending_delivery"] == 2


def test_a_foreign_line_in_the_alert_log_is_skipped(home: Home) -> None:
    log = alert_log(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(alert("2025-08-02T10:00:00Z") + b"[1, 2]\n")
    assert alerts_view(home, limit=5)["total"] == 1


# ---------------------------------------------------------------- Changes


def feed(home: Home, data: bytes) -> None:
    with open(feed_path(home), "ab") as handle:
        handle.write(data)


def test_nothing_changed_is_no_change(home: Home) -> None:
    changes = Changes(home)
    assert changes.look() == []
    assert changes.look() == []


def test_each_feed_line_is_a_batch(home: Home) -> None:
    feed(home, orjson.dumps({"batch": 0}) + b"\n")  # before the first look: not news
    changes = Changes(home)
    feed(home, orjson.dumps({"batch": 1, "events": 3, "agents": ["claude"]}) + b"\n")
    assert changes.look() == [{"kind": "batch", "batch": 1, "events": 3, "agents": ["claude"]}]
    assert changes.look() == []
    feed(home, b'{"batch": 2')  # a line being written is not yet a batch
    assert changes.look() == []
    feed(home, b', "events": 1}\nnot json\n' + orjson.dumps({"batch": 3}) + b"\n")
    assert changes.look() == [{"kind": "batch", "batch": 2, "events": 1},
                              {"kind": "batch", "batch": 3}]


def test_the_first_feed_line_counts_when_there_was_no_feed(home: Home) -> None:
    assert not feed_path(home).exists()
    changes = Changes(home)
    feed(home, orjson.dumps({"batch": 1}) + b"\n")
    assert changes.look() == [{"kind": "batch", "batch": 1}]


def test_a_commit_is_a_change_of_the_checkpoint(home: Home) -> None:
    changes = Changes(home)
    (home.logs / "a.jsonl").write_bytes(event_line())
    tail_once(home)
    assert changes.look() == [{"kind": "changed", "what": ["checkpoint"]}]
    assert changes.look() == []
    with open(home.logs / "a.jsonl", "ab") as handle:
        handle.write(bad_json())
    tail_once(home)
    assert changes.look() == [{"kind": "changed", "what": ["checkpoint", "quarantine"]}]


def test_an_alert_is_a_change(home: Home) -> None:
    changes = Changes(home)
    alert_log(home).parent.mkdir(parents=True, exist_ok=True)
    alert_log(home).write_bytes(alert("2025-08-02T10:00:00Z"))
    assert changes.look() == [{"kind": "changed", "what": ["alerts"]}]


def test_batches_stand_for_the_commit_they_made(home: Home) -> None:
    changes = Changes(home)
    (home.logs / "a.jsonl").write_bytes(event_line())
    tail_once(home)
    feed(home, orjson.dumps({"batch": 1}) + b"\n")
    assert changes.look() == [{"kind": "batch", "batch": 1}]
    assert changes.look() == []  # the commit is not told again
