"""Benchmark of `tally compact` against DuckDB's JSONL -> Parquet COPY, and its peak RSS.

    python -m bench.compact                         # 2,000,000 events, RSS run at 10,000,000
    python -m bench.compact --events 500000 --rss-events 0

Preparation (not timed): bench.generate writes N valid events (one file, 30 days) as
events.jsonl; a fresh home gets a hard link of it under logs/ and `tally tail --once`
stages it. The stage directory is copied aside so every timed run starts from the same
stage, and events.jsonl is exactly the staged events as one JSONL file.

Timed, in the same run, each as a whole subprocess (interpreter start and imports
included), wall time from spawn to exit, peak RSS from os.wait4 of that child:

  (i)  `tally compact --home H`: stage -> Delta tables, zstd, partitioned by UTC date;
  (ii) DuckDB (the duckdb Python package, in a subprocess):
       COPY (SELECT * FROM read_json('events.jsonl')) TO 'x.parquet'
            (FORMAT parquet, COMPRESSION zstd)

Rows/s of both and the ratio tally/duckdb (goal >= 1.0) are printed; with --repeat > 1
the best run of each counts (runs alternate, so both see the same machine load). CPU
seconds (user + sys of the child) are reported too: unlike wall time, they hold up on a
machine other work is loading. Then, unless --rss-events 0, a second home of M events
(default 10,000,000) is prepared the same way and compacted once for its peak RSS
(goal <= 1 GB); both RSS figures are reported, which shows the trend with size.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import log, run_child
from bench.generate import write_log
from pipeline.ledger import VERSIONS_FILE

TALLY = str(Path(sys.executable).with_name("tally"))
DUCKDB_COPY = r"""
import sys, time
import duckdb
source, target = sys.argv[1], sys.argv[2]
connection = duckdb.connect()
connection.execute("SET enable_progress_bar = false")
began = time.perf_counter()
connection.execute(f"COPY (SELECT * FROM read_json('{source}')) TO '{target}' "
           "(FORMAT parquet, COMPRESSION zstd)")
print(f"{time.perf_counter() - began:.3f}")
"""


def prepare(root: Path, events: int, seed: int) -> tuple[Path, Path, dict[str, float]]:
    """A home with `events` staged, a copy of its stage, and the same events as JSONL."""
    timings: dict[str, float] = {}
    home = root / "home"
    subprocess.run([TALLY, "init", "--home", str(home)], check=True, capture_output=True)
    jsonl = root / "events.jsonl"
    began = time.perf_counter()
    write_log(jsonl, events, seed, days=30)
    timings["generate_s"] = time.perf_counter() - began
    os.link(jsonl, home / "logs" / "events.jsonl")
    log(f"generated {events:,} events ({jsonl.stat().st_size / 1e6:,.0f} MB) "
        f"in {timings['generate_s']:.1f} s; staging with tally tail --once")
    began = time.perf_counter()
    tail = subprocess.run([TALLY, "tail", "--once", "--home", str(home)], check=True,
                          capture_output=True, text=True)
    timings["tail_s"] = time.perf_counter() - began
    log(tail.stdout.strip())
    checkpoint = json.loads((home / "state" / "checkpoint.json").read_bytes())
    if checkpoint["staged"] != events or checkpoint["quarantined"] != 0:
        raise RuntimeError(f"expected {events} staged and none quarantined: {checkpoint}")
    saved = root / "stage.saved"
    shutil.copytree(home / "stage", saved)
    return home, saved, timings


def restore(home: Path, saved: Path) -> None:
    """Back to the freshly staged state: stage as saved, no lake."""
    shutil.rmtree(home / "stage")
    shutil.copytree(saved, home / "stage")
    shutil.rmtree(home / "lake")
    (home / "lake").mkdir()
    # The table versions compaction made: kept, they would report the lake's commits lost.
    (home / "state" / VERSIONS_FILE).unlink(missing_ok=True)


def compact_once(home: Path, saved: Path, events: int) -> dict[str, Any]:
    restore(home, saved)
    subprocess.run(["sync"], check=False)
    result = run_child([TALLY, "compact", "--home", str(home)])
    summary = result["stdout"].strip().splitlines()[0]
    if not summary.startswith(f"compact: {events:,} events"):
        raise RuntimeError(f"unexpected summary: {summary}")
    result["summary"] = summary
    result["rows_per_s"] = events / result["seconds"]
    return result


def duckdb_once(jsonl: Path, out: Path, events: int) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    subprocess.run(["sync"], check=False)
    result = run_child([sys.executable, "-c", DUCKDB_COPY, str(jsonl), str(out)])
    result["copy_seconds"] = float(result["stdout"].split()[-1])
    result["rows_per_s"] = events / result["seconds"]
    result["copy_rows_per_s"] = events / result["copy_seconds"]
    return result


def lake_size_mb(home: Path) -> float:
    return sum(p.stat().st_size for p in (home / "lake").rglob("*.parquet")) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compact", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each; best counts")
    parser.add_argument("--rss-events", type=int, default=10_000_000,
                        help="events of the peak-RSS run (0: skip it)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to put the data (default: a temp dir, removed after)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tally-bench-compact-", dir=args.workdir))
    figures: dict[str, Any] = {"events": args.events}
    try:
        home, saved, prep = prepare(work / "main", args.events, args.seed)
        figures.update(prep)
        tally_runs, duck_runs = [], []
        for _ in range(args.repeat):
            tally_runs.append(compact_once(home, saved, args.events))
            log(f"tally compact: {tally_runs[-1]['seconds']:.2f} s "
                f"({tally_runs[-1]['cpu']:.1f} CPU s), "
                f"{tally_runs[-1]['rss_mb']:,.0f} MB peak  ({tally_runs[-1]['summary']})")
            duck_runs.append(duckdb_once(work / "main" / "events.jsonl",
                                         work / "main" / "x.parquet", args.events))
            log(f"duckdb COPY:   {duck_runs[-1]['seconds']:.2f} s "
                f"({duck_runs[-1]['cpu']:.1f} CPU s), "
                f"{duck_runs[-1]['rss_mb']:,.0f} MB peak (COPY alone "
                f"{duck_runs[-1]['copy_seconds']:.2f} s)")
        tally = min(tally_runs, key=lambda r: r["seconds"])
        duck = min(duck_runs, key=lambda r: r["seconds"])
        figures.update({
            "tally_compact_s": round(tally["seconds"], 3),
            "tally_cpu_s": round(tally["cpu"], 2),
            "tally_rows_per_s": round(tally["rows_per_s"]),
            "tally_peak_rss_mb": round(tally["rss_mb"]),
            "tally_lake_mb": round(lake_size_mb(home), 1),
            "duckdb_s": round(duck["seconds"], 3),
            "duckdb_cpu_s": round(duck["cpu"], 2),
            "cpu_ratio_duckdb_over_tally": round(duck["cpu"] / tally["cpu"], 3),
            "duckdb_rows_per_s": round(duck["rows_per_s"]),
            "duckdb_copy_only_s": round(duck["copy_seconds"], 3),
            "duckdb_peak_rss_mb": round(duck["rss_mb"]),
            "duckdb_parquet_mb": round((work / "main" / "x.parquet").stat().st_size / 1e6, 1),
            "ratio_tally_over_duckdb": round(tally["rows_per_s"] / duck["rows_per_s"], 3),
            "duckdb_mode": "subprocess (duckdb Python package), whole-process wall time",
        })
        print(f"tally compact  {figures['tally_rows_per_s']:>12,} rows/s  "
              f"({figures['tally_compact_s']:.2f} s, peak RSS {figures['tally_peak_rss_mb']:,} MB)")
        print(f"duckdb COPY    {figures['duckdb_rows_per_s']:>12,} rows/s  "
              f"({figures['duckdb_s']:.2f} s, peak RSS {figures['duckdb_peak_rss_mb']:,} MB)")
        print(f"ratio tally/duckdb: {figures['ratio_tally_over_duckdb']:.2f} (goal >= 1.0); "
              f"CPU seconds {figures['tally_cpu_s']:.1f} vs {figures['duckdb_cpu_s']:.1f}")
        shutil.rmtree(work / "main")

        if args.rss_events > 0:
            home, saved, prep = prepare(work / "rss", args.rss_events, args.seed + 1)
            (work / "rss" / "events.jsonl").unlink()  # not needed any more; frees disk
            run = compact_once(home, saved, args.rss_events)
            figures.update({
                "rss_events": args.rss_events,
                "rss_tail_s": round(prep["tail_s"], 1),
                "rss_compact_s": round(run["seconds"], 2),
                "rss_compact_cpu_s": round(run["cpu"], 2),
                "rss_rows_per_s": round(run["rows_per_s"]),
                "rss_peak_mb": round(run["rss_mb"]),
                "rss_trend_mb": {str(args.events): figures["tally_peak_rss_mb"],
                                 str(args.rss_events): round(run["rss_mb"])},
            })
            print(f"tally compact of {args.rss_events:,} events: {run['seconds']:.1f} s, "
                  f"peak RSS {run['rss_mb']:,.0f} MB (goal <= 1024 MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
