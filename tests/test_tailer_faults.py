"""Kill tests of the tailer: guarantee 1 (exactly once in stage or quarantine) under SIGKILL.

A writer subprocess appends lines with unique ids to three files under logs/, rotates one
of them midway (rename-and-create), and salts ~3 % invalid lines, each carrying a unique
marker. Meanwhile `tally tail` is SIGKILLed at random moments and restarted; a final
`tally tail --once` catches up. Then the committed stage (files up to the checkpoint's
batch watermark, read directly, not through the deduplicating lake reader) must hold
every valid id exactly once, and the committed quarantine every invalid line exactly once.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from conftest import children, gone

from bench.generate import generate_lines
from pipeline.config import init_home
from pipeline.stage import batch_id

TALLY = str(Path(sys.executable).with_name("tally"))
MARKER = re.compile(r"bad-[0-9]+-[0-9]+")
FILES = ("a.jsonl", "b.jsonl", "c.jsonl")
INVALID_RATIO = 0.03
ROTATE = None  # a plan step that renames a.jsonl to a.jsonl.1 (the next append creates a.jsonl)

# The writer: reads a pickled plan of (file name, line) steps and appends each line with one
# O_APPEND write, pausing now and then so the tailer sees a live stream. Plain os calls only:
# it must start fast and behave like any producer in any language.
WRITER = r"""
import os, pickle, sys, time
logs, plan_path, burst, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with open(plan_path, "rb") as handle:
    plan = pickle.load(handle)
for i, step in enumerate(plan):
    if step is None:
        os.rename(os.path.join(logs, "a.jsonl"), os.path.join(logs, "a.jsonl.1"))
        continue
    name, line = step
    fd = os.open(os.path.join(logs, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, line) == len(line)
    finally:
        os.close(fd)
    if i % burst == burst - 1:
        time.sleep(pause)
"""


# ------------------------------------------------------------------------------- helpers


def make_home(root: Path, batch_lines: int = 200, rescan_seconds: float = 0.05,
              workers: int = 0) -> Path:
    """A fresh home (what `tally init` makes), with small batches so kills land mid-batch;
    with `workers`, line-checking workers start on any backlog."""
    init_home(root)
    (root / "config.toml").write_text(
        f"[tailer]\nrescan_seconds = {rescan_seconds}\nbatch_lines = {batch_lines}\n"
        f"workers = {workers}\nparallel_min_bytes = 1\n", encoding="utf-8")
    return root


def invalid_line(rng: random.Random, marker: str) -> bytes:
    """A line the validator must reject; `marker` appears in its first bytes."""
    ts = "2025-08-29T10:00:00.000Z"
    kinds = [
        # invalid JSON: a trailing comma
        f'{{"event_id":"{marker}","event_type":"tool_call","ts":"{ts}","agent":"x","tool":"t",}}',
        # an unknown event type
        f'{{"event_id":"{marker}","event_type":"heartbeat","ts":"{ts}","agent":"x"}}',
        # a schema violation: negative tokens
        f'{{"event_id":"{marker}","event_type":"agent_token_usage","ts":"{ts}","agent":"x",'
        f'"input_tokens":-5}}',
        # not an object
        f'["{marker}",1,2]',
        # a required field missing
        f'{{"event_id":"{marker}","event_type":"metric","agent":"x","name":"n"}}',
    ]
    line = rng.choice(kinds).encode()
    if rng.random() < 0.2:  # invalid UTF-8 after the marker
        line = line[:-1] + b',"z":"\xff\xfe"}'
    return line + b"\n"


@dataclass
class Plan:
    """What the writer will write, and what the pipeline must end up with."""

    steps: list[Any] = field(default_factory=list)
    valid_ids: set[str] = field(default_factory=set)
    invalid_markers: set[str] = field(default_factory=set)


def make_plan(seed: int, n: int, rotate: bool = True) -> Plan:
    """n lines with unique ids over FILES, ~3 % invalid, one rotation of a.jsonl midway."""
    rng = random.Random(seed)
    plan = Plan()
    for i, raw in enumerate(generate_lines(n, seed)):
        if i == n // 2 and rotate:
            plan.steps.append(ROTATE)
        name = FILES[rng.randrange(len(FILES))] if i >= len(FILES) else FILES[i]
        if rng.random() < INVALID_RATIO:
            marker = f"bad-{seed}-{i}"
            plan.invalid_markers.add(marker)
            plan.steps.append((name, invalid_line(rng, marker)))
            continue
        event = orjson.loads(raw)
        event["event_id"] = event_id = f"ok-{seed}-{i}"
        plan.valid_ids.add(event_id)
        plan.steps.append((name, orjson.dumps(event) + b"\n"))
    return plan


def write_all(logs: Path, plan: Plan) -> None:
    """Apply a plan at once, in-process (for catch-up tests)."""
    handles: dict[str, Any] = {}
    try:
        for step in plan.steps:
            if step is ROTATE:
                if "a.jsonl" in handles:
                    handles.pop("a.jsonl").close()
                os.rename(logs / "a.jsonl", logs / "a.jsonl.1")
                continue
            name, line = step
            if name not in handles:
                handles[name] = open(logs / name, "ab")  # noqa: SIM115
            handles[name].write(line)
    finally:
        for handle in handles.values():
            handle.close()


def start_tail(home: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen([TALLY, "tail", "--home", str(home), *args],
                                stdout=subprocess.DEVNULL, stderr=err)
    finally:
        if log:
            err.close()  # type: ignore[union-attr]


def wait_ready(proc: subprocess.Popen[bytes], home: Path, timeout: float = 30.0) -> bool:
    """Wait until the tailer holds its lock (imports done, orphans removed); False if it exited.

    Starting takes most of a second (imports), so kills timed from the spawn would mostly
    land before any reading; timed from here they land while it reads and commits.
    """
    lock = home / "state" / "tailer.lock"
    expected = f"pid {proc.pid}".encode()
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            if lock.read_bytes() == expected:
                return True
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "the tailer never took its lock"
        time.sleep(0.002)
    return False


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def assert_no_traceback(log: Path) -> None:
    """The tailers were killed, never crashed on their own."""
    text = log.read_text(errors="replace") if log.exists() else ""
    assert "Traceback" not in text, text[-3000:]


@dataclass
class Committed:
    """The committed output of a home: what the stage and quarantine hold up to the watermark
    (batches of the checkpoint's stream up to its batch, and every batch of another stream)."""

    stream: str
    watermark: int
    checkpoint: dict[str, Any]
    ids: Counter[str]
    quarantine: list[dict[str, Any]]
    above: list[Path]


def committed(home: Path) -> Committed:
    """Read stage files and quarantine files up to the watermark directly (no dedupe)."""
    checkpoint = orjson.loads((home / "state" / "checkpoint.json").read_bytes())
    stream, watermark = checkpoint["stream"], checkpoint["batch"]
    stage, quarantine, above = [], [], []
    for path in sorted((home / "stage").glob("*/b*.arrow")) + sorted(
            (home / "quarantine").glob("b*.jsonl")):
        batch = batch_id(path)
        assert batch is not None, path
        if batch.stream == stream and batch.number > watermark:
            above.append(path)  # a crash leftover: never read
        elif path.suffix == ".arrow":
            stage.append(path)
        else:
            quarantine.append(path)
    ids: Counter[str] = Counter()
    if stage:
        frame = pl.concat([pl.scan_ipc(p).select("event_id") for p in stage]).collect()
        ids = Counter(frame["event_id"].to_list())
    records = [orjson.loads(line) for p in quarantine for line in p.read_bytes().splitlines()]
    return Committed(stream, watermark, checkpoint, ids, records, above)


def assert_exactly_once(home: Path, plan: Plan) -> Committed:
    """Every valid id staged once, every invalid line quarantined once, nothing else."""
    got = committed(home)
    duplicates = {i: c for i, c in got.ids.items() if c > 1}
    assert not duplicates, f"staged more than once: {sorted(duplicates)[:10]} ..."
    assert set(got.ids) - plan.valid_ids == set(), "staged ids nobody wrote"
    missing = plan.valid_ids - set(got.ids)
    assert not missing, f"{len(missing)} valid ids never staged, e.g. {sorted(missing)[:5]}"

    markers: Counter[str] = Counter()
    for record in got.quarantine:
        found = MARKER.findall(record["excerpt"])
        assert len(found) == 1, f"quarantine record without one marker: {record}"
        markers[found[0]] += 1
    assert len(got.quarantine) == len(plan.invalid_markers)
    assert {m for m, c in markers.items() if c > 1} == set(), "quarantined more than once"
    assert set(markers) == plan.invalid_markers
    locations = Counter((r["source"], r["offset"]) for r in got.quarantine)
    assert max(locations.values(), default=1) == 1, "two records for one (source, offset)"

    # The checkpoint's running totals commit with the batches they count.
    assert got.checkpoint["staged"] == len(plan.valid_ids)
    assert got.checkpoint["quarantined"] == len(plan.invalid_markers)
    return got


# ------------------------------------------------------------------------------- the kill test

KILL_SEEDS = range(1, 21)
SECONDS_PER_KILL = 0.7


@pytest.mark.slow
@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_sigkill_while_following(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    home = make_home(tmp_path / "home")
    logs = home / "logs"
    plan = make_plan(seed, rng.randint(3000, 5000))
    plan_path = tmp_path / "plan.pickle"
    plan_path.write_bytes(pickle.dumps(plan.steps))
    kills = rng.randint(4, 6)
    # Bursts of 10-30 lines, paused so that the writer runs through most of the kills.
    burst = rng.randint(10, 30)
    pause = SECONDS_PER_KILL * kills * burst / len(plan.steps)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(logs), str(plan_path),
                               str(burst), str(pause)])
    log = tmp_path / "tail.err"
    tailer = None
    try:
        for _ in range(kills):
            tailer = start_tail(home, log=log)
            if rng.random() < 0.2:  # now and then while it starts (imports, orphan removal)
                time.sleep(rng.uniform(0.05, 0.8))
            else:  # mostly while it reads, validates, writes batches and commits
                wait_ready(tailer, home)
                time.sleep(rng.uniform(0.0, 0.3))
            kill(tailer)
        tailer = start_tail(home, log=log)  # follows until the writer is done, then is killed
        assert writer.wait(timeout=60) == 0
        time.sleep(rng.uniform(0.0, 0.3))
        kill(tailer)
    finally:
        for proc in (writer, tailer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (logs / "a.jsonl.1").exists(), "the rotation happened"
    assert_no_traceback(log)
    subprocess.run([TALLY, "tail", "--once", "--quiet", "--home", str(home)], check=True,
                   timeout=120)
    got = assert_exactly_once(home, plan)
    # The clean run removed whatever the killed ones left above the watermark.
    assert got.above == []
    assert not list((home / "stage").glob("*/.b*.tmp"))


CATCHUP_SEEDS = range(101, 103)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["in_process", "workers"])
@pytest.mark.parametrize("seed", CATCHUP_SEEDS)
def test_sigkill_during_catch_up(tmp_path: Path, seed: int, workers: int) -> None:
    rng = random.Random(seed)
    home = make_home(tmp_path / "home", batch_lines=1000, workers=workers)
    plan = make_plan(seed, 50_000)
    write_all(home / "logs", plan)
    log = tmp_path / "tail.err"
    killed, orphans = 0, set()
    for attempt in range(rng.randint(4, 6)):
        tailer = start_tail(home, "--once", "--quiet", log=log)
        if wait_ready(tailer, home):
            # The first kill comes early so that one lands mid-catch-up even on a fast tailer.
            time.sleep(rng.uniform(0.02, 0.1) if attempt == 0 else rng.uniform(0.05, 1.0))
            if tailer.poll() is None:
                killed += 1
        orphans |= children(tailer.pid)
        kill(tailer)
    # Workers left without their tailer see their pipe close and exit.
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in orphans) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in orphans), "worker processes outlived a killed tailer"
    assert orphans or not workers, "the workers never started"
    subprocess.run([TALLY, "tail", "--once", "--quiet", "--home", str(home)], check=True,
                   timeout=300)
    assert killed > 0, "no kill landed while catching up"
    assert_no_traceback(log)
    got = assert_exactly_once(home, plan)
    assert got.above == []


# ------------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("when", ["idle", "catching_up", "catching_up_with_workers"])
def test_sigterm_exits_cleanly_with_everything_committed(tmp_path: Path, when: str) -> None:
    home = make_home(tmp_path / "home", batch_lines=500,
                     workers=2 if when.endswith("workers") else 0)
    logs = home / "logs"
    plan = make_plan(7, 2000 if when == "idle" else 20_000)
    first = Plan(plan.steps[: len(plan.steps) // 2])
    rest = Plan(plan.steps[len(plan.steps) // 2:])
    write_all(logs, first)
    log = tmp_path / "tail.err"
    tailer = start_tail(home, log=log)
    try:
        if when == "idle":
            # Wait until the first half is staged, then append the rest and let it settle.
            wait_for(lambda: staged_total(home) > 0)
            write_all(logs, rest)
            time.sleep(0.5)
        else:
            write_all(logs, rest)
            wait_for(lambda: staged_total(home) > 0)  # mid catch-up: some batches are in
        tailer.send_signal(signal.SIGTERM)
        assert tailer.wait(timeout=30) == 0, log.read_text()
    finally:
        kill(tailer)
    assert_no_traceback(log)
    got = committed(home)
    assert got.above == [], "files staged beyond what the checkpoint covers"
    assert not list((home / "stage").glob("*/.b*.tmp"))
    assert sum(got.ids.values()) == got.checkpoint["staged"]
    assert len(got.quarantine) == got.checkpoint["quarantined"]
    assert max(got.ids.values(), default=1) == 1
    if when == "idle":
        assert set(got.ids) == plan.valid_ids
    # What the stopped tailer had not read yet comes in once, and only once, on the next run.
    subprocess.run([TALLY, "tail", "--once", "--quiet", "--home", str(home)], check=True,
                   timeout=120)
    assert_exactly_once(home, plan)


def staged_total(home: Path) -> int:
    try:
        return int(orjson.loads((home / "state" / "checkpoint.json").read_bytes())["staged"])
    except (FileNotFoundError, orjson.JSONDecodeError):
        return 0


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ------------------------------------------------------------------------------- identity


def test_two_live_files_with_the_same_first_line_are_both_read(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    # A line without event_id that two producers can both write (the id is derived per file).
    first = b'{"event_type":"metric","ts":"2025-08-29T10:00:00Z","agent":"ci","name":"start"}\n'
    plan = Plan()
    for name in ("one.jsonl", "two.jsonl"):
        event_id = f"{name}-2"
        plan.valid_ids.add(event_id)
        line = orjson.dumps({"event_type": "metric", "event_id": event_id, "agent": "ci",
                             "ts": "2025-08-29T10:00:01Z", "name": name})
        (home / "logs" / name).write_bytes(first + line + b"\n")
    subprocess.run([TALLY, "tail", "--once", "--quiet", "--home", str(home)], check=True)
    got = committed(home)
    assert sum(got.ids.values()) == 4  # two derived ids (one per file) and two given ones
    assert plan.valid_ids <= set(got.ids)
