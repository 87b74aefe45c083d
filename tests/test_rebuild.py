"""pipeline.rebuild: replaying the logs into a fresh home, never smaller, safe to kill.

Homes are real: lines appended under logs/, staged by the real `Tailer`, compacted into
real Delta tables. A kill during the swap is simulated in-process by making the fault hook
raise (nothing of the rebuild runs after it, as after SIGKILL); the slow tests SIGKILL a
real `tally rebuild` through the `TALLY_FAULT` hook instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import make_home
from deltalake import DeltaTable

from bench.generate import write_log
from pipeline import rebuild, swap
from pipeline.checkpoint import ProcessLock
from pipeline.cli import main
from pipeline.compactor import run_compaction
from pipeline.config import Home, load_home
from pipeline.errors import LockTimeout, WouldLoseData
from pipeline.lake import scan_events
from pipeline.ledger import table_dirs, table_path
from pipeline.rebuild import inventory, run_rebuild
from pipeline.swap import PARTS, interrupted_rebuild, recover_interrupted_rebuild
from pipeline.tailer import PollResult, Tailer
from tests.s3 import MotoServer, shared_lake_home

TALLY = str(Path(sys.executable).with_name("tally"))
USAGE = "agent_token_usage"
PROGRESS = "task_progress"


# ------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TALLY_HOME", "TALLY_DEBUG", "TALLY_FAULT"):
        monkeypatch.delenv(name, raising=False)


def usage(event_id: str, ts: str = "2025-08-01T10:00:00Z", **extra: Any) -> dict[str, Any]:
    return {"event_type": USAGE, "event_id": event_id, "ts": ts, "agent": "claude",
            "input_tokens": 100, "output_tokens": 10, **extra}


def append(home: Home, name: str, events: list[dict[str, Any]], invalid: int = 0) -> None:
    home.logs.mkdir(parents=True, exist_ok=True)
    with open(home.logs / name, "ab") as handle:
        for event in events:
            handle.write(orjson.dumps(event) + b"\n")
        handle.write(b"not json\n" * invalid)


def tail(home: Home) -> PollResult:
    with Tailer(home) as tailer:
        return tailer.poll()


def count(home: Home, event_type: str = USAGE) -> int:
    """Events of a type as every reader sees them: lake + stage, each once."""
    frame = scan_events(home, event_type)
    return 0 if frame is None else int(frame.select(pl.len()).collect().item())


def lake(home: Home, event_type: str = USAGE) -> pl.DataFrame:
    """The raw table, one row per stored row."""
    return pl.read_delta(str(table_path(home, event_type)))


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def leftovers(home: Home) -> list[str]:
    return sorted(p.name for p in home.root.iterdir() if p.name.startswith(
        (".rebuild-", ".replaced-", "rebuild-backup-")))


def backups(home: Home) -> list[Path]:
    return sorted(home.root.glob("rebuild-backup-*"))


def part_ids(root: Path) -> dict[str, int]:
    """The inode of each part: a rename keeps it, so it tells old directories from new."""
    return {name: os.stat(root / name).st_ino for name in PARTS}


def report(home: Home) -> Any:
    result = invoke("report", "--by", "agent,day", "--format", "json", "--home", str(home.root))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


def pruned_home(home: Home) -> Home:
    """1,000 events (and 100 rejected lines) in the lake from 100 logs, then 99 logs gone."""
    for n in range(100):
        append(home, f"agent-{n:03d}.jsonl", [usage(f"e{n}-{i}") for i in range(10)],
               invalid=1)
    assert tail(home).staged == 1000
    assert run_compaction(home).events == 1000
    for n in range(1, 100):
        (home.logs / f"agent-{n:03d}.jsonl").unlink()
    return home


PRUNED = ("rebuild would leave fewer events: agent_token_usage 1,000 -> 10, "
          "quarantined lines 100 -> 1")


# ------------------------------------------------------------------------------- rebuild


def test_rebuild_equals_the_incremental_lake(home: Home) -> None:
    for cycle in range(4):
        write_log(home.logs / f"gen-{cycle}.jsonl", 700, seed=cycle, days=3, invalid_ratio=0.02)
        append(home, "manual.jsonl", [usage(f"dup-{cycle}", "2025-08-02T10:00:00Z")] * 2)
        tail(home)
        run_compaction(home, rows_per_commit=300)
    types = [p.name for p in table_dirs(home)]
    assert len(types) >= 4
    order = ["event_id", "_source", "_offset"]
    incremental = {t: lake(home, t).sort(order) for t in types}
    readers = {t: scan_events(home, t).collect().sort("event_id")  # type: ignore[union-attr]
               for t in types}
    quarantined = [line for p in sorted(home.quarantine.glob("*.jsonl"))
                   for line in p.read_bytes().splitlines()]
    assert len(quarantined) > 0

    result = run_rebuild(home)

    # Each cycle's "dup" line twice, kept once on write.
    assert result.compaction.events == sum(f.height for f in incremental.values()) == (
        4 * 702 - len(quarantined) - 4)
    assert result.before == result.after and result.backup is None and result.recovered == []
    assert [p.name for p in table_dirs(home)] == types
    assert leftovers(home) == []
    for event_type in types:
        rebuilt = lake(home, event_type).sort(order)
        assert rebuilt.columns == incremental[event_type].columns
        assert rebuilt.equals(incremental[event_type]), event_type  # every column, every row
        again = scan_events(home, event_type).collect().sort("event_id")  # type: ignore[union-attr]
        assert again.equals(readers[event_type]), event_type
    rebuilt_quarantine = [line for p in sorted(home.quarantine.glob("*.jsonl"))
                          for line in p.read_bytes().splitlines()]
    strip = [(r["source"], r["offset"], r["reason"]) for r in map(orjson.loads, quarantined)]
    assert sorted(strip) == sorted((r["source"], r["offset"], r["reason"])
                                   for r in map(orjson.loads, rebuilt_quarantine))

    # The rebuilt checkpoint and lake agree: new lines land exactly once, old ones stay once.
    append(home, "manual.jsonl", [usage("after-rebuild", "2025-08-03T10:00:00Z")])
    assert tail(home).staged == 1
    assert run_compaction(home).events == 1
    ids = lake(home)["event_id"].to_list()
    assert ids.count("after-rebuild") == 1 and ids.count("dup-0") == 1


def test_cli_rebuild_reports_the_lake_and_leaves_nothing_behind(home: Home) -> None:
    append(home, "a.jsonl", [usage(f"a-{i}") for i in range(7)])
    tail(home)
    run_compaction(home)
    before = part_ids(home.root)
    result = invoke("rebuild", "--home", str(home.root))
    assert result.exit_code == 0, result.output
    assert re.search(r"^rebuild: 7 events", result.stdout, re.MULTILINE), result.output
    assert f"lake: {home.lake}" in result.stdout
    assert "changed:" not in result.output and "kept in" not in result.output
    assert sorted(lake(home)["event_id"]) == sorted(f"a-{i}" for i in range(7))
    assert leftovers(home) == []
    assert all(part_ids(home.root)[n] != before[n] for n in PARTS)  # all four replaced


def test_cli_rebuild_help_has_examples_of_both_forms() -> None:
    result = invoke("rebuild", "--help")
    assert result.exit_code == 0
    assert re.search(r"Examples:\n\s+tally rebuild --home .*\n\s+tally rebuild --force",
                     result.output), result.output
    assert "--force" in result.output and "rebuild-backup-" in result.output


def test_a_rebuild_of_an_empty_home_swaps_in_empty_parts(home: Home) -> None:
    result = run_rebuild(home)
    assert result.compaction.events == 0 and result.after.events == {}
    assert all((home.root / name).is_dir() for name in PARTS) and leftovers(home) == []


# ------------------------------------------------------------------------------- refusal


def test_rebuild_after_pruned_logs_refuses_and_changes_nothing(home: Home) -> None:
    pruned_home(home)
    before = part_ids(home.root)
    with pytest.raises(WouldLoseData) as refused:
        run_rebuild(home)
    assert refused.value.message == PRUNED
    assert refused.value.exit_code == 6
    assert "old logs pruned" in str(refused.value.hint)
    assert f"--force to replace the lake anyway, the old lake is then kept in " \
           f"{home.root}/rebuild-backup-<time>/" in str(refused.value.hint)
    assert count(home) == 1000 and lake(home).height == 1000
    assert part_ids(home.root) == before and leftovers(home) == []


def test_cli_rebuild_refusal_is_one_line_and_exit_6(home: Home) -> None:
    pruned_home(home)
    result = invoke("rebuild", "--home", str(home.root))
    assert result.exit_code == 6, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {PRUNED}"
    assert len(lines) == 2 and lines[1].startswith("  hint: the logs no longer hold every event")
    assert "nothing was changed" in lines[1] and "--force" in lines[1]
    assert result.stdout == "" and count(home) == 1000 and leftovers(home) == []


def test_staged_events_count_towards_the_refusal(home: Home) -> None:
    append(home, "a.jsonl", [usage(f"a-{i}") for i in range(20)])
    append(home, "b.jsonl", [usage(f"b-{i}") for i in range(3)])
    tail(home)  # staged, never compacted
    (home.logs / "a.jsonl").unlink()
    with pytest.raises(WouldLoseData) as refused:
        run_rebuild(home)
    assert refused.value.message == "rebuild would leave fewer events: agent_token_usage 23 -> 3"
    assert count(home) == 23 and leftovers(home) == []


def test_more_events_and_fewer_rejects_are_not_refused(home: Home) -> None:
    """Fixing rejected lines in a log and rebuilding is what rebuild is for."""
    append(home, "a.jsonl", [usage(f"a-{i}") for i in range(5)], invalid=2)
    tail(home)
    run_compaction(home)
    fixed = [usage(f"a-{i}") for i in range(5)] + [usage("fixed-1"), usage("fixed-2")]
    (home.logs / "a.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in fixed))
    result = invoke("rebuild", "--home", str(home.root))
    assert result.exit_code == 0, result.output
    assert "changed: agent_token_usage 5 -> 7, quarantined lines 2 -> 0" in result.stdout
    assert count(home) == 7 and backups(home) == [] and leftovers(home) == []


def test_cli_rebuild_force_replaces_the_lake_and_keeps_the_old_one(home: Home) -> None:
    pruned_home(home)
    before = part_ids(home.root)
    result = invoke("rebuild", "--force", "--home", str(home.root))
    assert result.exit_code == 0, result.output
    assert count(home) == 10 and lake(home).height == 10
    (backup,) = backups(home)
    assert leftovers(home) == [backup.name]
    assert sorted(p.name for p in backup.iterdir()) == sorted(PARTS)
    assert part_ids(backup) == before  # the old directories themselves, moved
    assert DeltaTable(str(backup / "lake" / USAGE)).to_pyarrow_table().num_rows == 1000
    kept = Home(root=backup, logs=home.logs)
    assert count(kept) == 1000 and inventory(kept).quarantined == 100
    assert "changed: agent_token_usage 1,000 -> 10, quarantined lines 100 -> 1" in result.stdout
    assert (f"the previous lake is kept in {backup}; delete it when you no longer need it"
            in result.stdout)
    # The new home goes on: one new line lands once.
    append(home, "agent-000.jsonl", [usage("later")])
    assert tail(home).staged == 1 and run_compaction(home).events == 1 and count(home) == 11


def test_an_uncountable_lake_is_refused_unless_forced(home: Home) -> None:
    append(home, "a.jsonl", [usage(f"a-{i}") for i in range(4)])
    tail(home)  # staged only
    (stage_file,) = (home.stage / USAGE).glob("b*.arrow")
    stage_file.write_bytes(b"garbage, not Arrow IPC")
    with pytest.raises(WouldLoseData, match=r"^cannot count the events of the current lake"):
        run_rebuild(home)
    assert leftovers(home) == [] and stage_file.read_bytes().startswith(b"garbage")
    result = run_rebuild(home, force=True)
    assert result.before is None and count(home) == 4
    assert result.backup is not None and (result.backup / "stage" / USAGE / stage_file.name
                                          ).read_bytes().startswith(b"garbage")


# ------------------------------------------------------------------------------- locks


class Killed(BaseException):
    """Stands for SIGKILL: raised by the fault hook, caught by nothing in tally."""


def patch_fault(monkeypatch: pytest.MonkeyPatch, hook: Callable[[str], None]) -> None:
    """Replace the rebuild's fault hook, in the swap and where the rebuild calls it."""
    def rebuild_fault(stage: str, point: str) -> None:
        assert stage == "rebuild"
        hook(point)

    monkeypatch.setattr(swap, "fault", rebuild_fault)
    monkeypatch.setattr(rebuild, "fault", rebuild_fault)


def kill_at(monkeypatch: pytest.MonkeyPatch, point: str, nth: int = 1) -> None:
    hits: Counter[str] = Counter()

    def fault(reached: str) -> None:
        hits[reached] += 1
        if reached == point and hits[reached] == nth:
            raise Killed(f"{point}:{nth}")

    patch_fault(monkeypatch, fault)


def test_rebuild_refuses_while_a_tailer_runs(home: Home) -> None:
    append(home, "a.jsonl", [usage("a")])
    with Tailer(home), pytest.raises(LockTimeout, match="another tailer is running"):
        run_rebuild(home)
    assert leftovers(home) == []


def probe_locks(home: Home, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Once every part is swapped (state/ is the fresh one), try to take its two locks."""
    taken: list[str] = []

    def probe(point: str) -> None:
        if point == "before_cleanup":
            for name in ("tailer.lock", "compact.lock"):
                with pytest.raises(LockTimeout):
                    ProcessLock(home.state / name, name).acquire(0)
                taken.append(name)

    patch_fault(monkeypatch, probe)
    return taken


def test_the_fresh_state_locks_are_held_during_the_swap(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """After state/ is swapped, a tailer or compaction must still find its locks taken."""
    append(home, "a.jsonl", [usage(f"a-{i}") for i in range(3)])
    tail(home)
    taken = probe_locks(home, monkeypatch)
    run_rebuild(home)
    assert taken == ["tailer.lock", "compact.lock"]
    ProcessLock(home.state / "tailer.lock", "tailer").acquire(0).release()  # released after


# ------------------------------------------------------------------------------- recovery


def busy_home(home: Home) -> Home:
    """Lake, stage (staged, not compacted) and quarantine all hold something."""
    write_log(home.logs / "gen.jsonl", 400, seed=7, days=3, invalid_ratio=0.05)
    tail(home)
    run_compaction(home)
    append(home, "late.jsonl", [usage(f"late-{i}") for i in range(30)], invalid=2)
    assert tail(home).staged == 30
    return home


def assert_consistent(home: Home, totals: Any, old: dict[str, int], *, new: bool) -> None:
    """No leftovers; every part old or every part new; the same totals before and after a
    tail and a compaction."""
    assert [p.name for p in interrupted_rebuild(home)] == []
    now = part_ids(home.root)
    if new:
        assert all(now[name] != old[name] for name in PARTS), (now, old)
    else:
        assert now == old
    assert report(home) == totals
    assert tail(home).staged == 0
    run_compaction(home)
    assert report(home) == totals


def test_a_rebuild_first_finishes_an_interrupted_one(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    busy_home(home)
    totals = report(home)
    kill_at(monkeypatch, "mid_swap", 4)
    with pytest.raises(Killed):
        run_rebuild(home)
    monkeypatch.undo()
    result = invoke("rebuild", "--home", str(home.root))
    assert result.exit_code == 0, result.output
    assert re.search(r"^recovered: finished the rebuild \S+ that was interrupted",
                     result.stderr, re.MULTILINE), result.output
    assert leftovers(home) == [] and report(home) == totals


# ------------------------------------------------------------------------------- SIGKILL


def tally_rebuild(home: Home, fault: str | None = None,
                  *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TALLY_FAULT"}
    if fault is not None:
        env["TALLY_FAULT"] = fault
    return subprocess.run([TALLY, "rebuild", "--home", str(home.root), *extra], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "swapped"), [
    ("compact:before_write", False),  # inside the build: no journal yet
    ("rebuild:before_swap", True),
    ("rebuild:mid_swap:3", True),
    ("rebuild:mid_swap:7", True),
    ("rebuild:before_cleanup", True),
    ("rebuild:mid_cleanup:2", True),
])
def test_sigkilled_rebuild_leaves_a_home_wholly_old_or_wholly_new(
        home: Home, fault: str, swapped: bool) -> None:
    busy_home(home)
    totals, old = report(home), part_ids(home.root)
    killed = tally_rebuild(home, fault)
    assert killed.returncode == -9, killed.stderr
    assert interrupted_rebuild(home) != []
    recover_interrupted_rebuild(home)
    assert_consistent(home, totals, old, new=swapped)


@pytest.mark.slow
def test_sigkilled_recovery_is_finished_by_the_next_rebuild(home: Home) -> None:
    busy_home(home)
    totals = report(home)
    assert tally_rebuild(home, "rebuild:mid_swap:4", "--force").returncode == -9
    assert tally_rebuild(home, "rebuild:mid_swap:1").returncode == -9  # inside the recovery
    finished = tally_rebuild(home)
    assert finished.returncode == 0, finished.stderr
    assert "recovered: finished the rebuild" in finished.stderr
    assert "the previous lake is kept in" in finished.stderr  # the first run's --force
    assert len(backups(home)) == 1 and [p.name for p in interrupted_rebuild(home)] == []
    assert report(home) == totals
    assert tail(home).staged == 0


def test_alerts_waiting_for_delivery_outlive_the_rebuild(home: Home) -> None:
    """state/ is swapped for a fresh one; the outbox is carried over into it."""
    from pipeline.alerts import pending_alerts, put_in_outbox

    append(home, "a.jsonl", [usage("a-1")])
    tail(home)
    put_in_outbox(home, {"event_type": "budget_alert", "event_id": "tally-budget:x"})
    run_rebuild(home)
    assert [entry["event"]["event_id"] for _, entry in pending_alerts(home)] == [
        "tally-budget:x"]


# ------------------------------------------------------------------ a lake many hosts share


def shared_rows(lake_uri: str, options: dict[str, str]) -> pl.DataFrame:
    return pl.read_delta(f"{lake_uri}/{USAGE}", storage_options=options).select(
        "event_id", "host", "input_tokens").sort("event_id")


def test_a_rebuild_on_a_shared_lake_replaces_only_this_hosts_events(
        tmp_path: Path, s3_lake: str, moto_server: MotoServer) -> None:
    lake_uri = s3_lake
    homes = {name: load_home(shared_lake_home(tmp_path, name, lake_uri))
             for name in ("host-a", "host-b")}
    # The same five events reached both hosts; b's copies are larger, so they win.
    append(homes["host-b"], "b.jsonl", [usage(f"b-{i}") for i in range(20)]
           + [usage(f"shared-{i}", input_tokens=900) for i in range(5)])
    append(homes["host-a"], "a.jsonl", [usage(f"a-{i}") for i in range(30)]
           + [usage(f"shared-{i}", input_tokens=7) for i in range(5)])
    for name in ("host-b", "host-a"):
        tail(homes[name])
        run_compaction(homes[name])
    before = shared_rows(lake_uri, moto_server.options)
    assert before.height == before["event_id"].n_unique() == 55
    assert set(before.filter(pl.col("event_id").str.starts_with("shared"))["host"]) == {"host-b"}
    table = DeltaTable(f"{lake_uri}/{USAGE}", storage_options=moto_server.options)
    table.delete("event_id = 'a-7'")  # damage: one of host-a's events lost from the lake

    result = run_rebuild(homes["host-a"])

    assert result.before is not None  # 29 of a's events were there; 30 will be
    assert (result.before.events[USAGE], result.after.events[USAGE]) == (29, 30)
    after = shared_rows(lake_uri, moto_server.options)
    assert after.equals(before)  # the same events, each once, b's rows untouched
    table.update_incremental()
    [last] = table.history(1)
    assert last["operationParameters"]["predicate"] == "host = 'host-a'"
    assert not interrupted_rebuild(homes["host-a"])
    assert not any(homes["host-a"].lake.rglob("_delta_log"))  # no local tables left
    # The host goes on under the rebuilt state: new lines land once.
    append(homes["host-a"], "a.jsonl", [usage("a-late")])
    tail(homes["host-a"])
    run_compaction(homes["host-a"])
    later = shared_rows(lake_uri, moto_server.options)
    assert later.height == later["event_id"].n_unique() == 56
    report = runner_report(homes["host-b"])
    assert report == runner_report(homes["host-a"])
    assert sum(row["events"] for row in report) == 56


def runner_report(home: Home) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["report", "--by", "host", "--format", "json",
                                       "--home", str(home.root)])
    assert result.exit_code == 0, result.output
    records: list[dict[str, Any]] = orjson.loads(result.stdout)
    return records


def test_a_rebuild_on_a_shared_lake_refuses_to_lose_events_other_hosts_hold_too(
        tmp_path: Path, s3_lake: str, moto_server: MotoServer) -> None:
    lake_uri = s3_lake
    a, b = (load_home(shared_lake_home(tmp_path, name, lake_uri)) for name in ("a", "b"))
    append(b, "b.jsonl", [usage(f"shared-{i}", input_tokens=900) for i in range(5)])
    append(a, "a.jsonl", [usage(f"a-{i}") for i in range(10)])
    for home in (b, a):
        tail(home)
        run_compaction(home)
    # a's log loses 5 of its own events but gains the 5 that b's rows hold: as many lines.
    (a.logs / "a.jsonl").unlink()
    append(a, "a2.jsonl", [usage(f"a-{i}") for i in range(5)]
           + [usage(f"shared-{i}", input_tokens=7) for i in range(5)])
    with pytest.raises(WouldLoseData, match="agent_token_usage 10 -> 5"):
        run_rebuild(a)
    assert shared_rows(lake_uri, moto_server.options).height == 15  # nothing changed
