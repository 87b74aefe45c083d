"""Tokens per agent and day from a tally lake on S3, computed by Daft on a Ray cluster.

A starting point for analysts: copy it, change the query in `tokens_per_agent_and_day`.

    python examples/daft_report.py --uri s3://telemetry/tally --ray-address 10.0.0.5:6379 \\
        --since 2025-03-01 --until 2025-03-31

It reads the Delta table `<uri>/agent_token_usage` that `tally compact` writes and prints one
JSON object a line, sorted by agent and day:

    {"agent": "claude", "date": "2025-03-01", "events": 412, "input_tokens": 81234,
     "output_tokens": 9120, "cache_read_tokens": 50211, "cache_write_tokens": 3020,
     "total": 143585}

`date` is the UTC day of the event's `ts` (the lake's partition column); a missing token count
counts as 0; `total` is the sum of the four counts. Each event is in the lake once, so `events`
is a plain row count.

Where it runs:
  --ray-address ADDR     an existing Ray cluster (ADDR as `ray status` shows it)
  --local-ray-nodes N    a throwaway cluster of N one-CPU nodes on this machine, for trying
                         the script out (the tests use it); shut down at the end
  (neither)              `ray.init()`'s default: the cluster in RAY_ADDRESS, else a local one

S3 settings come from the standard environment variables: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or AWS_DEFAULT_REGION), and for
S3-compatible stores AWS_ENDPOINT_URL and AWS_ALLOW_HTTP=true (an http:// endpoint). They are
handed to the Ray workers in Daft's IOConfig, so the workers need no environment of their own.

Needs `pip install daft==0.7.26 ray==2.60.0 deltalake==1.6.3` (`make scale` builds
.venv-scale with them; keep them out of tally's own venv: they pull pyarrow down a version).

Exit status: 0 on success; 75 with a line `RAY-UNAVAILABLE: ...` on stderr when the local
cluster of --local-ray-nodes cannot start; otherwise Python's error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

os.environ.setdefault("DAFT_PROGRESS_BAR", "0")  # before daft loads; Ray workers inherit it

import daft
from daft import col
from daft.io import IOConfig, S3Config

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

TABLE = "agent_token_usage"
TOKENS = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"]
RAY_UNAVAILABLE = 75  # EX_TEMPFAIL: the local cluster did not start


def s3_config_from_env() -> IOConfig:
    """Daft's S3 settings from the standard AWS environment variables."""
    env = os.environ.get
    allow_http = env("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes")
    return IOConfig(s3=S3Config(
        endpoint_url=env("AWS_ENDPOINT_URL"),
        key_id=env("AWS_ACCESS_KEY_ID"),
        access_key=env("AWS_SECRET_ACCESS_KEY"),
        session_token=env("AWS_SESSION_TOKEN"),
        region_name=env("AWS_REGION") or env("AWS_DEFAULT_REGION"),
        anonymous=False,
        use_ssl=not allow_http,  # Daft refuses an http:// endpoint unless this is False
    ))


def tokens_per_agent_and_day(lake_uri: str, io_config: IOConfig, since: dt.date | None = None,
                             until: dt.date | None = None) -> daft.DataFrame:
    """The query: one row per agent and UTC day, days between `since` and `until` inclusive."""
    events = daft.read_deltalake(f"{lake_uri.rstrip('/')}/{TABLE}", io_config=io_config)
    if since is not None:  # filters on the partition column skip whole days of files
        events = events.where(col("date") >= since)
    if until is not None:
        events = events.where(col("date") <= until)
    events = events.with_columns({name: col(name).fill_null(0) for name in TOKENS})
    events = events.with_column("total", col("input_tokens") + col("output_tokens")
                                + col("cache_read_tokens") + col("cache_write_tokens"))
    return (events
            .groupby("agent", "date")
            .agg(col("agent").count("all").alias("events"),
                 *[col(name).sum() for name in [*TOKENS, "total"]])
            .sort(["agent", "date"]))


def json_lines(report: daft.DataFrame) -> Iterator[str]:
    """Each row of the report as a JSON object, columns in a fixed order."""
    columns = ["agent", "date", "events", *TOKENS, "total"]
    for row in report.iter_rows():
        yield json.dumps({c: row[c].isoformat() if c == "date" else row[c] for c in columns})


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", required=True, help="the lake root, e.g. s3://bucket/prefix")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--ray-address", help="address of a running Ray cluster")
    where.add_argument("--local-ray-nodes", type=int, metavar="N",
                       help="start a throwaway local cluster of N one-CPU nodes")
    parser.add_argument("--since", type=day, help="first day, YYYY-MM-DD (UTC)")
    parser.add_argument("--until", type=day, help="last day, YYYY-MM-DD (UTC), inclusive")
    args = parser.parse_args(argv)

    cluster = None
    if args.local_ray_nodes:
        try:
            cluster = local_cluster(args.local_ray_nodes)
        except Exception as error:  # Ray's start-up fails in many ways (ports, /dev/shm, ...)
            print(f"RAY-UNAVAILABLE: {type(error).__name__}: {error}", file=sys.stderr)
            return RAY_UNAVAILABLE
        args.ray_address = cluster.address
    try:
        daft.set_runner_ray(address=args.ray_address)
        report = tokens_per_agent_and_day(args.uri, s3_config_from_env(), args.since,
                                          args.until)
        for line in json_lines(report):
            print(line)
        import ray  # Daft has connected to the cluster by now

        alive = [node for node in ray.nodes() if node["Alive"]]
        print(f"ray: {len(alive)} nodes alive at {args.ray_address or 'the default'}",
              file=sys.stderr)
    finally:
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.shutdown()
    return 0


def local_cluster(nodes: int) -> Cluster:
    """A Ray cluster of `nodes` one-CPU nodes in processes of this machine (not `ray start`,
    which binds a public address). About 9 s to start."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


if __name__ == "__main__":
    sys.exit(main())
