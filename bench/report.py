"""Benchmark of `tally report` on a year of fleet telemetry, against DuckDB on the same lake.

    python -m bench.report                                  # 10,000,000 events, 52 slices
    python -m bench.report --events 2000000 --slices 20
    python -m bench.report --events 50000000 --timeout 600  # the issue's second size
    python -m bench.report --rules                          # also the old comparison

The lake (prepared once, not timed as a question, cached in --dir and reused while the
events, seed, slices, preparation and the source of the tally being measured are the
same): bench.generate writes N events over 365 days from 2026-01-01, from 24 agents,
one log file per agent, each file in time order. With `--prepare tally` (the default)
the year is cut into --slices equal slices, and the lake is built the way a scheduled
job builds it: the lines of a slice are appended to the logs, then `tally tail --once
--quiet` and `tally compact` run, and so on up to the present. Each compaction is timed
as a whole process; the total, the events per second and the largest peak RSS are
reported (the figures of the run that prepared the lake, also when it is reused).
`--prepare direct` writes the whole log, then each type's Delta table in one write_delta
from Polars (no tailer; holds everything in memory: small sizes only).

Timed, --repeat rounds, in each round tally and its baseline alternately first; every
run is a whole subprocess (interpreter start and imports included), wall time from spawn
to exit, CPU seconds and peak RSS from os.wait4 of that child, taken by a small measuring
process (bench.common.run_child) so that this process's own memory does not show:

  year   `tally report --by agent,phase,day --format json`
         against DuckDB's plain GROUP BY agent, phase, day (count, the four token
         counters, their sum, cost_usd; no dedupe, no other rule) over the live Parquet
         files of the agent_token_usage table, listed from its Delta log with
         deltalake's DeltaTable(...).file_uris() (DuckDB's delta extension cannot be
         installed offline); the child lists the files, runs the query and prints the
         rows as JSON. Goal: tally <= 1.0x DuckDB.
  week   `tally report --by agent --since D --until D+6 --format json`, D the Monday
         on or after the middle of the year (2026-07-06) unless --week,
         against DuckDB's pruned week query: only the files of the week's seven `date=`
         partitions, GROUP BY agent. Goal: tally <= 1.5x DuckDB.

Per question: each side's median wall time, the per-round ratios tally/DuckDB and their
median (the figure of merit: paired runs hold up on a loaded machine), the largest peak
RSS (goal <= 500 MB for tally), DuckDB's query-only and file-listing seconds. At 50M
events and over, the goals of <= 1 s per question are evaluated too. With --timeout or
--max-rss-mb a tally run past either is killed and its question dropped (exit 3).

Checked after the rounds: tally's per-agent events and token totals, for the year and
for the week, and every group of the year report, equal DuckDB computing tally's rules
(the duplicate rule of DESIGN.md, task_progress increments for (agent, task) pairs
without usage rows, the shipped prices: cost within 1e-6 relative) over all history. A
disagreement is printed loudly and the exit status is 1. Whether the plain baseline's
totals equal the rules' is printed (they do when the lake holds no duplicates and no
counted increments), and is not required.

--rules adds the old comparison: that DuckDB rules query timed each round, with two
formulations of the dedupe (window; the hash trick tally uses), in this process (query
only) and as a whole subprocess.

Compaction throughput against another version of tally is measured by bench.compact
(2M events into an empty lake). The slices' figures here compare versions too (the lake
is rebuilt whenever tally's source differs) and show compaction meeting a growing lake
(`compact_slices_s`), but each slice's process start weighs in: compare CPU seconds.
Weekly slices leave about one file per date partition; more slices imitate a job run
more often (and the small files it leaves), at about 3-7 s of preparation per slice.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from deltalake import DeltaTable

from bench.common import ChildStopped, log, precompile, run_child
from bench.generate import append_in_slices, write_log
from pipeline.pricing import shipped_pricing

TALLY = str(Path(sys.executable).with_name("tally"))
REPO = Path(__file__).resolve().parent.parent
BUDGETS_OFF = "[budgets]\ndaily_tokens = 0\nweekly_tokens = 0\ndaily_cost_usd = 0\n"
START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 365
AGENTS = 24
BY = "agent,phase,day"
KEYS = ("agent", "phase", "day")
COLUMNS = ("events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
           "other_tokens", "total_tokens", "unpriced_events")
CHECKED = COLUMNS[:-1]  # per agent: events and every token count
TOTAL = ("coalesce(input_tokens, 0) + coalesce(output_tokens, 0) "
         "+ coalesce(cache_read_tokens, 0) + coalesce(cache_write_tokens, 0)")
RSS_GOAL_MB = 500
RATIO_GOALS = {"year": 1.0, "week": 1.5}
LARGE = 50_000_000  # from this size on, each question has a goal of <= 1 s too
EXIT_DISAGREE, EXIT_STOPPED = 1, 3

# The baseline as a whole process: list the table's live files from its Delta log, keep
# those of the wanted date partitions, run the query, print the rows and the timings.
PLAIN_CHILD = r"""
import json, sys, time
import duckdb
from deltalake import DeltaTable
spec = json.loads(sys.argv[1])
began = time.perf_counter()
files = list(DeltaTable(spec["table"]).file_uris())
if spec["dates"] is not None:
    wanted = tuple(f"/date={d}/" for d in spec["dates"])
    files = [f for f in files if any(w in f for w in wanted)]
listed = time.perf_counter()
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute("SET TimeZone = 'UTC'")
cursor = con.execute(spec["sql"].replace("{files}", repr(files)))
names = [d[0] for d in cursor.description]
rows = [dict(zip(names, row)) for row in cursor.fetchall()]
done = time.perf_counter()
print(json.dumps({"list_seconds": listed - began, "query_seconds": done - listed,
                  "files": len(files), "rows": rows}, default=str))
"""

PLAIN_SUMS = (f"count(*) AS events, sum(input_tokens) AS input_tokens, "
              f"sum(output_tokens) AS output_tokens, sum(cache_read_tokens) AS cache_read_tokens, "
              f"sum(cache_write_tokens) AS cache_write_tokens, sum({TOTAL}) AS total_tokens, "
              f"sum(cost_usd) AS cost_usd")
PLAIN_YEAR = (f"SELECT agent, phase, CAST(ts AS DATE) AS day, {PLAIN_SUMS} "
              "FROM read_parquet({files}, union_by_name = true) "
              "GROUP BY ALL ORDER BY agent, phase, day")
PLAIN_WEEK = (f"SELECT agent, {PLAIN_SUMS} FROM read_parquet({{files}}, union_by_name = true) "
              "GROUP BY agent ORDER BY agent")

# The rules query as a whole process (--rules): the prices, then the query.
RULES_CHILD = r"""
import json, sys, time
import duckdb, polars as pl
spec = json.loads(open(sys.argv[1]).read())
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute("SET TimeZone = 'UTC'")
began = time.perf_counter()
con.register("prices", pl.DataFrame(spec["prices"], infer_schema_length=None))
rows = con.sql(spec["sql"]).fetchall()
print(json.dumps({"seconds": time.perf_counter() - began, "rows": len(rows)}))
"""


# ---------------------------------------------------------------- the lake


def tally_source() -> tuple[str, str]:
    """Where the `tally` command's package is, and a digest of its source."""
    # -P: like the console script, which does not import from the current directory
    where = "import pipeline; print(pipeline.__file__)"
    found = subprocess.run([sys.executable, "-P", "-c", where], check=True, capture_output=True,
                           text=True, cwd=REPO)
    package = Path(found.stdout.strip()).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".json")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return str(package), digest.hexdigest()[:16]


def slice_boundaries(slices: int) -> list[datetime]:
    """Where the year's slices end (the last slice takes the rest)."""
    return [START + timedelta(days=DAYS * k / slices) for k in range(1, slices)]


def prepare(root: Path, spec: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """A home whose lake holds the generated year; reused when prepared with `spec`."""
    home = root / "home"
    marker = root / "prepared.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("spec") == spec:
            log(f"reusing the lake prepared in {root} on {done['prepared_at']}")
            return home, {**done, "reused": True}
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([TALLY, "init", "--home", str(home)], check=True, capture_output=True)
    # Budgets off: with them on, a slice's `tally tail --once` in the year of today may
    # append alerts to logs/tally/, the next slice stages them, and the count below fails.
    (home / "config.toml").write_text(BUDGETS_OFF, encoding="utf-8")
    began = time.perf_counter()
    figures = build_sliced(home, spec) if spec["prepare"] == "tally" else build_direct(home, spec)
    figures["seconds"] = round(time.perf_counter() - began, 1)
    figures.update(lake_shape(home))
    done = {"spec": spec, "prepared_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **figures}
    marker.write_text(json.dumps(done))
    return home, {**done, "reused": False}


def build_sliced(home: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Append the year slice by slice, each followed by `tally tail --once` and `tally compact`."""
    slices, events = spec["slices"], spec["events"]
    log(f"preparing {events:,} events in {slices} slices under {home} "
        "(each: append, tally tail --once, tally compact)")
    generate = tail = 0.0
    runs: list[dict[str, Any]] = []
    began = clock = time.perf_counter()
    for number, _ in enumerate(append_in_slices(
            home / "logs" / "gen", events, spec["seed"], slice_boundaries(slices), files=AGENTS,
            agents=AGENTS, days=DAYS, start=START), 1):
        generate += time.perf_counter() - clock
        tail += run_child([TALLY, "tail", "--once", "--quiet", "--home", str(home)])["seconds"]
        run = run_child([TALLY, "compact", "--home", str(home)])
        runs.append({"seconds": run["seconds"], "cpu": run["cpu"], "rss_mb": run["rss_mb"],
                     "events": compacted_events(run["stdout"])})
        clock = time.perf_counter()
        left = (clock - began) / number * (slices - number)
        log(f"slice {number}/{slices}: compact {run['seconds']:.2f} s "
            f"({runs[-1]['events'] or 0:,} events, {run['rss_mb']:,.0f} MB); "
            f"{clock - began:.0f} s so far, about {left / 60:.1f} min to go")
    staged = json.loads((home / "state" / "checkpoint.json").read_bytes())
    if staged.get("staged") != events or staged.get("quarantined") != 0:
        raise RuntimeError(f"expected {events:,} staged and none quarantined: {staged}")
    compact = sum(r["seconds"] for r in runs)
    counted = [r["events"] for r in runs]
    compacted = sum(counted) if None not in counted else events
    return {
        "generate_s": round(generate, 1), "tail_s": round(tail, 1),
        "compact_s": round(compact, 1),
        "compact_cpu_s": round(sum(r["cpu"] for r in runs), 1),
        "compact_events": compacted,
        "compact_events_per_s": round(compacted / compact),
        "compact_peak_rss_mb": round(max(r["rss_mb"] for r in runs)),
        "compact_first_last_s": [round(runs[0]["seconds"], 2), round(runs[-1]["seconds"], 2)],
        # Each slice meets a larger lake: what compaction costs as history grows.
        "compact_slices_s": [round(r["seconds"], 2) for r in runs],
    }


def compacted_events(summary: str) -> int | None:
    """The events of `tally compact`'s summary line, None if it says it another way."""
    found = re.search(r"compact: ([0-9,]+) events", summary)
    return int(found.group(1).replace(",", "")) if found else None


def build_direct(home: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Write the whole log, then each type's Delta table with Polars' write_delta."""
    began = time.perf_counter()
    write_log(home / "logs" / "gen", spec["events"], spec["seed"], files=AGENTS, agents=AGENTS,
              days=DAYS, start=START)
    generated = time.perf_counter() - began
    log(f"generated {spec['events']:,} events in {generated:.0f} s")
    write_direct(home)
    return {"generate_s": round(generated, 1),
            "write_delta_s": round(time.perf_counter() - began - generated, 1)}


def write_direct(home: Path) -> None:
    """Parse the generated logs with Polars and write each type's Delta table directly."""
    from pipeline.frames import SOURCE_COLUMNS, TS_TYPE, stage_schema

    for event_type in ("agent_token_usage", "task_progress"):
        schema = stage_schema(event_type)
        raw = {n: (pl.String() if d == TS_TYPE else d) for n, d in schema.items()
               if n not in SOURCE_COLUMNS}
        frames = []
        for path in sorted((home / "logs" / "gen").glob("*.jsonl")):
            frame = (pl.scan_ndjson(path, schema=raw, infer_schema_length=None)
                     .with_row_index("_offset")
                     .filter(pl.col("event_type") == event_type)
                     .with_columns(pl.col("ts").str.to_datetime(time_unit="us", time_zone="UTC"),
                                   pl.col("schema_version").fill_null(1),
                                   pl.col("_offset").cast(pl.Int64),
                                   # absent ids are derived from the line, as the tailer does
                                   pl.coalesce("event_id", pl.format("{}-{}", pl.lit(path.name),
                                                                     "_offset")),
                                   _source=pl.lit(f"gen/{path.name}")))
            frames.append(frame.select(*schema))
        data = pl.concat(frames).with_columns(date=pl.col("ts").dt.date()).collect()
        data.write_delta(home / "lake" / event_type, mode="overwrite",
                         delta_write_options={"partition_by": ["date"]})


def lake_shape(home: Path) -> dict[str, Any]:
    """Live files of the token-usage table: how many, over how many date partitions."""
    files = files_of(home, "agent_token_usage")
    partitions = {Path(f).parent.name for f in files}
    return {"usage_files": len(files), "usage_partitions": len(partitions)}


def files_of(home: Path, event_type: str) -> list[str]:
    """The current Parquet files of a Delta table (from its log, not a directory glob)."""
    return list(DeltaTable(str(home / "lake" / event_type)).file_uris())


# ---------------------------------------------------------------- the questions


@dataclass
class Question:
    """One question: tally's command, the baseline's spec, and what each round measured."""

    name: str
    tally: list[str]
    baseline: dict[str, Any]
    tally_runs: list[dict[str, Any]] = field(default_factory=list)
    duck_runs: list[dict[str, Any]] = field(default_factory=list)
    tally_rows: list[dict[str, Any]] = field(default_factory=list)
    duck_rows: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""

    def run_round(self, number: int, limits: dict[str, float | None]) -> None:
        """tally and the baseline once each, tally first in odd rounds."""
        duck_command = [sys.executable, "-c", PLAIN_CHILD, json.dumps(self.baseline)]
        for side in ("tally", "duckdb") if number % 2 else ("duckdb", "tally"):
            if side == "tally":
                result = run_child(self.tally, **limits)
                self.tally_rows = json.loads(result["stdout"])
                self.tally_runs.append(result)
            else:
                result = run_child(duck_command)
                timings = json.loads(result["stdout"])
                self.duck_rows = timings.pop("rows")
                self.duck_runs.append({**result, **timings})
        tally, duck = self.tally_runs[-1], self.duck_runs[-1]
        log(f"round {number} {self.name}: tally {tally['seconds']:.2f} s "
            f"({tally['cpu']:.1f} CPU s, {tally['rss_mb']:,.0f} MB); duckdb "
            f"{duck['seconds']:.2f} s (query {duck['query_seconds']:.2f} s, "
            f"{duck['rss_mb']:,.0f} MB): ratio {tally['seconds'] / duck['seconds']:.2f}")

    def figures(self) -> dict[str, Any]:
        """Medians, per-round ratios and peaks of the rounds that ran."""
        if not self.tally_runs or not self.duck_runs:
            return {"stopped": self.stopped}
        rounds = min(len(self.tally_runs), len(self.duck_runs))
        ratios = [t["seconds"] / d["seconds"]
                  for t, d in zip(self.tally_runs[:rounds], self.duck_runs[:rounds], strict=True)]

        def median(runs: list[dict[str, Any]], key: str) -> float:
            return round(statistics.median(r[key] for r in runs), 3)

        return {
            "tally_seconds": [round(r["seconds"], 3) for r in self.tally_runs],
            "tally_median_s": median(self.tally_runs, "seconds"),
            "tally_cpu_median_s": median(self.tally_runs, "cpu"),
            "tally_peak_rss_mb": round(max(r["rss_mb"] for r in self.tally_runs)),
            "duckdb_seconds": [round(r["seconds"], 3) for r in self.duck_runs],
            "duckdb_median_s": median(self.duck_runs, "seconds"),
            "duckdb_cpu_median_s": median(self.duck_runs, "cpu"),
            "duckdb_query_median_s": median(self.duck_runs, "query_seconds"),
            "duckdb_list_median_s": median(self.duck_runs, "list_seconds"),
            "duckdb_peak_rss_mb": round(max(r["rss_mb"] for r in self.duck_runs)),
            "duckdb_files": self.duck_runs[-1]["files"],
            "ratios": [round(r, 3) for r in ratios],
            "ratio": round(statistics.median(ratios), 3),
            "groups": len(self.tally_rows),
            "stopped": self.stopped,
        }


def week_of(text: str | None) -> list[date]:
    """The seven days of the week question: from `text`, else the Monday after mid-year."""
    first = (date.fromisoformat(text) if text
             else (START + timedelta(days=DAYS // 2)).date())
    if not text:
        first += timedelta(days=-first.weekday() % 7)
    return [first + timedelta(days=d) for d in range(7)]


def questions(home: Path, week: list[date]) -> list[Question]:
    """The year and the week question."""
    base = [TALLY, "report", "--format", "json", "--home", str(home)]
    table = str(home / "lake" / "agent_token_usage")
    return [
        Question("year", [*base, "--by", BY], {"table": table, "dates": None, "sql": PLAIN_YEAR}),
        Question("week", [*base, "--by", "agent", "--since", week[0].isoformat(),
                          "--until", week[-1].isoformat()],
                 {"table": table, "dates": [d.isoformat() for d in week], "sql": PLAIN_WEEK}),
    ]


# ---------------------------------------------------------------- tally's rules in DuckDB


def price_frame() -> pl.DataFrame:
    """The shipped prices, one row per matchable name, with the long-context threshold."""
    table = shipped_pricing()
    thresholds = pl.Series([None, *table.thresholds], dtype=pl.Int64)
    return table.frame().with_columns(
        long_threshold=pl.col("long_tier").fill_null(0).map_batches(
            lambda tier: thresholds.gather(tier), return_dtype=pl.Int64))


def dedupe_sql(files: list[str], order: str, variant: str) -> str:
    """One row per event_id; `order` ranks the rows of one id (first wins)."""
    source = f"read_parquet({files!r}, union_by_name = true)"
    if variant == "window":
        return (f"SELECT * FROM {source} "
                f"QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY {order}) = 1")
    # Only ids whose hash repeats need ranking; every other row is unique by id.
    return f"""
        SELECT * EXCLUDE (_h) FROM (SELECT *, hash(event_id) AS _h FROM {source})
        WHERE _h NOT IN (SELECT hash(event_id) FROM {source} GROUP BY 1 HAVING count(*) > 1)
        UNION ALL
        SELECT * EXCLUDE (_h) FROM (SELECT *, hash(event_id) AS _h FROM {source})
        WHERE _h IN (SELECT hash(event_id) FROM {source} GROUP BY 1 HAVING count(*) > 1)
        QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY {order}) = 1"""


def report_sql(home: Path, variant: str) -> str:
    """tally's counting and pricing rules for --by agent,phase,day (UTC, cost mode auto)."""
    usage = dedupe_sql(files_of(home, "agent_token_usage"),
                       f"{TOTAL} DESC, _source, _offset", variant)
    progress = dedupe_sql(files_of(home, "task_progress"), "_source, _offset", variant)
    extras = (r"""coalesce(list_sum(list_transform(regexp_extract_all(tokens_used.extra, """
              r"""'"\s*:\s*([0-9]+)', 1), lambda x: x::BIGINT)), 0)""")
    rate = "CASE WHEN p.long_threshold IS NOT NULL AND r.i + r.cr + r.cw > p.long_threshold " \
           "THEN p.long_{0} ELSE p.{0} END"
    return f"""
    WITH usage AS ({usage}),
    progress AS ({progress}),
    snaps AS (
      SELECT agent, task, phase, ts, _source, _offset,
             coalesce(tokens_used.model, model) AS model,
             coalesce(tokens_used.prompt, 0) AS p, coalesce(tokens_used.completion, 0) AS c,
             coalesce(tokens_used.total, coalesce(tokens_used.prompt, 0)
                      + coalesce(tokens_used.completion, 0) + {extras}) AS t
      FROM progress WHERE tokens_used IS NOT NULL),
    steps AS (
      SELECT *, greatest(t - p - c, 0) AS o,
             coalesce(lag(p) OVER w, 0) AS pp, coalesce(lag(c) OVER w, 0) AS pc,
             coalesce(lag(greatest(t - p - c, 0)) OVER w, 0) AS po,
             coalesce(lag(t) OVER w, 0) AS pt
      FROM snaps WINDOW w AS (PARTITION BY agent, task ORDER BY ts, _source, _offset)),
    increments AS (
      SELECT agent, task, phase, ts, model,
             CASE WHEN t < pt THEN p ELSE greatest(p - pp, 0) END AS i,
             CASE WHEN t < pt THEN c ELSE greatest(c - pc, 0) END AS o,
             CASE WHEN t < pt THEN o ELSE greatest(o - po, 0) END AS ot
      FROM steps),
    tracked AS (SELECT DISTINCT agent, task FROM usage
                SEMI JOIN (SELECT DISTINCT agent, task FROM increments) USING (agent, task)),
    rows AS (
      SELECT agent, phase, ts, model, coalesce(input_tokens, 0) AS i,
             coalesce(output_tokens, 0) AS o, coalesce(cache_read_tokens, 0) AS cr,
             coalesce(cache_write_tokens, 0) AS cw,
             least(coalesce(cache_write_1h_tokens, 0), coalesce(cache_write_tokens, 0)) AS cw1h,
             0 AS ot, cost_usd
      FROM usage
      UNION ALL
      SELECT agent, phase, ts, model, i, o, 0, 0, 0, ot, NULL
      FROM increments ANTI JOIN tracked USING (agent, task) WHERE i + o + ot > 0),
    models AS (SELECT DISTINCT model FROM rows),
    matched AS (
      SELECT m.model, coalesce(a.price_name, b.price_name, c.price_name, d.price_name) AS name
      FROM models m
      LEFT JOIN prices a ON a.price_name = m.model
      LEFT JOIN prices b ON b.price_name = regexp_replace(m.model, '^[A-Za-z0-9_.-]+/', '')
      LEFT JOIN prices c ON c.price_name = regexp_replace(m.model,
          '(@.+|-[0-9]{{8}}|-[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}|-[0-9]{{4}}|-latest)$', '')
      LEFT JOIN prices d ON d.price_name = regexp_replace(regexp_replace(m.model,
          '^[A-Za-z0-9_.-]+/', ''),
          '(@.+|-[0-9]{{8}}|-[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}|-[0-9]{{4}}|-latest)$', '')),
    priced AS (
      SELECT r.*, coalesce(r.cost_usd, (
          (r.i + r.ot) * {rate.format("input")} + r.o * {rate.format("output")}
          + r.cr * {rate.format("cache_read")} + (r.cw - r.cw1h) * {rate.format("cache_write")}
          + r.cw1h * {rate.format("cache_write_1h")}) / 1e6) AS cost
      FROM rows r LEFT JOIN matched m ON m.model IS NOT DISTINCT FROM r.model
      LEFT JOIN prices p ON p.price_name = m.name)
    SELECT * FROM (
    SELECT agent, phase, strftime(ts, '%Y-%m-%d') AS day, count(*) AS events,
           sum(i) AS input_tokens, sum(o) AS output_tokens, sum(cr) AS cache_read_tokens,
           sum(cw) AS cache_write_tokens, sum(ot) AS other_tokens,
           sum(i + o + cr + cw + ot) AS total_tokens, sum(cost) AS cost_usd,
           count(*) FILTER (WHERE cost IS NULL) AS unpriced_events
    FROM priced GROUP BY ALL)
    ORDER BY agent, TRY_CAST(phase AS BIGINT) NULLS LAST, phase NULLS LAST, day
    """


def duckdb_in_process(sql: str, prices: pl.DataFrame) -> tuple[float, list[dict[str, Any]]]:
    """Seconds of the query in this process (a fresh connection), and its rows."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SET TimeZone = 'UTC'")
    began = time.perf_counter()
    con.register("prices", prices)
    result = con.sql(sql)
    names = result.columns
    rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    return time.perf_counter() - began, rows


def same_result(tally: list[dict[str, Any]], duck: list[dict[str, Any]]) -> str:
    """'yes', or what differs first, group by group."""
    if len(tally) != len(duck):
        return f"no: {len(tally)} groups against {len(duck)}"
    for ours, theirs in zip(tally, duck, strict=True):
        for column in (*KEYS, *COLUMNS):
            if ours[column] != theirs[column]:
                where = [ours[k] for k in KEYS]
                return f"no: {column} of {where}: {ours[column]} / {theirs[column]}"
        a, b = ours["cost_usd"], theirs["cost_usd"]
        if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=1e-6,
                                                                              abs_tol=1e-6)):
            return f"no: cost_usd of {[ours[k] for k in KEYS]}: {a} / {b}"
    return "yes"


def per_agent(rows: Iterable[dict[str, Any]], columns: Iterable[str]) -> dict[str, dict[str, int]]:
    """Sums of `columns` per agent (a missing column counts 0)."""
    columns = tuple(columns)
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(columns, 0))
    for row in rows:
        for column in columns:
            totals[row["agent"]][column] += row.get(column) or 0
    return dict(totals)


def same_totals(ours: dict[str, dict[str, int]], theirs: dict[str, dict[str, int]]) -> str:
    """'yes', or the first agent and count that differ."""
    for agent in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(agent), theirs.get(agent)
        if a is None or b is None:
            return f"no: {agent} only in {'DuckDB' if a is None else 'tally'}'s answer"
        for column in a:
            if a[column] != b[column]:
                return f"no: {column} of {agent}: {a[column]} / {b[column]}"
    return "yes"


def check(year: Question, week: Question, reference: list[dict[str, Any]],
          days: list[date]) -> dict[str, str]:
    """tally's answers against DuckDB's rules (must agree); the plain baseline's (may not)."""
    in_week = {d.isoformat() for d in days}
    results = {}
    if year.tally_rows:
        results["year_groups"] = same_result(year.tally_rows, reference)
        results["year_per_agent"] = same_totals(per_agent(year.tally_rows, CHECKED),
                                                per_agent(reference, CHECKED))
    if week.tally_rows:
        results["week_per_agent"] = same_totals(
            per_agent(week.tally_rows, CHECKED),
            per_agent((r for r in reference if r["day"] in in_week), CHECKED))
    plain = ("events", "input_tokens", "output_tokens", "cache_read_tokens",
             "cache_write_tokens", "total_tokens")
    if year.duck_rows:
        results["plain_year_equals_rules"] = same_totals(per_agent(year.duck_rows, plain),
                                                         per_agent(reference, plain))
    return results


def time_rules(home: Path, prices: pl.DataFrame, rounds: int,
               spec_path: Path) -> dict[str, dict[str, list[float]]]:
    """The old comparison: tally's rules in DuckDB, both dedupe formulations, each round."""
    times: dict[str, dict[str, list[float]]] = {
        v: {"query": [], "process": [], "process_cpu": []} for v in ("window", "hash")}
    for number in range(1, rounds + 1):
        for variant, timed in times.items():
            sql = report_sql(home, variant)
            seconds, _ = duckdb_in_process(sql, prices)
            spec_path.write_text(json.dumps({"sql": sql, "prices": prices.to_dicts()}))
            child = run_child([sys.executable, "-c", RULES_CHILD, str(spec_path)])
            timed["query"].append(round(seconds, 3))
            timed["process"].append(round(child["seconds"], 3))
            timed["process_cpu"].append(round(child["cpu"], 3))
            log(f"round {number} rules ({variant} dedupe): query {seconds:.2f} s, "
                f"process {child['seconds']:.2f} s (cpu {child['cpu']:.2f} s)")
    return times


# ---------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slices", type=int, default=52,
                        help="append-tail-compact rounds that build the year [default: 52]")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of each question; medians count [default: 3]")
    parser.add_argument("--week", default=None, metavar="YYYY-MM-DD",
                        help="first day of the week question [default: 2026-07-06]")
    parser.add_argument("--prepare", choices=("tally", "direct"), default="tally")
    parser.add_argument("--rules", action="store_true",
                        help="also time DuckDB computing tally's rules (the old comparison)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="kill a tally report running longer, drop its question (exit 3)")
    parser.add_argument("--max-rss-mb", type=float, default=_half_the_memory(), metavar="MB",
                        help="kill a tally report whose RSS passes this, drop its question "
                             "(exit 3) [default: half the machine's memory]")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the lake is built and kept [default: "
                             "$TMPDIR/tally-bench-report-<events>-<slices>-<prepare>]")
    args = parser.parse_args(argv)
    if args.events < 1 or args.slices < 1 or args.repeat < 1:
        parser.error("need --events, --slices and --repeat of at least 1")
    days = week_of(args.week)
    if not START.date() <= days[0] <= days[-1] < START.date() + timedelta(days=DAYS):
        parser.error(f"the week {days[0]} to {days[-1]} is not within the generated year")
    return args


def _half_the_memory() -> float:
    try:
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 8192.0
    return round(total_kb / 1024 / 2)


def main(argv: list[str] | None = None) -> int:
    """Prepare (or reuse) the lake, ask both questions each round, check, print the figures."""
    args = _parse_args(argv)
    root = args.dir or Path(tempfile.gettempdir()) / (
        f"tally-bench-report-{args.events}-{args.slices}-{args.prepare}")
    package, digest = tally_source()
    spec = {"events": args.events, "seed": args.seed, "slices": args.slices,
            "prepare": args.prepare, "agents": AGENTS, "days": DAYS,
            "start": START.date().isoformat(), "tally_source": digest,
            "generator": hashlib.sha256((REPO / "bench" / "generate.py").read_bytes())
            .hexdigest()[:16]}
    log(f"tally: {TALLY}, package {package} (source {digest})")
    precompile(package)
    home, prepared = prepare(root, spec)
    days = week_of(args.week)
    asked = questions(home, days)
    limits = {"timeout": args.timeout, "max_rss_mb": args.max_rss_mb}
    for number in range(1, args.repeat + 1):
        for question in (q for q in asked if not q.stopped):
            try:
                question.run_round(number, limits)
            except ChildStopped as exc:
                question.stopped = str(exc)
                log(f"!!! {question.name}: {exc}; question dropped")
    prices = price_frame()
    began = time.perf_counter()
    _, reference = duckdb_in_process(report_sql(home, "window"), prices)
    log(f"reference (DuckDB, tally's rules over all history): {time.perf_counter() - began:.1f} s")
    agreement = check(asked[0], asked[1], reference, days)
    rules = time_rules(home, prices, args.repeat, root / "duckdb.json") if args.rules else None
    figures = summary(args, prepared, asked, days, agreement, rules, package)
    print_summary(figures)
    disagree = [k for k, v in agreement.items() if not k.startswith("plain") and v != "yes"]
    for key in disagree:
        print(f"!!! TALLY AND DUCKDB DISAGREE ({key}): {agreement[key]}", flush=True)
    print(json.dumps(figures))
    if disagree:
        return EXIT_DISAGREE
    return EXIT_STOPPED if any(q.stopped for q in asked) else 0


def summary(args: argparse.Namespace, prepared: dict[str, Any], asked: list[Question],
            days: list[date], agreement: dict[str, str],
            rules: dict[str, dict[str, list[float]]] | None, package: str) -> dict[str, Any]:
    """Every figure, as the JSON line prints it."""
    figures: dict[str, Any] = {
        "events": args.events, "seed": args.seed, "agents": AGENTS, "days": DAYS,
        "start": START.date().isoformat(), "slices": args.slices, "repeat": args.repeat,
        "tally_package": package,
        "preparation": {k: v for k, v in prepared.items() if k != "spec"},
        "week_days": [days[0].isoformat(), days[-1].isoformat()],
        **{q.name: q.figures() for q in asked},
        "agreement": agreement,
    }
    goals: dict[str, bool | None] = {}
    for q in asked:
        measured = figures[q.name]
        ratio = measured.get("ratio")
        goals[f"{q.name}_ratio_le_{RATIO_GOALS[q.name]}"] = (
            None if ratio is None else ratio <= RATIO_GOALS[q.name])
        rss = measured.get("tally_peak_rss_mb")
        goals[f"{q.name}_rss_le_{RSS_GOAL_MB}_mb"] = None if rss is None else rss <= RSS_GOAL_MB
        if args.events >= LARGE:
            seconds = measured.get("tally_median_s")
            goals[f"{q.name}_le_1_s"] = None if seconds is None else seconds <= 1.0
    figures["goals"] = goals
    if rules is not None:
        year = figures["year"].get("tally_median_s")
        figures["rules"] = {v: {k: t for k, t in times.items()} for v, times in rules.items()}
        best_query = min(statistics.median(t["query"]) for t in rules.values())
        best_process = min(statistics.median(t["process"]) for t in rules.values())
        figures["rules"]["ratio_tally_vs_fastest_query"] = (
            None if year is None else round(year / best_query, 3))
        figures["rules"]["ratio_tally_vs_fastest_process"] = (
            None if year is None else round(year / best_process, 3))
    return figures


def print_summary(figures: dict[str, Any]) -> None:
    """The figures a reader wants first, one line each."""
    prep = figures["preparation"]
    how = "reused, prepared" if prep["reused"] else "prepared"
    print(f"lake: {figures['events']:,} events, {figures['agents']} agents, {figures['days']} "
          f"days from {figures['start']}, {figures['slices']} slices ({how} "
          f"{prep['prepared_at']} in {prep['seconds']:.0f} s); token-usage table "
          f"{prep['usage_files']:,} files in {prep['usage_partitions']} partitions")
    if "compact_s" in prep:
        print(f"compaction over the slices: {prep['compact_s']:.1f} s whole processes "
              f"({prep['compact_cpu_s']:.1f} CPU s), {prep['compact_events_per_s']:,} events/s, "
              f"peak RSS {prep['compact_peak_rss_mb']:,} MB; first and last slice "
              f"{prep['compact_first_last_s'][0]:.2f} / {prep['compact_first_last_s'][1]:.2f} s")
    for name, label in (("year", f"--by {BY}"),
                        ("week", f"--by agent --since {figures['week_days'][0]} "
                                 f"--until {figures['week_days'][1]}")):
        q = figures[name]
        if "tally_median_s" not in q:
            print(f"{name}: no figures ({q['stopped']})")
            continue
        stopped = f" [stopped: {q['stopped']}]" if q["stopped"] else ""
        print(f"{name}: tally report {label}: median {q['tally_median_s']:.2f} s, peak "
              f"{q['tally_peak_rss_mb']:,} MB; duckdb plain: median {q['duckdb_median_s']:.2f} s "
              f"(query {q['duckdb_query_median_s']:.2f} s, {q['duckdb_files']:,} files, "
              f"{q['duckdb_peak_rss_mb']:,} MB); ratios {q['ratios']}, median {q['ratio']} "
              f"(goal <= {RATIO_GOALS[name]}){stopped}")
    print("agreement with DuckDB computing tally's rules: " +
          "; ".join(f"{k} {v}" for k, v in figures["agreement"].items()))
    print("goals: " + ", ".join(
        f"{k} {'met' if v else 'not met' if v is not None else 'not measured'}"
        for k, v in figures["goals"].items()))
    if "rules" in figures:
        print("rules in DuckDB (window / hash dedupe), medians: " + "; ".join(
            f"{v} query {statistics.median(figures['rules'][v]['query']):.2f} s, process "
            f"{statistics.median(figures['rules'][v]['process']):.2f} s"
            for v in ("window", "hash")) + f"; tally / fastest query "
            f"{figures['rules']['ratio_tally_vs_fastest_query']}")


if __name__ == "__main__":
    sys.exit(main())
