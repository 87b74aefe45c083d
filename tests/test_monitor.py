"""Budgets checked as batches land (pipeline.monitor): the seed's numbers through a real
following tailer, weekly and cost budgets, a day boundary in a non-UTC zone, old logs,
and exactly one alert through SIGKILLs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import monitor as monitor_module
from pipeline.alerts import alert_log, outbox_dir, outbox_path, put_in_outbox
from pipeline.budgets import Budget, Crossing, local_today
from pipeline.compactor import run_compaction
from pipeline.config import Home, load_home
from pipeline.monitor import BudgetMonitor, check_budgets, check_budgets_after
from pipeline.reports import all_events
from pipeline.tailer import Tailer
from pipeline.writer import append_event
from tests.conftest import make_home, tally_executable
from tests.s3 import shared_lake_home

SEED_CONFIG = "[budgets]\n[budgets.agents.claude]\ndaily_tokens = 80000\n"


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def usage(agent: str, tokens: int, at: datetime | None = None, **extra: Any) -> dict[str, Any]:
    """A small usage event, now unless `at`: `tokens` split into input and output."""
    return {"event_type": "agent_token_usage", "agent": agent, "input_tokens": tokens * 4 // 5,
            "output_tokens": tokens - tokens * 4 // 5, "ts": iso(at or datetime.now(UTC)),
            **extra}


def alerts(home: Home) -> list[dict[str, Any]]:
    path = alert_log(home)
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [orjson.loads(line) for line in lines]


def kinds(home: Home) -> list[tuple[str, str, str]]:
    return sorted((a["scope"], a["period"], a["alert"]) for a in alerts(home))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def following(home: Home, *extra: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([tally_executable(), "tail", "--home", str(home.root), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})


def stop(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    return stderr.decode()


def log_many(home: Home, agent: str, events: int, tokens: int) -> None:
    for _ in range(events):
        append_event(home.logs / f"{agent}.jsonl", usage(agent, tokens))


@pytest.mark.slow
def test_the_seeds_budgets_through_many_small_events(tmp_path: Path) -> None:
    """150,000 tokens a day for everyone, 80,000 for claude: one WARNING at 80 % and one
    EXCEEDED each, printed by the tailer, never repeated by a restart, and in the lake."""
    home = make_home(tmp_path / "home", SEED_CONFIG)
    tailer = following(home)
    try:
        log_many(home, "claude", 70, 1000)  # claude at 87.5 %
        wait_for(lambda: len(alerts(home)) == 1, "claude's warning")
        log_many(home, "codex", 50, 1000)  # everyone at 80 %
        wait_for(lambda: len(alerts(home)) == 2, "the global warning")
        log_many(home, "claude", 10, 1000)  # claude at 100 %
        wait_for(lambda: len(alerts(home)) == 3, "claude's exceeded")
        log_many(home, "codex", 20, 1000)  # everyone at 100 %
        wait_for(lambda: len(alerts(home)) == 4, "the global exceeded")
        log_many(home, "codex", 30, 1000)
        time.sleep(1.5)
    finally:
        printed = stop(tailer)
    assert kinds(home) == [("all", "daily", "TOKEN_BUDGET_EXCEEDED"),
                           ("all", "daily", "TOKEN_BUDGET_WARNING"),
                           ("claude", "daily", "TOKEN_BUDGET_EXCEEDED"),
                           ("claude", "daily", "TOKEN_BUDGET_WARNING")]
    warning = next(a for a in alerts(home) if a["scope"] == "all" and "WARN" in a["alert"])
    assert (warning["usage"], warning["budget"]) == (120_000, 150_000)
    assert warning["percentage"] == 80.0
    assert printed.count("ALERT ") == 4
    restarted = following(home)
    time.sleep(3)
    stop(restarted)
    assert len(alerts(home)) == 4
    subprocess.run([tally_executable(), "tail", "--once", "--home", str(home.root)],
                   check=True, capture_output=True)
    run_compaction(home)
    assert all_events(home, "budget_alert").collect().height == 4


def in_process(home: Home, clock: Callable[[], datetime]) -> tuple[Tailer, BudgetMonitor]:
    """A tailer whose batches a monitor counts, as `tally tail` wires them."""
    tailer = Tailer(home)
    monitor = BudgetMonitor(home, lambda message: None, clock=clock)
    tailer.on_commit = monitor.batch_committed
    return tailer, monitor


def test_weekly_and_cost_budgets(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 0\nweekly_tokens = 5000\n"
                     "daily_cost_usd = 1.0\nweekly_cost_usd = 2.0\n")
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)  # a Thursday
    log = home.logs / "a.jsonl"
    append_event(log, usage("a", 3000, now - timedelta(days=2), cost_usd=1.2))  # Tuesday
    append_event(log, usage("a", 1500, now - timedelta(days=4), cost_usd=5.0))  # last week
    tailer, monitor = in_process(home, lambda: now)
    try:
        tailer.poll()
        assert monitor.raised == []  # 3,000 of 5,000 tokens this week; $1.20 of $2
        append_event(log, usage("b", 1100, now, cost_usd=0.5))
        tailer.poll()
    finally:
        tailer.close()
    # 4,100 tokens (82 %) and $1.70 (85 %) this week; $0.50 today is half the daily $1.
    assert kinds(home) == [("all", "weekly", "COST_BUDGET_WARNING"),
                           ("all", "weekly", "TOKEN_BUDGET_WARNING")]
    cost = next(a for a in alerts(home) if a["alert"] == "COST_BUDGET_WARNING")
    assert (cost["usage"], cost["budget"], cost["percentage"], cost["period_start"]) == (
        1.7, 2.0, 85.0, "2026-11-30")


def test_a_day_boundary_in_the_budget_time_zone(tmp_path: Path) -> None:
    """In New York, 04:30 UTC is yesterday evening: it counts for yesterday's budget."""
    home = make_home(tmp_path / "home", '[budgets]\ntz = "America/New_York"\n'
                     "daily_tokens = 1000\nweekly_tokens = 0\ndaily_cost_usd = 0\n")
    now = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)  # 01:00 in New York
    log = home.logs / "a.jsonl"
    append_event(log, usage("a", 950, datetime(2026, 12, 2, 4, 30, tzinfo=UTC)))
    append_event(log, usage("a", 500, datetime(2026, 12, 2, 5, 30, tzinfo=UTC)))
    tailer, monitor = in_process(home, lambda: now)
    try:
        tailer.poll()
        assert monitor.raised == []  # UTC would see 1,450 today; New York sees 500
        append_event(log, usage("a", 300, now))
        tailer.poll()
    finally:
        tailer.close()
    [warning] = alerts(home)
    assert (warning["alert"], warning["period_start"], warning["usage"]) == (
        "TOKEN_BUDGET_WARNING", "2026-12-02", 800)


def test_months_of_old_logs_raise_nothing(tmp_path: Path) -> None:
    """Only current periods alert; `tally budget --since` shows the old ones."""
    home = make_home(tmp_path / "home")
    now = datetime.now(UTC)
    for days in (40, 70, 100):
        append_event(home.logs / "old.jsonl", usage("a", 10**6, now - timedelta(days=days)))
    tailer, monitor = in_process(home, lambda: now)
    try:
        tailer.poll()
    finally:
        tailer.close()
    assert check_budgets(home, lambda message: None) == []
    assert monitor.raised == [] and alerts(home) == []


def test_a_cron_tail_with_nothing_new_checks_nothing(tmp_path: Path) -> None:
    """`tally tail --once` checks budgets when it committed a batch since the last check,
    and then only: a cron run that found nothing does not load Polars."""
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 100\n")
    append_event(home.logs / "a.jsonl", usage("a", 500))
    code = ("import sys\nfrom pipeline.cli import main\n"
            f"main(['tail', '--once', '--quiet', '--home', {str(home.root)!r}],"
            " standalone_mode=False)\nprint('polars' in sys.modules)\n")

    def run() -> list[str]:
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                              text=True, timeout=120)
        return [done.stdout.split()[-1], done.stderr]

    loaded, printed = run()
    assert loaded == "True" and "ALERT TOKEN_BUDGET_EXCEEDED" in printed
    loaded, printed = run()  # stages the alert's own line: a batch, so a check
    assert (loaded, printed) == ("True", "")
    loaded, printed = run()
    assert (loaded, printed) == ("False", "")
    assert len(alerts(home)) == 1


def test_a_check_that_could_not_alert_is_made_again(tmp_path: Path) -> None:
    """The alert cannot be stored: the watermark is not recorded, the next run alerts."""
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 100\n"
                     "[alerts]\ncommand = 'true'\n")
    append_event(home.logs / "a.jsonl", usage("a", 500))
    with Tailer(home) as tailer:
        tailer.poll()
    outbox_dir(home).parent.mkdir(parents=True)
    outbox_dir(home).write_text("")  # a file where the outbox should be
    told: list[str] = []
    assert check_budgets_after(home, told.append, tailer.checkpoint) == []
    assert any("could not write a budget alert" in line for line in told)
    outbox_dir(home).unlink()
    [raised] = check_budgets_after(home, told.append, tailer.checkpoint)
    assert raised["alert"] == "TOKEN_BUDGET_EXCEEDED"
    assert check_budgets_after(home, told.append, tailer.checkpoint) == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_exactly_one_alert_through_sigkill(tmp_path: Path, seed: int) -> None:
    """SIGKILL the following tailer around a crossing (at a random moment, or just
    before or after the alert's line): one alert event, delivered at least once."""
    rng = random.Random(seed)
    calls = tmp_path / "calls"
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 10000\n"
                     f"[alerts]\ncommand = 'echo $TALLY_ALERT_ID >> {calls}'\n")
    fault = {0: "alert:outboxed", 1: "alert:logged"}.get(seed % 3)
    env = {"TALLY_FAULT": fault} if fault else {}
    tailer = following(home, env=env)
    try:
        log_many(home, "a", 7, 1000)
        time.sleep(rng.uniform(0.5, 1.5))
        log_many(home, "a", 5, 1000)  # crosses 80 % and 100 % on its way
        time.sleep(rng.uniform(0.0, 1.5))
        tailer.kill()
        tailer.wait(timeout=30)
        for _ in range(2):  # restarts, killed at random moments
            tailer = following(home)
            time.sleep(rng.uniform(0.5, 2.0))
            tailer.kill()
            tailer.wait(timeout=30)
        tailer = following(home)
        wait_for(lambda: alert_log(home).exists() and calls.exists()
                 and not list(outbox_dir(home).glob("*.json")), "the alert's delivery")
    finally:
        stop(tailer)
    logged = [a["event_id"] for a in alerts(home)]
    assert len(logged) == len(set(logged)) >= 1
    assert logged[-1].endswith("TOKEN_BUDGET_EXCEEDED")
    delivered = set(calls.read_text().split())
    assert set(logged) <= delivered


def test_a_compaction_and_a_following_tailer_never_both_alert(tmp_path: Path) -> None:
    """The tailer's monitor learnt the alert log before `tally compact` alerted: it reads
    the log again, under the alert lock, before it raises anything."""
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 1000\n")
    now = datetime.now(UTC)
    tailer, monitor = in_process(home, lambda: now)
    committed: list[tuple[Any, frozenset[str]]] = []
    tailer.on_commit = lambda *batch: committed.append(batch)  # held back for a moment
    try:
        monitor.check()  # knows the (empty) alert log from here on
        append_event(home.logs / "a.jsonl", usage("a", 1500, now))
        tailer.poll()
        check_budgets(home, lambda message: None, clock=lambda: now)  # as `tally compact`
        assert len(alerts(home)) == 1
        monitor.batch_committed(*committed[0])
    finally:
        tailer.close()
    assert len(alerts(home)) == 1 and monitor.raised == []


def test_an_alert_is_raised_on_the_exact_count_not_the_running_one(tmp_path: Path) -> None:
    """A late copy of an event counted before the seed (its id is no longer remembered)
    inflates the running totals; the exact count says no, and sets them right."""
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 1000\nweekly_tokens = 0\n"
                     "daily_cost_usd = 0\n")
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    old = append_event(home.logs / "a.jsonl", usage("a", 700, now - timedelta(hours=2)))
    tailer, monitor = in_process(home, lambda: now)
    try:
        tailer.poll()
        run_compaction(home)
        monitor = BudgetMonitor(home, lambda message: None, clock=lambda: now)  # seeded
        tailer.on_commit = monitor.batch_committed
        append_event(home.logs / "a.jsonl", old)  # the same event again
        tailer.poll()
    finally:
        tailer.close()
    assert alerts(home) == []
    today = now.date()
    assert monitor.totals.days["a", today].tokens == 700


def test_a_period_that_ended_since_the_last_check_is_checked_once_more(tmp_path: Path) -> None:
    """Events of 23:55 read at 00:05 (a cron run) still alert yesterday's budget; a check
    older than yesterday does not make old periods alert."""
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 1000\nweekly_tokens = 0\n"
                     "daily_cost_usd = 0\n")
    midnight = datetime(2026, 12, 3, tzinfo=UTC)
    append_event(home.logs / "a.jsonl", usage("a", 1200, midnight - timedelta(minutes=5)))
    with Tailer(home) as tailer:
        tailer.poll()
    after = midnight + timedelta(minutes=5)
    stale = BudgetMonitor(home, lambda m: None, clock=lambda: after,
                          checked_day=date(2026, 11, 30))
    assert stale.raised == []
    checked = BudgetMonitor(home, lambda m: None, clock=lambda: after,
                            checked_day=date(2026, 12, 2))
    assert [(a["alert"], a["period_start"]) for a in checked.raised] == [
        ("TOKEN_BUDGET_EXCEEDED", "2026-12-02")]


def test_an_alert_killed_between_outbox_and_log_is_logged_by_the_next_run(
        tmp_path: Path) -> None:
    """The outbox held a WARNING whose line a kill prevented; usage is past the budget
    by the next run: both are in the log, the WARNING as it was raised."""
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 1000\nweekly_tokens = 0\n"
                     "daily_cost_usd = 0\n[alerts]\ncommand = 'true'\n")
    now = datetime.now(UTC)
    append_event(home.logs / "a.jsonl", usage("a", 1500, now))
    with Tailer(home) as tailer:
        tailer.poll()
    warning = Crossing(Budget("all", "daily", "tokens", 1000, 0.8), local_today(now, "UTC"),
                       1, 850)
    put_in_outbox(home, warning.event(iso(now)))
    check_budgets(home, lambda m: None, clock=lambda: now)
    assert [a["alert"] for a in alerts(home)] == ["TOKEN_BUDGET_WARNING",
                                                  "TOKEN_BUDGET_EXCEEDED"]
    assert alerts(home)[0]["usage"] == 850


def test_without_receivers_nothing_waits_in_the_outbox(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 100\n")
    append_event(home.logs / "a.jsonl", usage("a", 500))
    with Tailer(home) as tailer:
        tailer.poll()
    assert len(check_budgets(home, lambda m: None)) == 1
    assert not outbox_dir(home).exists() or not list(outbox_dir(home).iterdir())


def test_a_cron_run_with_nothing_new_still_retries_deliveries(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    home = make_home(tmp_path / "home", "[budgets]\ndaily_tokens = 100\n"
                     f"[alerts]\ncommand = 'test -e {tmp_path}/up && cat >> {calls}'\n")
    append_event(home.logs / "a.jsonl", usage("a", 500))
    with Tailer(home) as tailer:
        tailer.poll()
    told: list[str] = []
    assert len(check_budgets_after(home, told.append, tailer.checkpoint)) == 1
    assert not calls.exists() and any("command exited 1" in line for line in told)
    (tmp_path / "up").touch()
    with open(outbox_path(home, alerts(home)[0]["event_id"]), "rb") as handle:
        entry = orjson.loads(handle.read())
    put_in_outbox(home, entry["event"], attempts=1, due=0.0)  # due now
    assert check_budgets_after(home, told.append, tailer.checkpoint) == []  # nothing new
    assert calls.exists()


def test_a_monitor_on_a_shared_lake_counts_the_other_hosts_again(
        tmp_path: Path, s3_lake: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    lake = s3_lake
    here, there = (load_home(shared_lake_home(tmp_path, name, lake)) for name in ("here", "there"))

    def land(home: Home, tokens: int) -> None:  # another host's events reach the lake
        append_event(home.logs / "a.jsonl", usage("claude", tokens))
        with Tailer(home) as tailer:
            tailer.poll()
        run_compaction(home)

    def counted(monitor: BudgetMonitor) -> int:
        return sum(day.tokens for day in monitor.totals.day_usage())

    land(there, 300)
    monitor = BudgetMonitor(here, lambda message: None)
    assert counted(monitor) == 300  # seeded from the shared lake
    land(there, 500)
    monitor.refresh()
    assert counted(monitor) == 300  # not counted again within FLEET_SEED_SECONDS
    monkeypatch.setattr(monitor_module, "FLEET_SEED_SECONDS", 0.0)
    monitor.refresh()
    assert counted(monitor) == 800


def test_a_shared_lake_that_does_not_answer_is_not_asked_again_at_every_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = load_home(shared_lake_home(tmp_path, "here", "s3://nowhere/tally"))
    seeds: list[str] = []

    def unreachable(*_: Any) -> Any:
        seeds.append("tried")
        raise OSError("Generic S3 error: error sending request")

    monkeypatch.setattr("pipeline.observe.seed_totals", unreachable)
    told: list[str] = []
    monitor = BudgetMonitor(home, told.append)
    monitor.refresh()
    monitor.refresh()  # polls a moment later: the store is not asked again yet
    assert seeds == ["tried"] and monitor.failed
    assert told == ["could not count the current periods: Generic S3 error: error sending "
                    "request"]
    monkeypatch.setattr(monitor_module, "FLEET_SEED_SECONDS", 0.0)
    monitor.refresh()
    assert seeds == ["tried", "tried"]
