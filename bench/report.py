"""Benchmark of `tally report --by agent,phase,day --format json` against DuckDB on one lake.

    python -m bench.report                           # 10,000,000 events
    python -m bench.report --events 1000000 --repeat 5

Preparation (not timed, cached in --dir between runs): bench.generate writes N events
(4 files, 30 days); `tally tail --once` stages them and `tally compact` moves them into
the Delta lake (`--prepare tally`, the default). `--prepare direct` instead parses the
generated JSONL with Polars and writes each event type's Delta table with `write_delta`,
stage schema, partitioned by UTC date, without the tailer's validation.

Timed, in the same run, alternating, best of --repeat:

  (i)   `tally report --by agent,phase,day --format json` as a whole subprocess
        (interpreter start and imports included), wall time from spawn to exit;
  (ii)  the same aggregation in DuckDB over the same lake: the Delta tables' current
        Parquet files (from the Delta log; DuckDB's delta extension cannot be installed
        offline), the same dedupe by event_id (largest token total wins), the same
        task_progress increments and precedence, the same prices. Two formulations of
        the dedupe: the idiomatic window (QUALIFY row_number() ...) and the hash trick
        tally uses (only rows whose id hash repeats are ranked). Timed in this process
        (query only) and as a whole subprocess like tally.

DuckDB's result is checked against tally's (events and tokens equal, cost within 1e-6
relative). The ratio tally / fastest DuckDB query is the figure of merit (goal <= 1.0);
CPU seconds of the subprocesses are printed beside wall time, the steadier figure on a
shared machine. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from deltalake import DeltaTable

from bench.common import log, run_child
from bench.generate import write_log
from pipeline.pricing import shipped_pricing

TALLY = str(Path(sys.executable).with_name("tally"))
BY = "agent,phase,day"
KEYS = ("agent", "phase", "day")
COLUMNS = ("events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
           "other_tokens", "total_tokens", "unpriced_events")
TOTAL = ("coalesce(input_tokens, 0) + coalesce(output_tokens, 0) "
         "+ coalesce(cache_read_tokens, 0) + coalesce(cache_write_tokens, 0)")

# The Delta tables' current files, the prices, then the query; prints seconds and rows.
DUCKDB_CHILD = r"""
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


REPO = Path(__file__).resolve().parent.parent


def prepare(root: Path, events: int, seed: int, method: str) -> tuple[Path, dict[str, Any]]:
    """A home whose lake holds `events` generated events; reused when already there."""
    home = root / "home"
    marker = root / "prepared.json"
    wanted = {"events": events, "seed": seed, "method": method}
    if marker.is_file():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in wanted} == wanted:
            log(f"reusing the lake prepared in {root} ({done['seconds']})")
            return home, done
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([TALLY, "init", "--home", str(home)], check=True, capture_output=True)
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    write_log(home / "logs" / "gen", events, seed, files=4)
    seconds["generate"] = time.perf_counter() - began
    log(f"generated {events:,} events in {seconds['generate']:.0f} s")
    if method == "tally":
        for step in (["tail", "--once", "--quiet"], ["compact"]):
            began = time.perf_counter()
            subprocess.run([TALLY, *step, "--home", str(home)], check=True)
            seconds[step[0]] = time.perf_counter() - began
            log(f"tally {step[0]}: {seconds[step[0]]:.0f} s")
    else:
        began = time.perf_counter()
        write_direct(home)
        seconds["write_delta"] = time.perf_counter() - began
        log(f"write_delta: {seconds['write_delta']:.0f} s")
    done = {**wanted, "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    marker.write_text(json.dumps(done))
    return home, done


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


# ---------------------------------------------------------------- the DuckDB side


def price_frame() -> pl.DataFrame:
    """The shipped prices, one row per matchable name, with the long-context threshold."""
    table = shipped_pricing()
    thresholds = pl.Series([None, *table.thresholds], dtype=pl.Int64)
    return table.frame().with_columns(
        long_threshold=pl.col("long_tier").fill_null(0).map_batches(
            lambda tier: thresholds.gather(tier), return_dtype=pl.Int64))


def files_of(home: Path, event_type: str) -> list[str]:
    """The current Parquet files of a Delta table (from its log, not a directory glob)."""
    return list(DeltaTable(str(home / "lake" / event_type)).file_uris())


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
    """'yes', or what differs first."""
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


# ---------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; best counts")
    parser.add_argument("--prepare", choices=("tally", "direct"), default="tally")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the lake is built and kept "
                             "[default: $TMPDIR/tally-bench-report-<events>-<prepare>]")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Prepare (or reuse) the lake, time both sides, print the figures."""
    args = _parse_args(argv)
    root = args.dir or Path(tempfile.gettempdir()) / (
        f"tally-bench-report-{args.events}-{args.prepare}")
    home, prepared = prepare(root, args.events, args.seed, args.prepare)
    prices = price_frame()
    spec_path = root / "duckdb.json"
    tally_command = [TALLY, "report", "--by", BY, "--format", "json", "--home", str(home)]
    tally_runs: list[dict[str, Any]] = []
    duck: dict[str, dict[str, list[float]]] = {
        v: {"query": [], "process": [], "process_cpu": []} for v in ("window", "hash")}
    tally_rows: list[dict[str, Any]] = []
    agreement: dict[str, str] = {}
    for run in range(args.repeat):
        result = run_child(tally_command)
        tally_runs.append(result)
        tally_rows = json.loads(result["stdout"])
        log(f"run {run + 1}: tally {result['seconds']:.2f} s (cpu {result['cpu']:.2f} s, "
            f"{result['rss_mb']:,.0f} MB)")
        for variant, times in duck.items():
            sql = report_sql(home, variant)
            seconds, rows = duckdb_in_process(sql, prices)
            times["query"].append(seconds)
            agreement[variant] = same_result(tally_rows, rows)
            spec_path.write_text(json.dumps({"sql": sql, "prices": prices.to_dicts()}))
            child = run_child([sys.executable, "-c", DUCKDB_CHILD, str(spec_path)])
            times["process"].append(child["seconds"])
            times["process_cpu"].append(child["cpu"])
            log(f"run {run + 1}: duckdb ({variant} dedupe) query {seconds:.2f} s, "
                f"process {child['seconds']:.2f} s (cpu {child['cpu']:.2f} s); "
                f"same result: {agreement[variant]}")
    best_tally = min(r["seconds"] for r in tally_runs)
    best_query = min(min(t["query"]) for t in duck.values())
    best_process = min(min(t["process"]) for t in duck.values())
    figures = {
        "events": args.events, "prepared_by": prepared["method"],
        "preparation_seconds": prepared["seconds"], "groups": len(tally_rows),
        "tally_seconds": round(best_tally, 3),
        "tally_cpu_seconds": round(min(r["cpu"] for r in tally_runs), 3),
        "tally_rss_mb": round(max(r["rss_mb"] for r in tally_runs)),
        **{f"duckdb_{v}_query_seconds": round(min(t["query"]), 3) for v, t in duck.items()},
        **{f"duckdb_{v}_process_seconds": round(min(t["process"]), 3) for v, t in duck.items()},
        **{f"duckdb_{v}_process_cpu_seconds": round(min(t["process_cpu"]), 3)
           for v, t in duck.items()},
        "same_result": agreement,
        "ratio_tally_vs_fastest_duckdb_query": round(best_tally / best_query, 3),
        "ratio_tally_vs_fastest_duckdb_process": round(best_tally / best_process, 3),
    }
    print(f"lake: {args.events:,} events prepared by {prepared['method']} "
          f"({prepared['seconds']}), {len(tally_rows):,} groups")
    print(f"tally report --by {BY} --format json (whole process): {best_tally:.2f} s")
    for variant, times in duck.items():
        print(f"duckdb, {variant} dedupe: query {min(times['query']):.2f} s, "
              f"whole process {min(times['process']):.2f} s; same result: {agreement[variant]}")
    print(f"ratio tally / fastest duckdb query: {figures['ratio_tally_vs_fastest_duckdb_query']}"
          f" (goal <= 1.0); / fastest duckdb process: "
          f"{figures['ratio_tally_vs_fastest_duckdb_process']}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
