"""Benchmark of compaction into a growing lake: this tally against another version of it.

    python -m bench.compact_history                          # 2,000,000 events, 20 slices
    python -m bench.compact_history --events 10000000 --slices 52 --baseline 2194105

The issue's goal: compaction throughput with each event kept once and the rollups kept is
at least 0.8x that of tally before them (commit 2194105, the default --baseline), on the
same data.

Preparation: `git archive` of the baseline commit is unpacked into the work directory; it
runs on this interpreter and its packages, with PYTHONPATH pointing at it. Two homes, one
per version, both with `paths.logs` set to one shared logs directory. bench.generate
appends N events over 365 days (24 agents, one file each, each in time order) slice by
slice, as bench.report builds its lake; after each slice each home runs its own `tally
tail --once --quiet` (not timed), then each runs `tally compact`, timed as a whole
process, the two in turns (which goes first alternates from slice to slice, so both meet
the same machine).

Figures: per version the summed wall and CPU seconds of its compactions and events per
second; per slice the ratio baseline seconds / this tally's seconds (the throughput
ratio: above 1 when this tally is faster) and its median; the total's ratio; peak RSS.
Each home's events are counted at the end (lake plus stage, every event_id once) and must
agree. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import REPO, log, precompile, run_child
from bench.generate import append_in_slices

TALLY = str(Path(sys.executable).with_name("tally"))
AGENTS, DAYS = 24, 365
START = datetime(2026, 1, 1, tzinfo=UTC)
BASELINE = "2194105"
COUNT = r"""
import sys
from pipeline.config import load_home
from pipeline.lake import scan_events
from pipeline.schemas import load_schemas
home = load_home(sys.argv[1])
total = 0
types = load_schemas().types
for event_type in (types() if callable(types) else types):
    frame = scan_events(home, event_type)
    total += 0 if frame is None else frame.select("event_id").collect().height
print(total)
"""


def unpack(ref: str, target: Path) -> str:
    """The baseline's source tree under `target`; its full commit id."""
    commit = subprocess.run(["git", "rev-parse", ref], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return commit


def make_home(home: Path, logs: Path, source: Path | None) -> dict[str, str]:
    """An initialised home reading `logs`; the environment that runs `source`'s tally."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    subprocess.run([TALLY, "init", "--home", str(home)], check=True, capture_output=True,
                   env=env)
    config = home / "config.toml"
    config.write_text(config.read_text().replace('# logs = "logs"', f'logs = "{logs}"', 1))
    return env


def compact(home: Path, env: dict[str, str]) -> dict[str, Any]:
    """One timed `tally compact` of a home."""
    with _environment(env):
        return run_child([TALLY, "compact", "--home", str(home)])


class _environment:
    """os.environ as `env` for the duration (run_child starts its child with it)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __enter__(self) -> None:
        self.saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)

    def __exit__(self, *_: object) -> None:
        os.environ.clear()
        os.environ.update(self.saved)


def events_in(home: Path, env: dict[str, str]) -> int:
    """The home's events, lake plus stage, each event_id once."""
    out = subprocess.run([sys.executable, "-c", COUNT, str(home)], check=True,
                         capture_output=True, text=True, env=env).stdout
    return int(out.strip())


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both versions over the same slices; the figures."""
    baseline_src = work / "baseline"
    commit = unpack(args.baseline, baseline_src)
    precompile(baseline_src / "pipeline")
    precompile(REPO / "pipeline")
    logs = work / "logs"
    logs.mkdir()
    homes = {"tally": work / "new", "baseline": work / "old"}
    envs = {"tally": make_home(homes["tally"], logs, None),
            "baseline": make_home(homes["baseline"], logs, baseline_src)}
    runs: dict[str, list[dict[str, Any]]] = {"tally": [], "baseline": []}
    boundaries = [START + timedelta(days=DAYS * k / args.slices) for k in range(1, args.slices)]
    slices = append_in_slices(logs, args.events, args.seed, boundaries, files=AGENTS,
                              agents=AGENTS, days=DAYS, start=START)
    for number, _ in enumerate(slices, 1):
        for name in homes:
            with _environment(envs[name]):
                run_child([TALLY, "tail", "--once", "--quiet", "--home", str(homes[name])])
        order = ["tally", "baseline"] if number % 2 else ["baseline", "tally"]
        for name in order:
            runs[name].append(compact(homes[name], envs[name]))
        pair = runs["baseline"][-1]["seconds"] / runs["tally"][-1]["seconds"]
        log(f"slice {number}/{args.slices}: tally {runs['tally'][-1]['seconds']:.2f} s, "
            f"baseline {runs['baseline'][-1]['seconds']:.2f} s: ratio {pair:.2f}")
    counted = {name: events_in(homes[name], envs[name]) for name in homes}
    return figures(args, commit, runs, counted)


def figures(args: argparse.Namespace, commit: str, runs: dict[str, list[dict[str, Any]]],
            counted: dict[str, int]) -> dict[str, Any]:
    """Totals, ratios and the goal."""
    totals = {name: {"seconds": round(sum(r["seconds"] for r in done), 2),
                     "cpu_s": round(sum(r["cpu"] for r in done), 2),
                     "peak_rss_mb": round(max(r["rss_mb"] for r in done)),
                     "events_per_s": round(args.events / sum(r["seconds"] for r in done))}
              for name, done in runs.items()}
    pairs = [old["seconds"] / new["seconds"] for old, new in zip(runs["baseline"], runs["tally"],
                                                              strict=True)]
    ratio = totals["baseline"]["seconds"] / totals["tally"]["seconds"]
    return {"events": args.events, "slices": args.slices, "seed": args.seed,
            "baseline": commit, "totals": totals,
            "ratio_total": round(ratio, 3),
            "ratio_cpu": round(totals["baseline"]["cpu_s"] / totals["tally"]["cpu_s"], 3),
            "ratio_slices_median": round(statistics.median(pairs), 3),
            "ratio_slices": [round(p, 3) for p in pairs],
            "events_counted": counted, "agree": len(set(counted.values())) == 1,
            "goal_ratio_ge_0.8": ratio >= 0.8}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the summary and the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", default=BASELINE, help="git ref of the other tally")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="kept after the run (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        shutil.rmtree(args.workdir, ignore_errors=True)
        args.workdir.mkdir(parents=True)
        result = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="tally-bench-history-") as scratch:
            result = run(args, Path(scratch))
    t, b = result["totals"]["tally"], result["totals"]["baseline"]
    log(f"tally: {t['seconds']} s ({t['cpu_s']} CPU s, {t['events_per_s']:,} events/s, "
        f"peak {t['peak_rss_mb']} MB); baseline {result['baseline'][:7]}: {b['seconds']} s "
        f"({b['cpu_s']} CPU s, {b['events_per_s']:,} events/s, peak {b['peak_rss_mb']} MB)")
    log(f"throughput ratio tally/baseline: total {result['ratio_total']}, CPU "
        f"{result['ratio_cpu']}, median of slices {result['ratio_slices_median']} "
        f"(goal >= 0.8); events agree: {result['agree']} {result['events_counted']}")
    print(json.dumps(result))
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
