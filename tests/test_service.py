"""`tally run` (pipeline.service): one process follows, checks budgets, compacts on a
schedule and delivers alerts, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import orjson

from pipeline.alerts import alert_log
from pipeline.live import feed_path, read_live
from pipeline.reports import all_events
from pipeline.service import Compactions
from pipeline.writer import append_event
from tests.conftest import make_home, tally_executable
from tests.test_monitor import usage, wait_for


def test_tally_run_follows_compacts_alerts_and_stops_on_sigterm(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    home = make_home(tmp_path / "home", "[compactor]\nevery = 1.0\n[budgets]\n"
                     "daily_tokens = 2000\n"
                     f"[alerts]\ncommand = 'cat >> {calls}; echo >> {calls}'\n")
    run = subprocess.Popen([tally_executable(), "run", "--home", str(home.root)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: read_live(home) is not None, "live.json")
        for tokens in (850, 850):  # 85 %
            append_event(home.logs / "claude.jsonl", usage("claude", tokens))
        wait_for(lambda: calls.exists(), "the warning delivered")
        for tokens in (400, 400):  # 125 %
            append_event(home.logs / "claude.jsonl", usage("claude", tokens))
        wait_for(lambda: calls.read_text().count("\n") >= 2, "the exceeded alert delivered")
        wait_for(lambda: not list((home.stage / "agent_token_usage").glob("*.arrow")),
                 "a compaction")
        live = read_live(home)
        assert live is not None and live["all"]["today"]["tokens"] == 2500
        assert live["budgets"][0]["status"] == "exceeded"
        assert feed_path(home).exists()
    finally:
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err.decode()
    assert b"compaction(s) moved" in out
    delivered = [orjson.loads(line) for line in calls.read_text().split("\n") if line]
    assert sorted(d["alert"] for d in delivered) == ["TOKEN_BUDGET_EXCEEDED",
                                                     "TOKEN_BUDGET_WARNING"]
    assert all(d["text"].startswith(d["alert"]) for d in delivered)
    assert all_events(home, "agent_token_usage").collect().height == 4
    assert len(alert_log(home).read_bytes().splitlines()) == 2


def test_sigterm_lets_a_compaction_under_way_finish(tmp_path: Path) -> None:
    """The stop waits for the compaction thread: nothing is left half done."""
    home = make_home(tmp_path / "home", "[compactor]\nevery = 0.2\n")
    for n in range(200):
        append_event(home.logs / "a.jsonl", usage("a", n + 1))
    run = subprocess.Popen([tally_executable(), "run", "--home", str(home.root)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (home.lake / "agent_token_usage").exists(), "the first compaction")
    finally:
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err.decode()
    status = subprocess.run([tally_executable(), "status", "--home", str(home.root)],
                            capture_output=True, text=True)
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_failed_compaction_is_told_and_tried_again(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[compactor]\nevery = 0.05\n")
    append_event(home.logs / "a.jsonl", usage("a", 10))
    subprocess.run([tally_executable(), "tail", "--once", "--quiet", "--home",
                    str(home.root)], check=True)
    home.lake.rmdir()
    home.lake.write_text("")  # a file where the lake should be
    told: list[str] = []
    done: list[str] = []
    stop = threading.Event()
    compactions = Compactions(home, told.append, stop, done.append).start()
    try:
        wait_for(lambda: len(told) >= 2, "two failed attempts", timeout=20)
        home.lake.unlink()
        wait_for(lambda: bool(done), "a compaction once the lake can be written", timeout=20)
    finally:
        stop.set()
        compactions.join()
    assert all("compaction failed" in line for line in told[:2])
    assert compactions.result.failed_compactions >= 2
    assert done[0].startswith("compact: 1 events")
    assert compactions.result.compacted_events == 1


def test_an_idle_run_writes_nothing_and_exits_on_sigint(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    run = subprocess.Popen([tally_executable(), "run", "--quiet", "--home", str(home.root)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: read_live(home) is not None, "live.json")
        before = os.stat(home.state / "live.json").st_mtime_ns
        time.sleep(2)
        assert os.stat(home.state / "live.json").st_mtime_ns == before
    finally:
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err.decode()
    assert (out, err) == (b"", b"")
