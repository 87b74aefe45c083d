"""Issue 18's findings, each tried the way a hostile machine or a hurried operator would,
through the real `tally` command: the outcome is exact counts, or one line naming the
file with the documented exit code. Never a traceback (the last test runs every command
over every damaged home)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import (
    assert_one_line_error,
    event_line,
    fill,
    make_home,
    run_tally,
    small_tmpfs,
)

from pipeline.cli import main
from pipeline.config import Home, load_home
from pipeline.lake import scan_events
from pipeline.maintenance import RUN_MARKER
from pipeline.stage import iter_quarantine

USAGE = "agent_token_usage"
EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 74, 75}  # the README's table; 70 is a bug


def write(path: Path, count: int, **fields: object) -> list[bytes]:
    lines = [event_line(**fields) for _ in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        handle.write(b"".join(lines))
    return lines


def events(home: Home, event_type: str = USAGE) -> int:
    frame = scan_events(load_home(home.root), event_type)
    return 0 if frame is None else int(frame.select(pl.len()).collect().item())


def lake_rows(home: Home) -> int:
    path = home.lake / USAGE
    return pl.read_delta(str(path)).height if (path / "_delta_log").is_dir() else 0


def tally(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tally(*args, "--home", str(home.root))


def ok(run: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    return run


# ------------------------------------------------------------------ 1-4: silent loss


def test_1_a_deleted_checkpoint_loses_no_event(home: Home) -> None:
    write(home.logs / "a.jsonl", 300)
    ok(tally(home, "tail", "--once"))
    ok(tally(home, "compact"))
    (home.state / "checkpoint.json").unlink()
    (home.state / ".checkpoint.json.spare").unlink(missing_ok=True)
    write(home.logs / "b.jsonl", 200)
    ok(tally(home, "tail", "--once"))
    ok(tally(home, "compact"))
    assert events(home) == 500


def test_1_a_checkpoint_restored_from_a_backup_loses_no_event(home: Home,
                                                              tmp_path: Path) -> None:
    write(home.logs / "a.jsonl", 300)
    ok(tally(home, "tail", "--once"))
    backup = tmp_path / "checkpoint.json"
    shutil.copyfile(home.state / "checkpoint.json", backup)
    for _ in range(3):
        write(home.logs / "a.jsonl", 10)
        ok(tally(home, "tail", "--once"))
    ok(tally(home, "compact"))
    shutil.copyfile(backup, home.state / "checkpoint.json")
    write(home.logs / "b.jsonl", 200)
    told = ok(tally(home, "tail", "--once")).stderr
    assert "behind the lake" in told
    # The 30 lines after the restored checkpoint are read again: their events count once.
    assert "compact: 200 events" in ok(tally(home, "compact")).stdout
    assert events(home) == 530


def test_2_a_log_written_anew_with_the_same_first_line_is_read_whole(home: Home) -> None:
    first = event_line(event_id="the-first")
    log = home.logs / "a.jsonl"
    log.write_bytes(first + b"".join(event_line() for _ in range(49)))
    ok(tally(home, "tail", "--once"))
    log.unlink()
    new = [event_line() for _ in range(98)]
    log.write_bytes(first + b"".join(new))
    assert "staged 99 events" in ok(tally(home, "tail", "--once")).stdout
    ok(tally(home, "compact"))
    assert events(home) == 50 + 98  # "the-first" twice is one event


def test_3_rebuild_after_pruned_logs_refuses_and_keeps_the_lake(home: Home) -> None:
    for n in range(10):
        write(home.logs / f"a{n}.jsonl", 100)
    ok(tally(home, "tail", "--once"))
    ok(tally(home, "compact"))
    for n in range(1, 10):
        (home.logs / f"a{n}.jsonl").unlink()
    assert_one_line_error(tally(home, "rebuild"), 6, "1,000 -> 100")
    assert events(home) == 1000 and lake_rows(home) == 1000


def test_4_lost_delta_log_files_are_noticed(home: Home) -> None:
    home.config_path.write_text("[compactor]\nauto_optimize_files = 0\n")  # a commit a run
    for _ in range(5):
        write(home.logs / "a.jsonl", 100)
        ok(tally(home, "tail", "--once"))
        ok(tally(home, "compact"))
    log = home.lake / USAGE / "_delta_log"
    for commit in sorted(log.glob("*.json"))[-2:]:
        commit.unlink()
    assert lake_rows(home) == 300
    status = tally(home, "status")
    assert status.returncode == 5 and "commits were lost" in status.stderr
    assert "Traceback" not in status.stderr
    write(home.logs / "a.jsonl", 10)
    ok(tally(home, "tail", "--once"))
    assert_one_line_error(tally(home, "compact"), 5, "commits were lost")
    ok(tally(home, "rebuild"))  # the logs hold every event: nothing shrinks
    assert events(home) == 510 and lake_rows(home) == 510


# ------------------------------------------------------------------ 5-6: one input stops all


def test_5_a_time_outside_the_utc_years_is_quarantined_and_the_rest_compacts(
        home: Home) -> None:
    write(home.logs / "a.jsonl", 5)
    write(home.logs / "a.jsonl", 1, ts="0001-01-01T00:00:00+14:00")
    write(home.logs / "a.jsonl", 1, ts="9999-12-31T23:00:00-05:00")
    write(home.logs / "a.jsonl", 5)
    validated = tally(home, "validate", str(home.logs / "a.jsonl"))
    assert validated.returncode == 1 and validated.stdout.count("ts_out_of_range") == 2
    ok(tally(home, "tail", "--once"))
    ok(tally(home, "compact"))
    assert lake_rows(home) == 10
    reasons = [r["reason"] for r in iter_quarantine(home.quarantine)]
    assert reasons == ["ts_out_of_range", "ts_out_of_range"]


def test_5_a_stage_file_of_an_older_tally_with_such_a_time_does_not_stop_compaction(
        home: Home) -> None:
    from pipeline.frames import FrameBuilder, write_stage_frame
    from pipeline.stage import BatchId

    ok(tally(home, "tail", "--once"))  # a checkpoint and its stream
    rows = [orjson.loads(line) for line in write(home.logs / "x", 3)]
    rows[1]["ts"] = "0001-01-01T00:00:00+14:00"  # staged before validation refused it
    frame = FrameBuilder(USAGE).build(rows, ["old.jsonl"] * 3, [0, 100, 200])
    write_stage_frame(home.stage, BatchId("", 1), frame)  # a home from before streams
    run = ok(tally(home, "compact"))
    assert "1 row(s) the lake cannot hold were quarantined" in run.stderr
    assert lake_rows(home) == 2
    [record] = list(iter_quarantine(home.quarantine))
    assert (record["source"], record["offset"], record["reason"]) == (
        "old.jsonl", 100, "ts_out_of_range")


def test_6_a_file_name_that_is_not_utf8_stops_nothing(home: Home) -> None:
    write(home.logs / os.fsdecode(b"bad\xff.jsonl"), 20)
    write(home.logs / "good.jsonl", 30)
    ok(tally(home, "tail", "--once"))
    write(home.logs / "good.jsonl", 5)
    ok(tally(home, "tail", "--once"))
    ok(tally(home, "compact"))
    assert events(home) == 55
    assert "bad\\xff.jsonl" in ok(tally(home, "status")).stdout
    sources = set(pl.read_delta(str(home.lake / USAGE))["_source"])
    assert sources == {"bad\\xff.jsonl", "good.jsonl"}


# ------------------------------------------------------------------ 7: tracebacks


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "not an object"])
def test_7_a_damaged_checkpoint_is_recovered_and_loses_nothing(home: Home,
                                                               damage: str) -> None:
    write(home.logs / "a.jsonl", 100)
    ok(tally(home, "tail", "--once"))
    write(home.logs / "a.jsonl", 50)
    ok(tally(home, "tail", "--once"))
    path = home.state / "checkpoint.json"
    body = path.read_bytes()
    path.write_bytes({"garbage": b"\x00garbage{", "truncated": body[: len(body) // 2],
                      "empty": b"", "not an object": b"[1, 2]"}[damage])
    assert "total" in ok(tally(home, "report")).stdout
    assert events(home) == 150  # readers count the damaged checkpoint's batches too
    status = tally(home, "status")
    assert status.returncode == 5 and "checkpoint" in status.stderr
    told = ok(tally(home, "tail", "--once")).stderr
    assert "set aside" in told
    ok(tally(home, "compact"))
    assert events(home) == 150 and ok(tally(home, "status")).returncode == 0
    assert list(home.state.glob("checkpoint.json.damaged-*"))


def test_7_a_damaged_stage_file_is_staged_again_from_the_logs(home: Home) -> None:
    write(home.logs / "a.jsonl", 100)
    ok(tally(home, "tail", "--once"))
    [stage_file] = list((home.stage / USAGE).glob("b*.arrow"))
    stage_file.write_bytes(stage_file.read_bytes()[:500])
    assert_one_line_error(tally(home, "report"), 5, str(stage_file))
    assert tally(home, "status").returncode == 5
    run = ok(tally(home, "compact"))
    assert "100 events staged again from the logs" in run.stderr
    assert lake_rows(home) == 100 and ok(tally(home, "status")).returncode == 0


@pytest.mark.slow
def test_7_a_full_disk_during_tail_and_compact_says_so_and_loses_nothing(
        tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with small_tmpfs(tmp_path / "disk", "6m") as disk:
        home = make_home(disk / "home", f'[paths]\nlogs = "{logs}"\n')
        write(logs / "a.jsonl", 10)
        ok(tally(home, "tail", "--once"))
        write(logs / "a.jsonl", 1990)
        filler = fill(disk)
        assert_one_line_error(tally(home, "tail", "--once"), 74, "No space left on device",
                              str(home.stage))
        filler.unlink()
        ok(tally(home, "tail", "--once"))
        filler = fill(disk, leave=8192)
        run = tally(home, "compact")
        assert_one_line_error(run, 74, "No space left on device")
        assert not list(home.lake.rglob("*.parquet"))  # no file of the failed write left
        filler.unlink()
        ok(tally(home, "compact"))
        assert lake_rows(home) == 2000


@pytest.mark.slow
def test_7_read_only_stage_quarantine_and_state_say_so(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    for part in ("stage", "quarantine", "state"):
        home = make_home(tmp_path / part / "home")
        write(home.logs / "a.jsonl", 10, agent=None)  # rejects too: the quarantine is written
        write(home.logs / "a.jsonl", 10)
        target = home.root / part
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(target), str(target)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot bind-mount read-only: {mounted.stderr.strip()}")
        try:
            assert_one_line_error(tally(home, "tail", "--once"), 74, "Read-only file system")
        finally:
            subprocess.run(["umount", str(target)], check=True)
        ok(tally(home, "tail", "--once"))
        assert events(home) == 10


def test_7_logging_to_a_full_device_says_so() -> None:
    run = run_tally("log", "agent_token_usage", "--agent", "a", "--to", "/dev/full",
                    "input_tokens=1")
    assert_one_line_error(run, 74, "/dev/full")


def test_7_reports_racing_a_zero_retention_vacuum_read_every_event(home: Home) -> None:
    for _ in range(6):
        write(home.logs / "a.jsonl", 50)
        ok(tally(home, "tail", "--once"))
        ok(tally(home, "compact"))
    from pipeline.maintenance import optimize_lake, vacuum_lake
    from pipeline.reports import ReportQuery, run_report

    stop = threading.Event()
    failures: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                write(home.logs / "a.jsonl", 0)
                optimize_lake(home, target_mb=1)
                vacuum_lake(home, retention_hours=0)
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(15):
            report = run_report(load_home(home.root), ReportQuery(by=("agent",)))
            assert report.rows["events"].sum() == 300
    finally:
        stop.set()
        thread.join()
    assert failures == []


# ------------------------------------------------------------------ 8: exit codes


def test_8_an_unreadable_log_file_exits_4_naming_it(home: Home) -> None:
    write(home.logs / "good.jsonl", 5)
    secret = home.logs / "secret.jsonl"
    write(secret, 5)
    os.chmod(secret, 0o000)
    run = run_tally("tail", "--once", "--home", str(home.root), obey_modes=True)
    assert_one_line_error(run, 4, str(secret))
    assert "staged 5 events" in run.stdout  # everything else was read
    os.chmod(secret, 0o644)
    assert "staged 5 events" in ok(tally(home, "tail", "--once")).stdout


def test_8_an_unreadable_subdirectory_exits_4_naming_it(home: Home) -> None:
    write(home.logs / "good.jsonl", 5)
    hidden = home.logs / "hidden"
    write(hidden / "a.jsonl", 5)
    os.chmod(hidden, 0o000)
    try:
        run = run_tally("tail", "--once", "--home", str(home.root), obey_modes=True)
    finally:
        os.chmod(hidden, 0o755)
    assert_one_line_error(run, 4, str(hidden), "cannot list directory")


@pytest.mark.parametrize(("config", "field"), [
    ('[paths]\nlogs = "/nonexistent"\n', "paths.logs"),
    ("[tailor]\nbatch_lines = 10\n", "tailor"),
    ("[tailer]\nmax_line_bytes = 0\n", "tailer.max_line_bytes"),
    ("[tailer]\nbatch_lines = -1\n", "tailer.batch_lines"),
    ("[tailer]\nworkers = 1000\n", "tailer.workers"),
])
def test_8_bad_config_exits_3_naming_the_field(home: Home, config: str, field: str) -> None:
    home.config_path.write_text(config)
    assert_one_line_error(tally(home, "tail", "--once"), 3, "config.toml", field)
    if field == "tailor":
        assert "did you mean" in tally(home, "tail", "--once").stderr


def test_8_a_negative_lock_timeout_is_a_usage_error(home: Home) -> None:
    run = tally(home, "compact", "--lock-timeout", "-5")
    assert run.returncode == 2 and "Traceback" not in run.stderr


# ------------------------------------------------------------------ 9: leftovers


def test_9_files_of_a_killed_compaction_are_removed_by_the_next(home: Home) -> None:
    home.config_path.write_text("[compactor]\nauto_optimize_files = 0\n")  # files as written
    write(home.logs / "a.jsonl", 50)
    ok(tally(home, "tail", "--once"))
    ok(tally(home, "compact"))
    write(home.logs / "a.jsonl", 50)
    ok(tally(home, "tail", "--once"))
    [data_file] = list((home.lake / USAGE).rglob("*.parquet"))
    # What a compaction killed inside its write leaves: a data file, and its run's marker.
    shutil.copyfile(data_file, data_file.with_name("part-00000-killed-c000.zstd.parquet"))
    (home.state / RUN_MARKER).touch()
    run = ok(tally(home, "compact"))
    assert "removed 1 file(s) of a compaction killed while writing" in run.stderr
    assert len(list((home.lake / USAGE).rglob("*.parquet"))) == 2
    assert lake_rows(home) == 100


def test_9_leftovers_of_a_killed_rebuild_are_cleaned_by_the_next_tail(home: Home) -> None:
    write(home.logs / "a.jsonl", 10)
    ok(tally(home, "tail", "--once"))
    (home.root / ".rebuild-20260101T000000Z" / "lake").mkdir(parents=True)
    (home.root / ".replaced-20250101T000000Z" / "lake").mkdir(parents=True)
    run = ok(tally(home, "tail", "--once"))
    assert not list(home.root.glob(".rebuild-*")) and not list(home.root.glob(".replaced-*"))
    assert run.stderr.count("removed") == 2
    assert events(home) == 10


# ------------------------------------------------------------------ no traceback, ever


def _checkpoint_garbage(home: Home) -> None:
    (home.state / "checkpoint.json").write_bytes(b"{\x00")


def _checkpoint_and_spare_garbage(home: Home) -> None:
    for name in ("checkpoint.json", ".checkpoint.json.spare"):
        (home.state / name).write_bytes(b"[")


def _stage_garbage(home: Home) -> None:
    for path in home.stage.rglob("*.arrow"):
        path.write_bytes(b"ARROW1 not really")


def _delta_gap(home: Home) -> None:
    sorted((home.lake / USAGE / "_delta_log").glob("*.json"))[1].unlink()


def _delta_newest_lost(home: Home) -> None:
    sorted((home.lake / USAGE / "_delta_log").glob("*.json"))[-1].unlink()


def _lake_file_lost(home: Home) -> None:
    next((home.lake / USAGE).rglob("*.parquet")).unlink()


def _quarantine_garbage(home: Home) -> None:
    for path in home.quarantine.glob("*.jsonl"):
        path.write_bytes(b"not json\n")


def _year_zero_line(home: Home) -> None:
    write(home.logs / "late.jsonl", 1, ts="0001-01-01T00:00:00+14:00")


def _odd_name(home: Home) -> None:
    write(home.logs / os.fsdecode(b"odd\xfe.jsonl"), 3)


def _unknown_section(home: Home) -> None:
    with open(home.config_path, "a") as handle:
        handle.write("\n[tailor]\nx = 1\n")


def _missing_logs(home: Home) -> None:
    with open(home.config_path, "a") as handle:
        handle.write('\n[paths]\nlogs = "/nonexistent/logs"\n')


def _rebuild_leftover(home: Home) -> None:
    scratch = home.root / ".rebuild-20260101T000000Z"
    (scratch / "lake").mkdir(parents=True)
    (scratch / "READY").write_bytes(b'{"stamp": "20260101T000000Z", "keep": true}')


def _journal_garbage(home: Home) -> None:
    for path in (home.state / "journal").glob("*.jsonl"):
        path.write_bytes(b"\x00\x01garbage")


def _high_water_garbage(home: Home) -> None:
    (home.lake / "_tally_batches.json").write_bytes(b"{{")


DAMAGES: dict[str, Callable[[Home], None]] = {
    f.__name__.lstrip("_"): f for f in (
        _checkpoint_garbage, _checkpoint_and_spare_garbage, _stage_garbage, _delta_gap,
        _delta_newest_lost, _lake_file_lost, _quarantine_garbage, _year_zero_line,
        _odd_name, _unknown_section, _missing_logs, _rebuild_leftover, _journal_garbage,
        _high_water_garbage)}
COMMANDS = [["status"], ["report"], ["report", "daily-summary", "--date", "2025-03-01"],
            ["report", "context"], ["progress"], ["usage"], ["tail", "--once"], ["compact"],
            ["compact", "--optimize", "--vacuum", "--retention-hours", "0"], ["rebuild"],
            ["validate", "{logs}/a.jsonl"]]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_no_command_shows_a_traceback_on_a_damaged_home(tmp_path: Path, damage: str) -> None:
    home = make_home(tmp_path / "home")
    for _ in range(2):
        write(home.logs / "a.jsonl", 20)
        write(home.logs / "a.jsonl", 2, agent=None)
        CliRunner().invoke(main, ["tail", "--once", "--home", str(home.root)])
        CliRunner().invoke(main, ["compact", "--home", str(home.root)])
    write(home.logs / "a.jsonl", 5)
    CliRunner().invoke(main, ["tail", "--once", "--home", str(home.root)])
    DAMAGES[damage](home)
    for command in COMMANDS:
        args = [arg.format(logs=home.logs) for arg in command]
        result = CliRunner().invoke(main, [*args, "--home", str(home.root)])
        shown = f"{damage}: tally {' '.join(args)} -> {result.exit_code}\n{result.output}"
        assert result.exit_code in EXIT_CODES, shown
        assert result.exception is None or isinstance(result.exception, SystemExit), shown
        assert "Traceback" not in result.output and "internal error" not in result.output, shown
