"""Many hosts, one lake in an object store (moto's S3 server on 127.0.0.1): three homes with
their own logs tail and compact at the same moments, their compactors SIGKILLed at random
points, and the lake ends with the union of their events, each once, whichever host
compacted it; every host reports the same."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import polars as pl
import pytest

from tests.conftest import run_tally, tally_executable
from tests.s3 import MotoServer, shared_lake_home

pytestmark = pytest.mark.slow
HOSTS = ("host-a", "host-b", "host-c")
USAGE = "agent_token_usage"
DAYS = ("2025-09-01", "2025-09-02", "2025-09-03")


def host_home(root: Path, name: str, lake: str) -> Path:
    """A home whose lake is `lake` (in moto), committing as host `name`."""
    return Path(shared_lake_home(root, name, lake,
                                 "[compactor]\nlock_timeout = 120\nauto_optimize_files = 4\n"))


def usage_line(event_id: str, day: str, agent: str, tokens: int) -> bytes:
    return orjson.dumps({
        "event_type": USAGE, "event_id": event_id, "ts": f"{day}T{tokens % 24:02d}:15:00Z",
        "agent": agent, "model": "claude-sonnet-4-5", "input_tokens": tokens,
        "output_tokens": tokens // 10}) + b"\n"


def rounds_of_lines(host: str, rounds: int, per_round: int,
                    shared: list[bytes]) -> Iterator[list[bytes]]:
    """Each round's lines of one host: its own events, and a slice of the events every host
    receives (a producer's retries that landed on every host)."""
    step = len(shared) // rounds
    for number in range(rounds):
        own = [usage_line(f"{host}-{number}-{i}", DAYS[i % 3], f"agent-{i % 4}", 100 + i)
               for i in range(per_round)]
        yield own + shared[number * step:(number + 1) * step]


class Host:
    """One host's loop: append a round of lines, stage them, compact; a compaction is
    SIGKILLed at a random point now and then (a fault point or a random delay), and run
    again until it ends well."""

    def __init__(self, home: Path, env: dict[str, str], seed: int) -> None:
        self.home, self.env, self.random = home, env, random.Random(seed)
        self.kills = 0
        self.conflicts = 0
        self.failure: str | None = None

    def run(self, rounds: list[list[bytes]]) -> None:
        try:
            for number, lines in enumerate(rounds):
                with open(self.home / "logs" / f"round-{number % 2}.jsonl", "ab") as log:
                    log.write(b"".join(lines))
                self._must("tail", "--once")
                while not self._compacted():
                    pass
        except Exception as exc:  # reported by the test, with the host's name
            self.failure = f"{self.home.name}: {exc}"

    def _compacted(self) -> bool:
        env = dict(self.env)
        chance = self.random.random()
        if chance < 0.3:
            point = self.random.choice(["before_write", "after_commit"])
            env["TALLY_FAULT"] = f"compact:{point}:{self.random.randint(1, 3)}"
        command = [tally_executable(), "compact", "--rows-per-commit", "40",
                   "--home", str(self.home)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        if 0.3 <= chance < 0.5:  # killed from outside, anywhere
            time.sleep(self.random.uniform(0.2, 2.0))
            process.send_signal(signal.SIGKILL)
        out, err = process.communicate(timeout=300)
        if process.returncode == -signal.SIGKILL:
            self.kills += 1
            return False
        if process.returncode != 0:
            raise AssertionError(f"compact exited {process.returncode}: {err[-2000:]}")
        self.conflicts += int(out.count("planned again") > 0)
        return True

    def _must(self, *args: str) -> None:
        done = subprocess.run([tally_executable(), *args, "--home", str(self.home)],
                              env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise AssertionError(f"tally {' '.join(args)} exited {done.returncode}: "
                                 f"{done.stderr[-2000:]}")


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    return moto_server


@pytest.mark.parametrize("seed", [11, 23, 37])
def test_three_hosts_compacting_at_once_leave_every_event_once(
        tmp_path: Path, moto: MotoServer, seed: int) -> None:
    lake = f"{moto.bucket()}/tally"
    env = {**os.environ, **moto.env()}
    env.pop("TALLY_HOME", None)
    shared = [usage_line(f"shared-{i}", DAYS[i % 3], "agent-0", 7 + i) for i in range(60)]
    hosts, plans = [], {}
    for number, name in enumerate(HOSTS):
        home = host_home(tmp_path, name, lake)
        hosts.append(Host(home, env, seed * 10 + number))
        plans[name] = list(rounds_of_lines(name, 4, 90, shared))
    threads = [threading.Thread(target=host.run, args=(plans[host.home.name],))
               for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    assert not any(thread.is_alive() for thread in threads), "a host never finished"
    assert [h.failure for h in hosts] == [None] * 3, [h.failure for h in hosts]

    rows = pl.read_delta(f"{lake}/{USAGE}", storage_options=moto.options)
    expected = {f"{name}-{r}-{i}" for name in HOSTS for r in range(4) for i in range(90)}
    expected |= {f"shared-{i}" for i in range(60)}
    assert rows["event_id"].n_unique() == rows.height, "an event is in the lake twice"
    found = set(rows["event_id"])
    assert found == expected, f"lost {sorted(expected - found)[:9]}, " \
                              f"unexpected {sorted(found - expected)[:9]}"
    own = rows.filter(~pl.col("event_id").str.starts_with("shared-"))
    assert (own["host"] == own["event_id"].str.extract(r"^(host-.)")).all()
    assert set(rows.filter(pl.col("event_id").str.starts_with("shared-"))["host"]) <= set(HOSTS)

    reports = [run_tally("report", "--by", "host,agent,day", "--format", "json",
                         "--home", str(h.home), env=moto.env()) for h in hosts]
    assert all(r.returncode == 0 for r in reports), [r.stderr for r in reports]
    assert reports[0].stdout == reports[1].stdout == reports[2].stdout
    records = orjson.loads(reports[0].stdout)
    assert sum(r["events"] for r in records) == len(expected)
    assert sum(r["input_tokens"] for r in records) == rows["input_tokens"].sum()
    print(f"seed {seed}: kills {[h.kills for h in hosts]}, runs that planned again "
          f"{[h.conflicts for h in hosts]}")


def test_an_optimize_on_one_host_beside_appends_on_another_loses_and_repeats_nothing(
        tmp_path: Path, moto: MotoServer) -> None:
    lake = f"{moto.bucket()}/tally"
    env = {**os.environ, **moto.env()}
    env.pop("TALLY_HOME", None)
    writer, optimizer = host_home(tmp_path, "writer", lake), host_home(tmp_path, "optimizer", lake)
    appending = Host(writer, env, seed=5)
    lines = [[usage_line(f"w-{r}-{i}", DAYS[i % 3], "agent-1", 10 + i) for i in range(120)]
             for r in range(8)]
    done = threading.Event()
    merged: list[str] = []

    def optimize() -> None:
        while not done.is_set():
            run = subprocess.run([tally_executable(), "compact", "--optimize", "--target-mb", "1",
                                  "--home", str(optimizer)], env=env, capture_output=True,
                                 text=True, timeout=300)
            assert run.returncode == 0, run.stderr
            merged.extend(re.findall(rf"{USAGE} ([1-9][0-9]*) files merged", run.stdout))

    thread = threading.Thread(target=optimize)
    thread.start()
    try:
        appending.run(lines)
    finally:
        done.set()
        thread.join(timeout=300)
    assert appending.failure is None, appending.failure
    assert merged, "the optimizer never merged files while the writer appended"
    rows = pl.read_delta(f"{lake}/{USAGE}", storage_options=moto.options)
    assert rows.height == rows["event_id"].n_unique() == 8 * 120
