"""Benchmark of many hosts sharing one lake on S3 (moto's server on 127.0.0.1):

    python -m bench.scale                       # 3,000,000 events, 3 hosts, 3 runs
    python -m bench.scale --events 300000 --repeat 1 --no-daft

Preparation (not timed as a figure, its seconds printed): bench.generate's lines, only its
agent_token_usage lines kept (so that every engine below counts the same thing: tally's
report adds task_progress increments, which Polars and Daft do not compute), --events in
all over --days days, split over --hosts logs as `python -m bench.generate --files H` splits
them (each host its own share of the agents; event ids are distinct; ~1 % of the lines carry
no event_id and the tailer derives one). Each host gets a home whose logs/ holds a hard link
of its log; one more home, `single`, holds all of them. `tally tail --once` stages each home
(timed apart), and the stage and state directories are copied aside, so that every run
compacts the same staged events.

Each run (--repeat runs; medians count) starts its own moto server (a fresh store, its
memory freed at the end of the run) and, in it, two buckets:

  1 host   `single`'s config.toml names the first bucket's lake: `tally compact` of all the
           events, one process, timed from spawn to exit (bench.common.run_child);
  H hosts  the host homes name the second bucket's lake, host ids host-a, host-b, ...: their
           `tally compact` processes are released at one moment (a barrier), wall time from
           the first spawn to the last exit. Each one's summary line gives its events and
           "planned again K time(s)" (commits refused because another host committed
           first: its retries). Throughput = all events / wall seconds. The S3 emulator's CPU
seconds over each compaction are reported too (/proc/PID/stat): it shares the machine.

Then the H-host lake is checked with Polars (pl.scan_delta, only event_id read): it must
hold exactly --events rows with as many distinct event ids, else the bench stops with
LAKE CHECK FAILED (the 1-host lake is checked the same way). And the same question is asked
of that lake by each engine:

  tally    `tally report --by agent,day --tz UTC --format json` from each host's home
           (a whole process each, spawn to exit); the hosts' answers must be equal;
  Polars   in this process: scan_delta of <lake>/agent_token_usage, group by agent and date,
           count and the four token sums, collected (seconds from scan to the rows);
  Daft     examples/daft_report.py on a local Ray cluster of --ray-nodes one-CPU nodes,
           run by .venv-scale's Python (`make scale`): its main(), with two time stamps
           added (cluster up; query answered), so the whole process, the cluster's start
           and the query are reported. Skipped, saying why, without .venv-scale or with
           --no-daft.

Per (agent, day), events and the four token totals must agree between the engines (a
disagreement is printed loudly; exit status 1). The machine's cores bound what H hosts can
gain: they share its CPUs with each other and with the S3 emulator, so on a small machine
H concurrent compactions measure contention and retries, not a fleet's throughput.

Each run's figures are printed as it ends; then one table, per figure the median and every
run's value; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable

from bench.common import log, precompile, run_child
from bench.generate import generate_lines
from tests.s3 import MotoServer

TALLY = str(Path(sys.executable).with_name("tally"))
REPO = Path(__file__).resolve().parent.parent
SCALE_PYTHON = REPO / ".venv-scale" / "bin" / "python"
EXAMPLE = REPO / "examples" / "daft_report.py"
TABLE = "agent_token_usage"
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
USAGE_PREFIX = b'{"event_type":"agent_token_usage"'
USAGE_SHARE_FLOOR = 0.80  # bench.generate makes ~84 % usage lines: generate this many more
BUDGETS_OFF = "[budgets]\ndaily_tokens = 0\nweekly_tokens = 0\ndaily_cost_usd = 0\n"
SINGLE = "single"
EXIT_DISAGREE = 1
SUMMARY = re.compile(
    r"compact: (?P<events>[\d,]+) events in (?P<commits>\d+) commit\(s\), "
    r"(?P<partitions>\d+) partition\(s\) touched, (?P<seconds>[\d.]+) s "
    r"\((?P<rate>[\d,]+) events/s\)(?:, planned again (?P<retries>\d+) time\(s\)[^,]*)?"
    r"(?:, rollups caught up again (?P<rollup_retries>\d+) time\(s\))?")

# examples/daft_report.py's own main(), in .venv-scale, with two stamps on stderr: after its
# local cluster is up, and once the report's rows are all read. argv: examples dir, then the
# example's arguments.
DAFT_CHILD = r"""
import json, sys, time
began = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import daft_report as example
stamps = {"imported_s": time.perf_counter() - began}
start_cluster, json_lines = example.local_cluster, example.json_lines

def local_cluster(nodes):
    cluster = start_cluster(nodes)
    stamps["cluster_up_s"] = time.perf_counter() - began
    return cluster

def timed_lines(report):
    lines = list(json_lines(report))
    stamps["answered_s"] = time.perf_counter() - began
    return lines

example.local_cluster, example.json_lines = local_cluster, timed_lines
code = example.main(sys.argv[2:])
print("DAFT-STAMPS " + json.dumps(stamps), file=sys.stderr)
sys.exit(code)
"""


class LakeCheckFailed(RuntimeError):
    """The lake does not hold exactly the generated events, each once."""


# ---------------------------------------------------------------- preparation


def host_names(hosts: int) -> list[str]:
    return [f"host-{chr(ord('a') + k)}" if hosts <= 26 else f"host-{k:02d}"
            for k in range(hosts)]


def write_usage_log(path: Path, target: int, seed: int, index: int, files: int,
                    days: int) -> int:
    """`target` agent_token_usage lines of bench.generate's file `index` of `files`."""
    lines = int(target / USAGE_SHARE_FLOOR) + 64  # of this file; `files` times that in all
    written = 0
    block: list[bytes] = []
    with open(path, "wb") as out:
        for line in generate_lines(lines * files, seed, file_index=index, files=files, days=days):
            if written == target:
                break
            if line.startswith(USAGE_PREFIX):
                block.append(line)
                written += 1
                if len(block) == 65536:
                    out.write(b"\n".join(block) + b"\n")
                    block.clear()
        if block:
            out.write(b"\n".join(block) + b"\n")
    if written != target:
        raise RuntimeError(f"{path.name}: only {written} usage lines in {lines} generated")
    return written


def config_text(lake: str, host: str) -> str:
    """A whole config.toml: the lake, the host's id, budgets off (no alerts to deliver)."""
    return f'[lake]\nuri = "{lake}"\n\n[host]\nid = "{host}"\n\n{BUDGETS_OFF}'


def tally(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([TALLY, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"tally {' '.join(args)} exited {done.returncode}: "
                           f"{done.stderr[-3000:]}")
    return done


def prepare(root: Path, events: int, hosts: int, seed: int, days: int) -> dict[str, Any]:
    """The logs, a home per host and the `single` home, each staged and its stage saved."""
    names = host_names(hosts)
    logs = root / "logs"
    logs.mkdir(parents=True)
    began = time.perf_counter()
    shares = {}
    for index, name in enumerate(names):
        target = events // hosts + (1 if index < events % hosts else 0)
        shares[name] = write_usage_log(logs / f"{name}.jsonl", target, seed, index, hosts, days)
    generate_s = time.perf_counter() - began
    size_mb = sum(p.stat().st_size for p in logs.iterdir()) / 1e6
    log(f"generated {events:,} agent_token_usage events ({size_mb:,.0f} MB) over {hosts} "
        f"host logs in {generate_s:.1f} s")
    tail_s = {}
    for name in [*names, SINGLE]:
        home = root / "homes" / name
        tally("init", "--home", str(home))
        # A local lake while staging: the tailer looks at the lake's high water, which is
        # nothing in any fresh lake; each run names its own bucket.
        (home / "config.toml").write_text(config_text("", name).replace('uri = ""\n', ""))
        for source in ([name] if name != SINGLE else names):
            os.link(logs / f"{source}.jsonl", home / "logs" / f"{source}.jsonl")
        began = time.perf_counter()
        tally("tail", "--once", "--quiet", "--home", str(home))
        tail_s[name] = round(time.perf_counter() - began, 2)
        checkpoint = json.loads((home / "state" / "checkpoint.json").read_bytes())
        expected = events if name == SINGLE else shares[name]
        if checkpoint["staged"] != expected or checkpoint["quarantined"] != 0:
            raise RuntimeError(f"{name}: expected {expected:,} staged and none quarantined: "
                               f"{checkpoint}")
        for part in ("stage", "state"):
            shutil.copytree(home / part, root / "saved" / name / part)
        log(f"{name}: {expected:,} events staged by tally tail --once in {tail_s[name]:.1f} s")
    return {"generate_s": round(generate_s, 2), "log_mb": round(size_mb, 1),
            "tail_s": tail_s, "shares": shares}


def restore(root: Path, name: str, lake: str) -> Path:
    """A home back to its freshly staged state, its config naming `lake`."""
    home = root / "homes" / name
    for part in ("stage", "state"):
        shutil.rmtree(home / part)
        shutil.copytree(root / "saved" / name / part, home / part)
    shutil.rmtree(home / "lake")
    (home / "lake").mkdir()
    (home / "config.toml").write_text(config_text(lake, name))
    return home


# ---------------------------------------------------------------- compaction


def parse_summary(stdout: str, who: str) -> dict[str, Any]:
    match = SUMMARY.search(stdout)
    if match is None:
        raise RuntimeError(f"{who}: no summary line in tally compact's output: {stdout!r}")
    return {"summary": match.group(0), "events": int(match["events"].replace(",", "")),
            "commits": int(match["commits"]), "partitions": int(match["partitions"]),
            "own_s": float(match["seconds"]), "retries": int(match["retries"] or 0),
            "rollup_retries": int(match["rollup_retries"] or 0)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads, not its children), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def said(child: dict[str, Any]) -> dict[str, str]:
    """{"stderr": what a child printed there}, if anything."""
    text = child["stderr"].strip()
    return {"stderr": text[-4000:]} if text else {}


def compact_single(home: Path, events: int, timeout: float) -> dict[str, Any]:
    subprocess.run(["sync"], check=False)
    child = run_child([TALLY, "compact", "--home", str(home)], timeout=timeout)
    figures = parse_summary(child["stdout"], SINGLE)
    if figures["events"] != events:
        raise RuntimeError(f"{SINGLE} compacted {figures['events']:,} events, not {events:,}")
    return {**figures, "seconds": round(child["seconds"], 3), "cpu_s": round(child["cpu"], 2),
            "rss_mb": round(child["rss_mb"]), "events_per_s": round(events / child["seconds"]),
            **said(child)}


def compact_together(homes: dict[str, Path], events: int, timeout: float) -> dict[str, Any]:
    """Every host's `tally compact` released at one moment; wall time to the last exit."""
    subprocess.run(["sync"], check=False)
    barrier = threading.Barrier(len(homes))
    stamps: dict[str, tuple[float, float]] = {}
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}

    def host(name: str, home: Path) -> None:
        barrier.wait()
        began = time.perf_counter()
        try:
            results[name] = run_child([TALLY, "compact", "--home", str(home)], timeout=timeout)
        except Exception as exc:  # reported below, with the host's name and stderr
            failures[name] = str(exc)
        stamps[name] = (began, time.perf_counter())

    threads = [threading.Thread(target=host, args=item) for item in homes.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError("concurrent tally compact failed: " + " | ".join(
            f"{name}: {text[-3000:]}" for name, text in sorted(failures.items())))
    wall = max(end for _, end in stamps.values()) - min(start for start, _ in stamps.values())
    per_host = {}
    for name, child in sorted(results.items()):
        figures = parse_summary(child["stdout"], name)
        per_host[name] = {**figures, "seconds": round(child["seconds"], 3),
                          "cpu_s": round(child["cpu"], 2), "rss_mb": round(child["rss_mb"]),
                          **said(child)}
    compacted = sum(h["events"] for h in per_host.values())
    if compacted != events:
        raise RuntimeError(f"the hosts compacted {compacted:,} events, not {events:,}: "
                           + "; ".join(f"{n}: {h['summary']}" for n, h in per_host.items()))
    return {"seconds": round(wall, 3), "events_per_s": round(events / wall),
            "retries": {n: h["retries"] for n, h in per_host.items()},
            "retries_total": sum(h["retries"] for h in per_host.values()),
            "cpu_s": round(sum(h["cpu_s"] for h in per_host.values()), 2),
            "hosts": per_host}


def check_lake(lake: str, options: dict[str, str], events: int) -> dict[str, int]:
    """Rows and distinct event ids of the usage table: both must be `events`."""
    counted = (pl.scan_delta(f"{lake}/{TABLE}", storage_options=options)
               .select(rows=pl.len(), ids=pl.col("event_id").n_unique()).collect().row(0))
    rows, ids = int(counted[0]), int(counted[1])
    if rows != events or ids != events:
        raise LakeCheckFailed(f"LAKE CHECK FAILED: {lake}/{TABLE} holds {rows:,} rows and "
                              f"{ids:,} distinct event ids; expected {events:,} of each")
    return {"rows": rows, "distinct_event_ids": ids}


# ---------------------------------------------------------------- the question


Key = tuple[str, str]
Answer = dict[Key, tuple[int, ...]]


def tally_answer(rows: list[dict[str, Any]]) -> Answer:
    return {(r["agent"], str(r["day"])): (r["events"], *(r[t] for t in TOKENS)) for r in rows}


def polars_query(lake: str, options: dict[str, str]) -> tuple[float, Answer]:
    """Seconds from scan to rows of tokens per agent and day, in this process; the rows."""
    began = time.perf_counter()
    rows = (pl.scan_delta(f"{lake}/{TABLE}", storage_options=options)
            .with_columns(pl.col(TOKENS).fill_null(0))
            .group_by("agent", "date")
            .agg(pl.len().alias("events"), pl.col(TOKENS).sum())
            .sort("agent", "date")
            .collect())
    seconds = time.perf_counter() - began
    return seconds, {(r["agent"], r["date"].isoformat()): (r["events"], *(r[t] for t in TOKENS))
                     for r in rows.iter_rows(named=True)}


def daft_unavailable() -> str | None:
    """Why Daft cannot run here, or None."""
    if not SCALE_PYTHON.exists():
        return f"{SCALE_PYTHON.relative_to(REPO)} is missing (`make scale` builds it)"
    probe = subprocess.run([str(SCALE_PYTHON), "-c", "import daft, ray, deltalake"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f".venv-scale lacks Daft or Ray ({last})"
    return None


def daft_query(lake: str, nodes: int, timeout: float) -> dict[str, Any]:
    child = run_child([str(SCALE_PYTHON), "-c", DAFT_CHILD, str(EXAMPLE.parent), "--uri", lake,
                       "--local-ray-nodes", str(nodes)], timeout=timeout)
    stamped = [line for line in child["stderr"].splitlines() if line.startswith("DAFT-STAMPS ")]
    stamps = json.loads(stamped[-1].split(" ", 1)[1]) if stamped else {}
    alive = re.search(r"ray: (\d+) nodes alive", child["stderr"])
    rows = [json.loads(line) for line in child["stdout"].splitlines() if line.strip()]
    answer = {(r["agent"], r["date"]): (r["events"], *(r[t] for t in TOKENS)) for r in rows}
    figures: dict[str, Any] = {"seconds": round(child["seconds"], 3),
                               "nodes_alive": int(alive[1]) if alive else None}
    if "cluster_up_s" in stamps and "answered_s" in stamps:
        figures["cluster_start_s"] = round(stamps["cluster_up_s"] - stamps["imported_s"], 3)
        figures["query_s"] = round(stamps["answered_s"] - stamps["cluster_up_s"], 3)
    return {**figures, "answer": answer}


def daft_on(lake: str, args: argparse.Namespace) -> dict[str, Any]:
    """Daft's figures on the lake the hosts wrote."""
    return daft_query(lake, args.ray_nodes, args.timeout)


def first_difference(ours: Answer, theirs: Answer) -> str:
    """'yes', or the first (agent, day) whose figures differ."""
    if ours == theirs:
        return "yes"
    for key in sorted(ours.keys() | theirs.keys()):
        if ours.get(key) != theirs.get(key):
            return f"no: {key}: {ours.get(key)} / {theirs.get(key)}"
    return "no"  # not reached


# ---------------------------------------------------------------- a run


def one_run(number: int, root: Path, args: argparse.Namespace, names: list[str],
            daft_skip: str | None) -> dict[str, Any]:
    run: dict[str, Any] = {"run": number}
    with MotoServer() as moto:
        os.environ.update(moto.env())  # the children's S3 settings (keys, endpoint, http)
        options = moto.options
        single_lake = f"{moto.bucket()}/lake"
        hosts_lake = f"{moto.bucket()}/lake"

        assert moto.process is not None
        emulator = moto.process.pid
        home = restore(root, SINGLE, single_lake)
        log(f"run {number}: 1 host compacting {args.events:,} events into {single_lake}")
        before = cpu_seconds(emulator)
        run["single"] = compact_single(home, args.events, args.timeout)
        run["single"]["s3_cpu_s"] = round(cpu_seconds(emulator) - before, 2)
        log(f"  {run['single']['seconds']:.2f} s, {run['single']['events_per_s']:,} events/s "
            f"({run['single']['summary']})")
        run["single"]["lake"] = check_lake(single_lake, options, args.events)

        homes = {name: restore(root, name, hosts_lake) for name in names}
        log(f"run {number}: {len(names)} hosts compacting at once into {hosts_lake}")
        before = cpu_seconds(emulator)
        run["hosts"] = compact_together(homes, args.events, args.timeout)
        run["hosts"]["s3_cpu_s"] = round(cpu_seconds(emulator) - before, 2)
        for name, host in run["hosts"]["hosts"].items():
            log(f"  {name}: {host['seconds']:.2f} s ({host['summary']})")
            if "stderr" in host:
                log(f"  {name} stderr: {host['stderr'][-2000:]}")
        log(f"  wall {run['hosts']['seconds']:.2f} s, {run['hosts']['events_per_s']:,} events/s")
        began = time.perf_counter()
        run["hosts"]["lake"] = check_lake(hosts_lake, options, args.events)
        run["hosts"]["lake"]["usage_files"] = len(
            DeltaTable(f"{hosts_lake}/{TABLE}", storage_options=options).file_uris())
        log(f"  lake check: {run['hosts']['lake']['rows']:,} rows, "
            f"{run['hosts']['lake']['distinct_event_ids']:,} distinct event ids "
            f"({time.perf_counter() - began:.1f} s)")

        answers: dict[str, Answer] = {}
        run["report_s"] = {}
        for name, home in homes.items():
            child = run_child([TALLY, "report", "--by", "agent,day", "--tz", "UTC",
                               "--format", "json", "--home", str(home)], timeout=args.timeout)
            run["report_s"][name] = round(child["seconds"], 3)
            answers[name] = tally_answer(json.loads(child["stdout"]))
        polars_s, answers["polars"] = polars_query(hosts_lake, options)
        run["polars_s"] = round(polars_s, 3)
        if daft_skip is None:
            run["daft"] = daft = daft_on(hosts_lake, args)
            answers["daft"] = daft.pop("answer")
        else:
            run["daft"] = {"skipped": daft_skip}
        first = answers[names[0]]
        run["groups"] = len(first)
        run["agreement"] = {f"{names[0]} vs {other}": first_difference(first, answer)
                            for other, answer in answers.items() if other != names[0]}
    return run


def print_run(run: dict[str, Any], names: list[str]) -> None:
    single, hosts = run["single"], run["hosts"]
    daft = run["daft"]
    daft_text = (f"skipped ({daft['skipped']})" if "skipped" in daft else
                 f"{daft['seconds']:.2f} s process (cluster start "
                 f"{daft.get('cluster_start_s', float('nan')):.2f} s, query "
                 f"{daft.get('query_s', float('nan')):.2f} s, {daft['nodes_alive']} nodes)")
    print(f"run {run['run']}: 1 host {single['seconds']:.2f} s "
          f"({single['events_per_s']:,} events/s, {single['commits']} commits); "
          f"{len(names)} hosts {hosts['seconds']:.2f} s ({hosts['events_per_s']:,} events/s), "
          f"retries {hosts['retries']}; report "
          + ", ".join(f"{n} {s:.2f} s" for n, s in run["report_s"].items())
          + f"; Polars {run['polars_s']:.2f} s; Daft {daft_text}; agree: "
          + ", ".join(f"{k} {v}" for k, v in run["agreement"].items()), flush=True)


# ---------------------------------------------------------------- main


def rows_of(runs: list[dict[str, Any]], names: list[str]) -> list[tuple[str, str, list[Any]]]:
    """(label, unit, per-run values) of every figure in the table."""
    rows: list[tuple[str, str, list[Any]]] = [
        ("1 host: tally compact, wall", "s", [r["single"]["seconds"] for r in runs]),
        ("1 host: events/s", "", [r["single"]["events_per_s"] for r in runs]),
        ("1 host: CPU seconds", "s", [r["single"]["cpu_s"] for r in runs]),
        ("1 host: S3 emulator's CPU seconds", "s", [r["single"]["s3_cpu_s"] for r in runs]),
        (f"{len(names)} hosts: spawn to last exit", "s", [r["hosts"]["seconds"] for r in runs]),
        (f"{len(names)} hosts: events/s", "", [r["hosts"]["events_per_s"] for r in runs]),
        (f"{len(names)} hosts: CPU seconds, all", "s", [r["hosts"]["cpu_s"] for r in runs]),
        (f"{len(names)} hosts: S3 emulator's CPU seconds", "s",
         [r["hosts"]["s3_cpu_s"] for r in runs]),
        (f"{len(names)} hosts / 1 host, events/s", "",
         [round(r["hosts"]["events_per_s"] / r["single"]["events_per_s"], 3) for r in runs]),
    ]
    for name in names:
        rows.append((f"  {name}: compact process", "s",
                     [r["hosts"]["hosts"][name]["seconds"] for r in runs]))
        rows.append((f"  {name}: retries (planned again)", "",
                     [r["hosts"]["hosts"][name]["retries"] for r in runs]))
        rows.append((f"  {name}: rollup retries", "",
                     [r["hosts"]["hosts"][name]["rollup_retries"] for r in runs]))
    for name in names:
        rows.append((f"tally report from {name}", "s", [r["report_s"][name] for r in runs]))
    rows.append(("Polars in-process query", "s", [r["polars_s"] for r in runs]))
    rows.append(("Daft process (examples/daft_report.py)", "s",
                 [r["daft"].get("seconds") for r in runs]))
    rows.append(("  Daft: Ray cluster start", "s",
                 [r["daft"].get("cluster_start_s") for r in runs]))
    rows.append(("  Daft: query", "s", [r["daft"].get("query_s") for r in runs]))
    return rows


def median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def print_table(rows: list[tuple[str, str, list[Any]]]) -> None:
    print(f"{'measure':<44} {'median':>12}   runs")
    for label, unit, values in rows:
        middle = median(values)
        shown = "-" if middle is None else f"{middle:,g}{' ' + unit if unit else ''}"
        each = ", ".join("-" if v is None else f"{v:,g}" for v in values)
        print(f"{label:<44} {shown:>12}   [{each}]")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3_000_000, help="[default: 3,000,000]")
    parser.add_argument("--hosts", type=int, default=3, help="[default: 3]")
    parser.add_argument("--days", type=int, default=30, help="time span of the logs [30]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs; medians count [3]")
    parser.add_argument("--ray-nodes", type=int, default=2, help="Daft's local Ray nodes [2]")
    parser.add_argument("--no-daft", action="store_true", help="skip the Daft query")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds any one timed process may take [3600]")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the logs and homes go [default: a temporary directory, "
                             "removed after]")
    args = parser.parse_args(argv)
    if min(args.events, args.hosts, args.days, args.repeat, args.ray_nodes) < 1:
        parser.error("need --events, --hosts, --days, --repeat and --ray-nodes of at least 1")
    if args.events < args.hosts:
        parser.error("need at least one event per host")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    names = host_names(args.hosts)
    package = Path(__import__("pipeline").__file__).parent
    log(f"tally: {TALLY}, package {package}")
    precompile(package)
    daft_skip = "--no-daft" if args.no_daft else daft_unavailable()
    if daft_skip:
        log(f"Daft skipped: {daft_skip}")
    root = Path(tempfile.mkdtemp(prefix="tally-bench-scale-", dir=args.workdir))
    saved_env = dict(os.environ)
    began = time.perf_counter()
    try:
        prepared = prepare(root, args.events, args.hosts, args.seed, args.days)
        runs = []
        for number in range(1, args.repeat + 1):
            runs.append(one_run(number, root, args, names, daft_skip))
            print_run(runs[-1], names)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        shutil.rmtree(root, ignore_errors=True)
    rows = rows_of(runs, names)
    print(f"{args.events:,} agent_token_usage events over {args.days} days, {args.hosts} hosts "
          f"({', '.join(f'{n} {c:,}' for n, c in prepared['shares'].items())}); "
          f"{args.repeat} run(s), {os.cpu_count()} CPUs; preparation: generate "
          f"{prepared['generate_s']:.1f} s, tail --once "
          + ", ".join(f"{n} {s:.1f} s" for n, s in prepared["tail_s"].items()))
    print_table(rows)
    agreement = {f"run {run['run']}: {key}": value for run in runs
                 for key, value in run["agreement"].items() if value != "yes"}
    print("lake check (rows = distinct event ids = events), every run, both lakes: passed")
    print("engines agree per agent and day (events, four token sums): "
          + ("yes" if not agreement else f"NO: {agreement}"))
    print("reproduce: " + " ".join([".venv/bin/python -m bench.scale",
                                    *(sys.argv[1:] if argv is None else argv)]))
    figures = {"events": args.events, "hosts": args.hosts, "days": args.days, "seed": args.seed,
               "repeat": args.repeat, "cpus": os.cpu_count(), "preparation": prepared,
               "lake_check": "passed", "agreement": agreement or "yes",
               "medians": {label.strip(): median(values) for label, _, values in rows},
               "runs": runs,
               "total_s": round(time.perf_counter() - began, 1)}
    print(json.dumps(figures))
    if agreement:
        for key, value in agreement.items():
            print(f"!!! ENGINES DISAGREE ({key}): {value}", flush=True)
        return EXIT_DISAGREE
    return 0


if __name__ == "__main__":
    sys.exit(main())
