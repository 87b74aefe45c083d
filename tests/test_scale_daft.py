"""examples/daft_report.py, Daft on a two-node local Ray cluster, reads a lake that tally built
on S3 (moto) from two hosts, and reports what `tally report` and Polars report from it.

Two homes with their own logs (and a few events both received), each under its own
`[host] id`, stage with `tally tail --once` and commit with `tally compact` into one lake.
Daft and Ray live in .venv-scale (`make scale`; they pull pyarrow down a version), so the
example runs as a subprocess of that venv's Python and starts its Ray cluster there. The tests
are skipped, saying why, only when .venv-scale is not built or Ray cannot start."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from deltalake import DeltaTable

from tests.conftest import tally_executable
from tests.s3 import KEY_ID, REGION, SECRET, MotoServer

pytestmark = [pytest.mark.scale, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SCALE_PYTHON = ROOT / ".venv-scale" / "bin" / "python"
EXAMPLE = ROOT / "examples" / "daft_report.py"
RAY_UNAVAILABLE = 75  # the example's exit status when its local cluster cannot start

HOSTS = {"host-1": 1900, "host-2": 1700}  # each host's own events
SHARED = 60  # events both hosts received (a producer's retry landing on each): kept once
AGENTS = ["claude", "codex", "gemini", "aider"]
DAYS = [dt.date(2025, 3, 1), dt.date(2025, 3, 2), dt.date(2025, 3, 3)]
TOKENS = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"]
# `tally report --format json` keys that the example names otherwise.
REPORT_KEYS = {"day": "date", "total_tokens": "total"}


def scale_python() -> str:
    """.venv-scale's Python with Daft and Ray importable; the test is skipped without it."""
    if not SCALE_PYTHON.exists():
        pytest.skip(f"{SCALE_PYTHON} is missing: `make scale` builds it (needs the network)")
    probe = subprocess.run([str(SCALE_PYTHON), "-c", "import daft, ray, deltalake"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f".venv-scale lacks Daft or Ray ({last}): `make scale` installs them")
    return str(SCALE_PYTHON)


def usage_line(event_id: str, rng: random.Random) -> bytes:
    """One agent_token_usage line on one of DAYS, some token counts and roles left out."""
    ts = dt.datetime.combine(rng.choice(DAYS), dt.time(), dt.UTC) + dt.timedelta(
        seconds=rng.randrange(86400))
    event: dict[str, Any] = {
        "event_type": "agent_token_usage", "event_id": event_id,
        "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "agent": rng.choice(AGENTS),
        "model": rng.choice(["claude-sonnet-4-5", "gpt-5"]),
        "role": rng.choice(["dev", "review", None])}
    for name, high in zip(TOKENS, [20_000, 4_000, 100_000, 10_000], strict=True):
        event[name] = None if rng.random() < 0.1 else rng.randint(0, high)
    return orjson.dumps({k: v for k, v in event.items() if v is not None}) + b"\n"


def config(lake: str, server: MotoServer, host: str) -> str:
    """A host's whole config.toml: the shared lake on the emulator, and its host id (the
    keys come from the environment)."""
    return (f'[lake]\nuri = "{lake}"\nendpoint = "{server.endpoint}"\nregion = "{REGION}"\n'
            f'allow_http = true\n\n[host]\nid = "{host}"\n')


def tally_env() -> dict[str, str]:
    """A host's environment: the credentials only (the rest is in its config.toml)."""
    return {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
            "PYTHONDONTWRITEBYTECODE": "1"}


def tally(*args: str | Path) -> str:
    """`tally ARGS` run to success; what it printed."""
    run = subprocess.run([tally_executable(), *map(str, args)], capture_output=True,
                         text=True, env=tally_env(), timeout=300)
    assert run.returncode == 0, (args, run.stderr[-4000:])
    return run.stdout


def host_home(root: Path, lake: str, server: MotoServer, host: str, lines: list[bytes]) -> Path:
    """A home committing to `lake` as `host`, its log holding `lines`."""
    home = root / host
    tally("init", "--home", home)
    (home / "config.toml").write_text(config(lake, server, host), encoding="utf-8")
    (home / "logs" / "usage.jsonl").write_bytes(b"".join(lines))
    return home


@dataclass(frozen=True)
class Fleet:
    """The lake the hosts built, their homes, and how many distinct events they sent."""

    lake: str
    homes: dict[str, Path]
    events: int


@pytest.fixture(scope="module")
def fleet(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """host-1 commits first. The shared events open both logs (a file of the same name), so
    host-2's copies tie with host-1's rows (tokens, `_source`, `_offset`): the lake's rows
    stay and both commits are appends (rows a later copy replaced: the last test)."""
    scale_python()  # skip before building the lake when there is no Daft to read it
    lake = f"{moto_server.bucket()}/tally"
    root = tmp_path_factory.mktemp("fleet")
    rng = random.Random(23)
    shared = [usage_line(f"both-{i:04d}", rng) for i in range(SHARED)]
    homes = {}
    for host, count in HOSTS.items():
        own = [usage_line(f"{host}-{i:05d}", rng) for i in range(count)]
        homes[host] = host_home(root, lake, moto_server, host, shared + own)
        tally("tail", "--once", "--home", homes[host])
        tally("compact", "--home", homes[host])
    return Fleet(lake, homes, sum(HOSTS.values()) + SHARED)


def expected_from_polars(lake: str, options: dict[str, str]) -> list[dict[str, Any]]:
    """The example's report computed by Polars: per agent and day, the events, each token
    count (a missing one counts 0) and their total, sorted by agent and day."""
    events = pl.scan_delta(f"{lake}/agent_token_usage", storage_options=options)
    counts = events.with_columns(pl.col(TOKENS).fill_null(0))
    report = (counts.with_columns(total=pl.sum_horizontal(TOKENS))
              .group_by("agent", "date")
              .agg(pl.len().alias("events"), pl.col(*TOKENS, "total").sum())
              .sort("agent", "date")
              .select("agent", pl.col("date").dt.to_string(), "events", *TOKENS, "total"))
    return report.collect().to_dicts()


def from_tally_report(home: Path) -> list[dict[str, Any]]:
    """`tally report --by agent,day --format json` of one home, in the example's keys (only
    usage events were sent: no task tokens, `other_tokens` 0)."""
    records = json.loads(tally("report", "--by", "agent,day", "--format", "json",
                               "--home", home))
    assert all(record["other_tokens"] == 0 for record in records)
    columns = ["agent", "date", "events", *TOKENS, "total"]
    renamed = [{REPORT_KEYS.get(key, key): value for key, value in record.items()}
               for record in records]
    return sorted(({c: record[c] for c in columns} for record in renamed),
                  key=lambda record: (record["agent"], record["date"]))


def run_example(server: MotoServer, *args: str) -> subprocess.CompletedProcess[str]:
    """examples/daft_report.py in .venv-scale, its S3 settings pointing at `server`; the test
    is skipped, saying why, when .venv-scale is not built or Ray's local cluster cannot start
    (any other failure fails the test)."""
    run = subprocess.run(
        [scale_python(), str(EXAMPLE), *args], capture_output=True, text=True, timeout=600,
        cwd=ROOT, env={**os.environ, **server.env(), "PYTHONDONTWRITEBYTECODE": "1"})
    unavailable = [line for line in run.stderr.splitlines() if "RAY-UNAVAILABLE:" in line]
    if run.returncode == RAY_UNAVAILABLE and unavailable:
        pytest.skip(f"Ray cannot start a local cluster here: {unavailable[-1]}")
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def test_daft_on_two_ray_nodes_reports_what_tally_and_polars_do(moto_server: MotoServer,
                                                                fleet: Fleet) -> None:
    expected = expected_from_polars(fleet.lake, moto_server.options)
    assert len(expected) == len(AGENTS) * len(DAYS)
    assert sum(row["events"] for row in expected) == fleet.events  # a shared event once
    assert from_tally_report(fleet.homes["host-1"]) == expected

    run = run_example(moto_server, "--uri", fleet.lake, "--local-ray-nodes", "2")
    assert [json.loads(line) for line in run.stdout.splitlines()] == expected
    assert "ray: 2 nodes alive" in run.stderr, run.stderr[-4000:]


def test_each_event_carries_the_host_that_staged_it(moto_server: MotoServer,
                                                    fleet: Fleet) -> None:
    """Every host's own events are in the lake under its id; `--by host` counts them too."""
    events = pl.scan_delta(f"{fleet.lake}/agent_token_usage",
                           storage_options=moto_server.options)
    per_host = dict(events.group_by("host").len().collect().iter_rows())
    assert per_host == {"host-1": HOSTS["host-1"] + SHARED, "host-2": HOSTS["host-2"]}
    records = json.loads(tally("report", "--by", "host", "--format", "json",
                               "--home", fleet.homes["host-2"]))
    assert {record["host"]: record["events"] for record in records} == per_host


def test_since_and_until_keep_the_days_between(moto_server: MotoServer,
                                              fleet: Fleet) -> None:
    """--since and --until are inclusive days (on a one-node cluster: it starts sooner)."""
    expected = [row for row in expected_from_polars(fleet.lake, moto_server.options)
                if row["date"] == "2025-03-02"]
    assert len(expected) == len(AGENTS)

    run = run_example(moto_server, "--uri", fleet.lake, "--local-ray-nodes", "1",
                      "--since", "2025-03-02", "--until", "2025-03-02")
    assert [json.loads(line) for line in run.stdout.splitlines()] == expected
    assert "ray: 1 nodes alive" in run.stderr, run.stderr[-4000:]


def test_daft_reads_rows_that_a_later_copy_replaced(moto_server: MotoServer,
                                               tmp_path: Path) -> None:
    """A producer's retry with more tokens replaces the lake's row of its event (its
    partition written anew): the example still reports what Polars does."""
    scale_python()
    lake = f"{moto_server.bucket()}/tally"
    rng = random.Random(5)
    first = [usage_line(f"retried-{i:04d}", rng) for i in range(200)]
    home = host_home(tmp_path, lake, moto_server, "host-1", first)
    tally("tail", "--once", "--home", home)
    tally("compact", "--home", home)
    retries = [orjson.dumps({**orjson.loads(line), "output_tokens": 5_000}) + b"\n"
               for line in first[:20]]
    with open(home / "logs" / "usage.jsonl", "ab") as log:
        log.write(b"".join(retries))
    tally("tail", "--once", "--home", home)
    tally("compact", "--home", home)
    usage = DeltaTable(f"{lake}/agent_token_usage", storage_options=moto_server.options)
    assert "Overwrite" in [commit.get("operationParameters", {}).get("mode")
                           for commit in usage.history()]
    expected = expected_from_polars(lake, moto_server.options)
    assert sum(row["events"] for row in expected) == len(first)

    run = run_example(moto_server, "--uri", lake, "--local-ray-nodes", "1")
    assert [json.loads(line) for line in run.stdout.splitlines()] == expected
