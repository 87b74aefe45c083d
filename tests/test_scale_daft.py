"""examples/daft_report.py, Daft on a two-node local Ray cluster, reads a lake on S3 (moto) and
reports what Polars reports from the same table.

Daft and Ray live in .venv-scale (`make scale`; they pull pyarrow down a version), so the
example runs as a subprocess of that venv's Python and starts its Ray cluster there. The test
is skipped, saying why, only when .venv-scale is not built or Ray cannot start."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from tests.s3 import MotoServer

pytestmark = [pytest.mark.scale, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SCALE_PYTHON = ROOT / ".venv-scale" / "bin" / "python"
EXAMPLE = ROOT / "examples" / "daft_report.py"
RAY_UNAVAILABLE = 75  # the example's exit status when its local cluster cannot start

AGENTS = ["claude", "codex", "gemini", "aider"]
DAYS = [dt.date(2025, 3, 1), dt.date(2025, 3, 2), dt.date(2025, 3, 3)]
TOKENS = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"]


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


def day_of_events(day: dt.date, count: int, rng: random.Random) -> pa.Table:
    """`count` agent_token_usage rows of `day` shaped like the lake's, some counts missing."""
    def tokens(high: int) -> list[int | None]:
        return [None if rng.random() < 0.1 else rng.randint(0, high) for _ in range(count)]

    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    return pa.table({
        "event_id": [f"{day:%Y%m%d}-{i:06d}" for i in range(count)],
        "ts": pa.array([start + dt.timedelta(seconds=rng.randrange(86400))
                        for _ in range(count)], pa.timestamp("us", tz="UTC")),
        "agent": [rng.choice(AGENTS) for _ in range(count)],
        "model": [rng.choice(["claude-sonnet-4-5", "gpt-5"]) for _ in range(count)],
        "role": [rng.choice(["dev", "review", None]) for _ in range(count)],
        "phase": pa.array([None] * count, pa.string()),
        "input_tokens": pa.array(tokens(20_000), pa.int64()),
        "output_tokens": pa.array(tokens(4_000), pa.int64()),
        "cache_read_tokens": pa.array(tokens(100_000), pa.int64()),
        "cache_write_tokens": pa.array(tokens(10_000), pa.int64()),
        "host": [rng.choice(["h1", "h2"]) for _ in range(count)],
        "_id_hash": pa.array([rng.getrandbits(63) for _ in range(count)], pa.uint64()),
        "date": pa.array([day] * count, pa.date32()),
    })


# The lake under test. To test tally itself, replace `write_lake` with `tally compact` run
# against the bucket, and `expected_from_polars` with `tally report --format json --by agent,day`.

def write_lake(lake: str, options: dict[str, str]) -> int:
    """agent_token_usage under `lake`, partitioned by date: one commit a day, a few thousand
    rows in all; how many rows."""
    rng = random.Random(23)
    rows = 0
    for day, count in zip(DAYS, [1200, 1500, 900], strict=True):
        write_deltalake(f"{lake}/agent_token_usage", day_of_events(day, count, rng),
                        mode="append", partition_by=["date"], storage_options=options)
        rows += count
    return rows


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


def test_daft_on_two_ray_nodes_reports_what_polars_does(moto_server: MotoServer,
                                                         s3_bucket: str) -> None:
    scale_python()  # skip before writing the lake when there is no Daft to read it
    lake = f"{s3_bucket}/lake"
    assert write_lake(lake, moto_server.options) == 3600
    expected = expected_from_polars(lake, moto_server.options)
    assert len(expected) == len(AGENTS) * len(DAYS)

    run = run_example(moto_server, "--uri", lake, "--local-ray-nodes", "2")
    assert [json.loads(line) for line in run.stdout.splitlines()] == expected
    assert "ray: 2 nodes alive" in run.stderr, run.stderr[-4000:]


def test_since_and_until_keep_the_days_between(moto_server: MotoServer,
                                              s3_bucket: str) -> None:
    """--since and --until are inclusive days (on a one-node cluster: it starts sooner)."""
    scale_python()
    lake = f"{s3_bucket}/lake"
    write_lake(lake, moto_server.options)
    expected = [row for row in expected_from_polars(lake, moto_server.options)
                if row["date"] == "2025-03-02"]
    assert len(expected) == len(AGENTS)

    run = run_example(moto_server, "--uri", lake, "--local-ray-nodes", "1",
                      "--since", "2025-03-02", "--until", "2025-03-02")
    assert [json.loads(line) for line in run.stdout.splitlines()] == expected
    assert "ray: 1 nodes alive" in run.stderr, run.stderr[-4000:]
