"""Benchmark of budgets and the live views (three runs each; medians count):

    python -m bench.budgets            # the issue's sizes, on bench.report's 10M-event lake
    python -m bench.budgets --quick    # one short run, on a 200,000-event lake (smoke test)

alert: `tally tail` follows a home giving agent0..agentN-1 a daily budget of 1,000 tokens
and POSTing alerts to a ThreadingHTTPServer here; once a warm-up crossing came through,
one 1,500-token event per agent is appended --gap s apart (one EXCEEDED alert each).
Latency: webhook arrival - end of the append (time.monotonic(), this process); p50, p99.
check: in process, Tailer(home, on_commit=timed) around BudgetMonitor.batch_committed over
--batches live batches of 1-5 events, on an empty lake and on a copy (hard links) of
bench.report's lake (built and cached as it does, budgets off); publish (live.json, after
each batch as a follower does) and seed beside. The monitor's clock and the events' ts
start 15 minutes before the end of that lake's year (2026): its last day is today.
statusline: `tally statusline --home H` with a Claude Code payload on stdin, live.json
present: median wall ms of --calls calls, spawn to exit.
idle CPU: an idle `tally run` and, on its home, `tally watch` drawing in a detached tmux:
utime + stime (/proc/PID/stat) over --window s after --settle s, in % of one core.

A shared 2-core machine: nothing is asserted. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.common import REPO, log, precompile, settle_sizes, sized_parser
from bench.tail import percentile
from pipeline.settings import CONFIG_TEMPLATE

TALLY = str(Path(sys.executable).with_name("tally"))
PAYLOAD = b'{"session_id":"s1","model":{"display_name":"Opus"},"cwd":"/tmp"}'
BUDGETS_OFF = report.BUDGETS_OFF
GOALS = {"alert_p99_ms": 1000.0, "check_ms": 5.0, "statusline_ms": 60.0, "cpu_pct": 3.0}
WARM_BATCHES = 10


def init_home(root: Path, config: str | None = None) -> Path:
    subprocess.run([TALLY, "init", "--home", str(root)], check=True, capture_output=True)
    if config is not None:
        (root / "config.toml").write_text(config, encoding="utf-8")
    return root


def usage_line(agent: str, tokens: int, session: str = "s1", at: datetime | None = None) -> bytes:
    """An agent_token_usage event of `at` (now) with `tokens` tokens, two thirds input."""
    ts = (at or datetime.now(UTC)).isoformat(timespec="milliseconds")[:23] + "Z"
    return orjson.dumps({
        "event_type": "agent_token_usage", "event_id": f"bench-{os.urandom(8).hex()}",
        "ts": ts, "agent": agent, "session_id": session, "task": "BENCH-1",
        "model": "claude-sonnet-4-5", "input_tokens": tokens * 2 // 3,
        "output_tokens": tokens - tokens * 2 // 3}) + b"\n"


def start(command: list[str], errors: Path) -> subprocess.Popen[bytes]:
    """A child whose stderr goes to the file `errors`."""
    with open(errors, "wb") as handle:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle)


def stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a clean stop), SIGKILL after 30 s."""
    child.terminate()
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


# ---------------------------------------------------------------- alert latency


class Hook(BaseHTTPRequestHandler):
    """The webhook: records when each scope's first alert arrived (time.monotonic)."""

    arrived: dict[str, float]  # set on a subclass per server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        at = time.monotonic()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.arrived.setdefault(str(orjson.loads(body).get("scope")), at)  # a retry: the first

    def log_message(self, *args: Any) -> None:
        pass


def arrival(arrived: dict[str, float], scope: str, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while scope not in arrived and time.monotonic() < deadline:
        time.sleep(0.002)  # the arrival is stamped by the server: polling adds nothing
    return arrived.get(scope)


def alert_latency(root: Path, crossings: int, gap: float) -> dict[str, Any]:
    """One run: `crossings` budget crossings, `gap` s apart, to a following `tally tail`."""
    agents = [f"agent{k}" for k in range(crossings)]
    arrived: dict[str, float] = {}
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), type("Hook", (Hook,), {"arrived": arrived}))
    receiver.daemon_threads = True
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    config = BUDGETS_OFF + "".join(f"[budgets.agents.{a}]\ndaily_tokens = 1000\n"
                                   for a in ["warmup", *agents])
    config += f'[alerts]\nwebhook = "http://127.0.0.1:{receiver.server_port}/"\n'
    home = init_home(root / "alert-home", config)
    (home / "logs" / "live").mkdir()
    follower = start([TALLY, "tail", "--home", str(home), "--quiet"], root / "tail.err")
    fd = os.open(home / "logs" / "live" / "bench.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    delays: list[float | None] = []
    try:
        os.write(fd, usage_line("warmup", 1500))
        if arrival(arrived, "warmup", 120) is None:
            raise SystemExit(f"no warm-up alert: {(root / 'tail.err').read_text()[-500:]}")
        time.sleep(2.0)  # its alert line ingested too: caught up and idle
        for agent in agents:
            os.write(fd, usage_line(agent, 1500))
            appended = time.monotonic()
            came = arrival(arrived, agent, 10.0)
            delays.append(None if came is None else (came - appended) * 1000)
            time.sleep(max(0.0, appended + gap - time.monotonic()))
    finally:
        os.close(fd)
        stop(follower)
        receiver.shutdown()
        receiver.server_close()
        shutil.rmtree(home, ignore_errors=True)
    got = [d for d in delays if d is not None]
    result: dict[str, Any] = {f"p{q}_ms": round(percentile(got, q), 1) if got else None
                              for q in (50, 99, 100)}
    result["missed"] = len(delays) - len(got)
    log(f"alert latency over {len(delays)} crossings: p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, max {result['p100_ms']} ms, missed {result['missed']}")
    return result


# ---------------------------------------------------------------- the check per batch


def big_lake(events: int, slices: int, where: Path | None) -> tuple[Path, dict[str, Any]]:
    """bench.report's lake of `events` events (its cache: reused when its spec is the same)."""
    _, digest = report.tally_source()
    spec = {"events": events, "seed": 1, "slices": slices, "prepare": "tally",
            "agents": report.AGENTS, "days": report.DAYS,
            "start": report.START.date().isoformat(), "tally_source": digest,
            "generator": hashlib.sha256((REPO / "bench" / "generate.py").read_bytes())
            .hexdigest()[:16]}
    root = where or Path(tempfile.gettempdir()) / f"tally-bench-report-{events}-{slices}-tally"
    return report.prepare(root, spec)  # built with budgets off


def clone_home(source: Path, target: Path) -> Path:
    """A copy to write to: the lake and the generated logs (never rewritten) hard-linked,
    everything else (state, stage, the alert log) copied."""
    def link_or_copy(src: str, dst: str) -> None:
        parts = Path(src).relative_to(source).parts
        if parts[0] == "lake" or parts[:2] == ("logs", "gen"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)
    return target


def check_cost(home_dir: Path, batches: int, seed: int, at: datetime) -> dict[str, Any]:
    """ms per batch of BudgetMonitor.batch_committed (and of publish) in a live tailer,
    whose clock (and the events' ts) starts at `at`."""
    from pipeline.config import load_home
    from pipeline.monitor import BudgetMonitor
    from pipeline.tailer import Tailer

    home, said, began = load_home(home_dir), [], time.perf_counter()
    shift = at - datetime.now(UTC)

    def clock() -> datetime:
        return datetime.now(UTC) + shift

    monitor = BudgetMonitor(home, said.append, clock=clock)
    seed_s = time.perf_counter() - began
    checks: list[float] = []
    publishes: list[float] = []
    stale = 0  # batches after which the monitor wanted a new seed (publish then re-counts)

    def timed(batch: Any, types: frozenset[str]) -> None:
        start = time.perf_counter()
        monitor.batch_committed(batch, types)
        checks.append(time.perf_counter() - start)

    rng, target = random.Random(seed), home.logs / "live" / "bench.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    with Tailer(home, notify=said.append, on_commit=timed) as tailer, \
            open(target, "ab", buffering=0) as out:
        tailer.prepare_to_type()
        first = tailer.poll()
        if first.staged:  # the alerts the monitor raised as it started
            log(f"first poll (not timed): {first.staged:,} lines staged")
        checks.clear()
        for _ in range(WARM_BATCHES + batches):
            out.write(b"".join(usage_line(f"agent-{rng.randrange(24)}", rng.randint(200, 4000),
                                          f"s{rng.randrange(50)}", clock())
                               for _ in range(rng.randint(1, 5))))
            tailer.poll()
            stale += monitor.stale
            start = time.perf_counter()
            monitor.publish()
            publishes.append(time.perf_counter() - start)
    for message in said[:3]:
        log(f"  monitor said: {message}")
    timed_checks, timed_publishes = checks[WARM_BATCHES:], publishes[WARM_BATCHES:]
    result = {"check_ms": round(statistics.median(timed_checks) * 1000, 3),
              "check_p99_ms": round(percentile(timed_checks, 99) * 1000, 3),
              "publish_ms": round(statistics.median(timed_publishes) * 1000, 3),
              "seed_s": round(seed_s, 3), "batches": len(timed_checks), "stale": stale}
    log(f"budget check on {home_dir.name}: {result['check_ms']} ms per batch "
        f"(p99 {result['check_p99_ms']} ms), publish {result['publish_ms']} ms, "
        f"seed {result['seed_s']} s, {stale} stale")
    return result


# ---------------------------------------------------------------- statusline and CPU


def live_home(root: Path) -> Path:
    """A home with today's usage of 4 agents and session s1, and its live.json."""
    home = init_home(root / "live-home")
    lines = [usage_line(f"agent-{k % 4}", 2000 + k, "s1" if k % 2 else f"s{k}")
             for k in range(200)]
    (home / "logs" / "live").mkdir()
    (home / "logs" / "live" / "bench.jsonl").write_bytes(b"".join(lines))
    subprocess.run([TALLY, "tail", "--once", "--quiet", "--home", str(home)], check=True,
                   capture_output=True)
    if not (home / "state" / "live.json").is_file():
        raise SystemExit(f"`tally tail --once` left no live.json in {home}")
    return home


def statusline_times(home: Path, calls: int) -> dict[str, Any]:
    """Median wall ms of `tally statusline` over `calls` calls, and the line it printed."""
    command = [TALLY, "statusline", "--home", str(home)]
    subprocess.run(command, input=PAYLOAD, capture_output=True, check=True)
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        done = subprocess.run(command, input=PAYLOAD, capture_output=True, check=True)
        times.append((time.perf_counter() - began) * 1000)
    result = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1),
              "line": done.stdout.decode().strip()}
    log(f"statusline: median {result['median_ms']} ms, max {result['max_ms']} ms: {result['line']}")
    return result


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads, not its children), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(root: Path, home: Path, settle: float, window: float) -> dict[str, Any]:
    """% of a core used by an idle `tally run` and by `tally watch` drawing in tmux."""
    tmux = ["tmux", "-L", f"tally-bench-{os.getpid()}"]  # a server of our own
    runner = start([TALLY, "run", "--home", str(home), "--quiet"], root / "run.err")
    try:
        watch = f"exec {shlex.quote(TALLY)} watch --home {shlex.quote(str(home))}"
        subprocess.run([*tmux, "new-session", "-d", "-s", "watch", "-x", "160", "-y", "50",
                        watch], check=True)
        pane = subprocess.run([*tmux, "display", "-p", "-t", "watch", "#{pane_pid}"],
                              check=True, capture_output=True, text=True)
        pids = {"run": runner.pid, "watch": int(pane.stdout)}
        time.sleep(settle)
        before, began = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
        time.sleep(window)
        after, wall = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic() - began
        screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "watch"],
                                capture_output=True, text=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        stop(runner)
    said = (root / "run.err").read_text(errors="replace").strip()
    result: dict[str, Any] = {f"{k}_cpu_pct": round((after[k] - before[k]) / wall * 100, 2)
                              for k in pids}
    result["watch_drawn"] = "tally watch" in screen
    log(f"idle CPU over {wall:.0f} s: run {result['run_cpu_pct']} %, watch "
        f"{result['watch_cpu_pct']} % ({'drawing' if result['watch_drawn'] else 'NOT DRAWING'})"
        + (f"; tally run said: {said[-300:]}" if said else ""))
    return result


# ---------------------------------------------------------------- main

# (label, part of a run, figure, unit, goal); {lake} is the big lake's size
ROWS = [("alert latency p50, append -> webhook", "alert", "p50_ms", "ms", None),
        ("alert latency p99", "alert", "p99_ms", "ms", GOALS["alert_p99_ms"]),
        ("budget check per batch, empty lake", "check_empty", "check_ms", "ms", GOALS["check_ms"]),
        ("budget check per batch, {lake}-event lake", "check_big", "check_ms", "ms",
         GOALS["check_ms"]),
        ("  publish per batch, empty lake", "check_empty", "publish_ms", "ms", None),
        ("  publish per batch, {lake}-event lake", "check_big", "publish_ms", "ms", None),
        ("  monitor start (seed), {lake}-event lake", "check_big", "seed_s", "s", None),
        ("tally statusline per call", "statusline", "median_ms", "ms", GOALS["statusline_ms"]),
        ("tally watch CPU (tmux, idle)", "cpu", "watch_cpu_pct", "%", GOALS["cpu_pct"]),
        ("tally run CPU (idle)", "cpu", "run_cpu_pct", "%", GOALS["cpu_pct"])]
# Option: (full, --quick) defaults.
SIZES = {"runs": (3, 1), "crossings": (20, 5), "batches": (200, 50), "calls": (30, 10),
         "settle": (5.0, 3.0), "window": (30.0, 10.0), "lake_events": (10_000_000, 200_000),
         "lake_slices": (52, 4)}


def print_table(figures: dict[str, Any]) -> None:
    """One line per figure: the median of the runs, each run, the goal and whether it is met."""
    runs, lake = figures["runs"], f"{figures['lake_events']:,}"
    print(f"{'measure':<46} {'median':>10}   {'runs':<28} goal")
    for label, part, key, unit, goal in ROWS:
        value = figures["medians"][f"{part}.{key}"]
        each = ", ".join("-" if r[part].get(key) is None else f"{r[part][key]:g}" for r in runs)
        verdict = "" if goal is None else f"<= {goal:g} {unit}: " + (
            "not measured" if value is None else "met" if value <= goal else "NOT MET")
        shown = "-" if value is None else f"{value:g} {unit}"
        print(f"{label.format(lake=lake):<46} {shown:>10}   "
              f"{'[' + each + ']':<28} {verdict}")
    print(f"alerts that never arrived (10 s wait): {sum(r['alert']['missed'] for r in runs)}; "
          f"statusline printed: {runs[-1]['statusline']['line']!r}")
    print("reproduce: " + " ".join([".venv/bin/python -m bench.budgets", *figures["argv"]]))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = sized_parser("python -m bench.budgets", __doc__, SIZES)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between crossings")
    parser.add_argument("--lake-dir", type=Path, default=None,
                        help="bench.report's --dir of its lake [default: its own]")
    parser.add_argument("--seed", type=int, default=1)
    return settle_sizes(parser.parse_args(argv), SIZES)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    package, _ = report.tally_source()
    log(f"tally: {TALLY}, package {package}")
    precompile(package)
    big_home, prepared = big_lake(args.lake_events, args.lake_slices, args.lake_dir)
    # Each check starts 15 minutes before the end of the lake's year: its last day is today.
    at = report.START + timedelta(days=report.DAYS, minutes=-15)
    scratch = Path(tempfile.mkdtemp(prefix="tally-bench-budgets-"))
    runs: list[dict[str, Any]] = []
    try:
        home = live_home(scratch)
        for number in range(1, args.runs + 1):
            log(f"--- run {number} of {args.runs}")
            run: dict[str, Any] = {
                "alert": alert_latency(scratch, args.crossings, args.gap),
                "statusline": statusline_times(home, args.calls),
                "cpu": idle_cpu(scratch, home, args.settle, args.window)}
            for part, fresh in (("check_empty", lambda: init_home(scratch / "empty")),
                                ("check_big", lambda: clone_home(big_home, scratch / "big"))):
                lake = fresh()  # the shipped budgets on both (the big lake was built without)
                (lake / "config.toml").write_text(CONFIG_TEMPLATE, encoding="utf-8")
                run[part] = check_cost(lake, args.batches, args.seed + number, at)
                shutil.rmtree(lake, ignore_errors=True)
            runs.append(run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures: dict[str, Any] = {
        "argv": sys.argv[1:] if argv is None else argv, "cpus": os.cpu_count(),
        **{name: getattr(args, name) for name in SIZES}, "gap_s": args.gap,
        "lake": {k: prepared.get(k) for k in ("prepared_at", "seconds", "reused", "usage_files")},
        "goals": GOALS, "runs": runs}
    figures["medians"] = medians = {}
    for _, part, key, _, _ in ROWS:  # per figure, the median of the runs that have it
        values = [r[part][key] for r in runs if r[part].get(key) is not None]
        medians[f"{part}.{key}"] = round(statistics.median(values), 3) if values else None
    print_table(figures)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
