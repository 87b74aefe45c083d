"""Benchmark of `tally serve`, the dashboard, on bench.report's lake (runs; medians count):

    python -m bench.serve              # the issue's sizes: the 10M-event lake, 3 runs
    python -m bench.serve --quick      # one short run, on a 200,000-event lake (smoke test)

The lake is bench.report's year (24 agents), built and cached as bench.budgets' big_lake
builds it. A lake in that cache whose spec differs only in the tally source that built it
is reused as it is (the serve bench reads the lake, it does not build it; the source
changes with every edit): --same-source rebuilds it with this source instead. The bench
serves a copy (bench.budgets.clone_home: the lake hard-linked) whose config.toml is the
shipped one (`tally init`'s: budgets on, so the page draws its gauges), without the
live.json of the build's last `tally tail --once`: as no tailer follows the home,
/api/live counts burn rate and budgets from the lake.

Each run starts `tally serve --port 0 --home H` (seconds from spawn to the URL line on
stderr: `start_s`), then:

first paint: headless Debian chromium (Playwright), a fresh browser context per page so
that nothing is cached, opens /#/overview?date=D&tz=UTC, D the lake's last day (today,
this week and this month all hold events). An init script stamps performance.now() (ms
from navigation start) as the tile [data-testid=tile-today] enters the DOM with its
numbers (the overview's first paint with data; goal <= 1,000 ms), and as body[data-state]
turns "ready" (everything drawn: chart, gauges, burn rate); first-contentful-paint comes
from the page's paint entries; from its resource entries, when the page asked for
/api/overview (its scripts loaded and run) and how long /api/overview, /api/live and
/api/chart took in the page (the tile follows /api/overview's answer). --paints pages
per run: their medians, and the first page after the server started (`first_tile_ms`).
/api/report: --requests sequential GETs (http.client, one kept-alive connection) cycling
through five report queries (QUERIES), after one warm-up each: p50, p99, max, each
query's median. Against it, each run, the equivalent `tally report ... --format json`
process for two of them (bench.common.run_child: spawn to exit), and whether both
printed the same rows.
idle CPU: one page open on the overview (its /api/stream connected), nothing changing in
the home: utime + stime of the serve process (/proc/PID/stat) over --window s after
--settle s, in % of one core (goal <= 2 %). RSS: VmHWM (peak) and VmRSS at the end.

A shared 2-core machine: nothing is asserted. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench import report
from bench.budgets import big_lake, clone_home, cpu_seconds, stop
from bench.common import log, precompile, run_child, settle_sizes, sized_parser
from bench.tail import percentile
from pipeline.settings import CONFIG_TEMPLATE

TALLY = str(Path(sys.executable).with_name("tally"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
GOALS = {"tile_ms": 1000.0, "cpu_pct": 2.0}
WEEK = report.week_of(None)  # bench.report's week question: 2026-07-06 to 2026-07-12
# (name, parameters of /api/report, also timed as a CLI process)
QUERIES: list[tuple[str, dict[str, str], bool]] = [
    ("agent,day", {"by": "agent,day"}, True),
    ("agent,phase,day", {"by": "agent,phase,day"}, False),
    ("model", {"by": "model"}, False),
    ("agent, one week", {"by": "agent", "since": WEEK[0].isoformat(),
                         "until": WEEK[-1].isoformat()}, True),
    ("agent,week Istanbul", {"by": "agent,week", "tz": "Europe/Istanbul"}, False),
]
START_TIMEOUT = 300.0  # seconds for `tally serve` to print its URL
PAGE_TIMEOUT_MS = 180_000

# Stamps performance.now() (ms from navigation start) as the overview's tile enters the
# DOM with its numbers, and as the page says it has drawn everything.
MARKS = """
(() => {
  const marks = window.__bench = {};
  const look = () => {
    const now = performance.now();
    if (marks.tile === undefined) {
      const tile = document.querySelector('[data-testid=tile-today]');
      if (tile && tile.dataset.tokens) marks.tile = now;
    }
    if (marks.done === undefined && document.body &&
        ['ready', 'error'].includes(document.body.dataset.state)) {
      marks.done = now;
      marks.state = document.body.dataset.state;
    }
    if (marks.tile !== undefined && marks.done !== undefined) watcher.disconnect();
  };
  const watcher = new MutationObserver(look);
  watcher.observe(document, {subtree: true, childList: true, attributes: true,
                             attributeFilter: ['data-state', 'data-tokens']});
})();
"""
# What the page measured, once it is drawn.
FIGURES = """
() => {
  const paint = Object.fromEntries(performance.getEntriesByType('paint')
    .map((e) => [e.name, e.startTime]));
  const api = {};
  for (const e of performance.getEntriesByType('resource')) {
    const name = new URL(e.name).pathname.replace('/api/', '');
    if (['overview', 'live', 'chart'].includes(name)) api[name] = e.responseEnd - e.startTime;
    if (name === 'overview') api.overview_at = e.startTime;
  }
  const tile = document.querySelector('[data-testid=tile-today]');
  const events = (name) => {
    const node = document.querySelector(`[data-testid=tile-${name}]`);
    return node ? Number(node.dataset.events) : null;
  };
  return {...window.__bench, fcp: paint['first-contentful-paint'] ?? null, api,
          tokens: tile ? Number(tile.dataset.tokens) : null,
          events: {today: events('today'), week: events('week'), month: events('month')},
          drawn: Boolean(document.querySelector('[data-testid=chart] svg')),
          gauges: document.querySelectorAll('[data-testid=gauges] .gauge').length,
          error: document.getElementById('error').hidden ? null
                 : document.getElementById('error').textContent};
}
"""


# ---------------------------------------------------------------- the lake and the server


def cached_lake(events: int, slices: int, where: Path | None,
                same_source: bool) -> tuple[Path, dict[str, Any]]:
    """bench.report's lake (big_lake); one prepared by another tally source is reused
    unless `same_source`."""
    root = where or Path(tempfile.gettempdir()) / f"tally-bench-report-{events}-{slices}-tally"
    marker = root / "prepared.json"
    if not same_source and marker.is_file():
        done = json.loads(marker.read_text())
        _, digest = report.tally_source()
        spec = done.get("spec", {})
        wanted = {"events": events, "seed": 1, "slices": slices, "prepare": "tally",
                  "agents": report.AGENTS, "days": report.DAYS,
                  "start": report.START.date().isoformat()}
        if all(spec.get(k) == v for k, v in wanted.items()) and (root / "home").is_dir():
            if spec.get("tally_source") != digest:
                log(f"reusing the lake prepared in {root} on {done['prepared_at']} by tally "
                    f"source {spec.get('tally_source')} (this one: {digest}; --same-source "
                    "rebuilds it)")
            return root / "home", {**done, "reused": True, "built_by": spec.get("tally_source")}
    home, prepared = big_lake(events, slices, where)
    return home, {**prepared, "built_by": prepared["spec"]["tally_source"]}


def last_day(home: Path) -> date:
    """The last day of the generated year that holds token usage."""
    end = (report.START + timedelta(days=report.DAYS - 1)).date()
    days = sorted({date.fromisoformat(m.group(1))
                   for f in report.files_of(home, "agent_token_usage")
                   if (m := re.search(r"/date=(\d{4}-\d{2}-\d{2})/", f))})
    inside = [d for d in days if d <= end]
    if not inside:
        raise SystemExit(f"no token usage in the lake of {home}")
    return inside[-1]


def start_server(home: Path, errors: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """`tally serve --port 0`, its URL and the seconds until it printed it."""
    began = time.perf_counter()
    with open(errors, "wb") as handle:
        child = subprocess.Popen([TALLY, "serve", "--port", "0", "--home", str(home)],
                                 stdout=subprocess.DEVNULL, stderr=handle,
                                 stdin=subprocess.DEVNULL)
    while time.perf_counter() - began < START_TIMEOUT:
        said = errors.read_text(errors="replace")
        found = re.search(r"tally serve: (http://\S+)", said)
        if found:
            return child, found.group(1), time.perf_counter() - began
        if child.poll() is not None:
            raise SystemExit(f"tally serve exited ({child.returncode}): {said[-800:]}")
        time.sleep(0.02)
    stop(child)
    raise SystemExit(f"tally serve printed no URL in {START_TIMEOUT:g} s")


def memory_mb(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of a process, in MB."""
    found = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", Path(f"/proc/{pid}/status")
                            .read_text(), re.MULTILINE))
    return {"peak_mb": round(int(found["VmHWM"]) / 1024, 1),
            "now_mb": round(int(found["VmRSS"]) / 1024, 1)}


# ---------------------------------------------------------------- the page


def open_overview(browser: Any, address: str) -> tuple[Any, Any, dict[str, Any]]:
    """A fresh context's page on `address`, once drawn: context, page, its figures."""
    context = browser.new_context()
    try:
        context.add_init_script(MARKS)
        page = context.new_page()
        page.goto(address, wait_until="commit")
        page.wait_for_function("() => window.__bench && window.__bench.done !== undefined",
                               timeout=PAGE_TIMEOUT_MS, polling=50)
        measured = page.evaluate(FIGURES)
    except BaseException:
        context.close()
        raise
    if measured.get("state") != "ready":
        context.close()
        raise SystemExit(f"the overview did not draw: {measured.get('error')}")
    return context, page, measured


def first_paints(browser: Any, address: str, paints: int) -> dict[str, Any]:
    """`paints` overview pages, each in a fresh context: medians of the page's stamps."""
    pages = []
    for _ in range(paints):
        context, _, measured = open_overview(browser, address)
        context.close()
        pages.append(measured)
    empty = [k for k, v in pages[-1]["events"].items() if not v]
    if empty:
        log(f"!!! no events in the overview's {', '.join(empty)}")

    def median(pick: Any) -> float | None:
        values = [v for v in map(pick, pages) if v is not None]
        return round(statistics.median(values), 1) if values else None

    result: dict[str, Any] = {
        "tile_ms": median(lambda p: p.get("tile")), "fcp_ms": median(lambda p: p["fcp"]),
        "ready_ms": median(lambda p: p["done"]),
        "first_tile_ms": round(pages[0]["tile"], 1) if pages[0].get("tile") else None,
        **{f"{n}_ms": median(lambda p, n=n: p["api"].get(n))
           for n in ("overview_at", "overview", "live", "chart")},
        "tiles_ms": [round(p["tile"], 1) for p in pages if p.get("tile") is not None],
        "tile_events": pages[-1]["events"], "chart_drawn": pages[-1]["drawn"],
        "gauges": pages[-1]["gauges"]}
    log(f"first paint over {paints} page(s): tile {result['tile_ms']} ms "
        f"(each {result['tiles_ms']}), FCP {result['fcp_ms']} ms, all drawn "
        f"{result['ready_ms']} ms; in the page /api/overview asked at "
        f"{result['overview_at_ms']} ms, took {result['overview_ms']} ms, "
        f"/api/live {result['live_ms']} ms, /api/chart {result['chart_ms']} ms")
    return result


def idle_cpu(browser: Any, address: str, pid: int, settle: float,
             window: float) -> dict[str, Any]:
    """% of a core the server uses with one overview page open (its stream connected)."""
    context, page, _ = open_overview(browser, address)
    try:
        page.wait_for_function("() => document.getElementById('live').classList.contains('on')",
                               timeout=30_000)
        time.sleep(settle)
        before, began = cpu_seconds(pid), time.monotonic()
        time.sleep(window)
        used, wall = cpu_seconds(pid) - before, time.monotonic() - began
        renders = int(page.evaluate("document.body.dataset.renders"))
        streaming = "on" in (page.get_attribute("#live", "class") or "")
    finally:
        context.close()
    result = {"cpu_pct": round(used / wall * 100, 2), "cpu_s": round(used, 3),
              "window_s": round(wall, 1), "stream_on": streaming, "renders": renders}
    log(f"idle CPU over {wall:.0f} s, one page open: {result['cpu_pct']} % "
        f"({used:.2f} CPU s; stream {'on' if streaming else 'NOT ON'}, {renders} render(s))")
    return result


# ---------------------------------------------------------------- /api/report and the CLI


def api_latency(base: str, requests: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sequential /api/report GETs over QUERIES (one kept-alive connection): p50, p99, max,
    each query's median; and the rows each CLI-compared query answered."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in QUERIES}
    answers: dict[str, Any] = {}
    where = urlsplit(base)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=600)

    def get(params: dict[str, str]) -> bytes:
        connection.request("GET", f"/api/report?{urlencode(params)}")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"/api/report?{urlencode(params)}: {response.status} {body[:300]!r}")
        return body

    try:
        for name, params, compared in QUERIES:  # warm-up, not timed
            body = get(params)
            if compared:
                answers[name] = json.loads(body)
        for number in range(requests):
            name, params, _ = QUERIES[number % len(QUERIES)]
            began = time.perf_counter()
            get(params)
            times[name].append((time.perf_counter() - began) * 1000)
    finally:
        connection.close()
    every = [t for each in times.values() for t in each]
    result: dict[str, Any] = {
        "p50_ms": round(percentile(every, 50), 1), "p99_ms": round(percentile(every, 99), 1),
        "max_ms": round(max(every), 1), "requests": len(every),
        "queries_ms": {n: round(statistics.median(t), 1) for n, t in times.items() if t}}
    log(f"/api/report over {len(every)} requests: p50 {result['p50_ms']} ms, p99 "
        f"{result['p99_ms']} ms, max {result['max_ms']} ms; per query "
        + ", ".join(f"{n} {t}" for n, t in result["queries_ms"].items()))
    return result, answers


def cli_baseline(home: Path, api: dict[str, Any], answers: dict[str, Any]) -> dict[str, Any]:
    """`tally report ... --format json` once per CLI-compared query: ms, ratio API/CLI, and
    whether the CLI printed the rows the API answered."""
    result: dict[str, Any] = {}
    for name, params, compared in QUERIES:
        if not compared:
            continue
        options = [part for key, value in params.items() for part in (f"--{key}", value)]
        child = run_child([TALLY, "report", "--home", str(home), *options, "--format", "json"])
        ms = child["seconds"] * 1000
        api_ms = api["queries_ms"].get(name)
        result[name] = {"ms": round(ms, 1), "rss_mb": round(child["rss_mb"]),
                        "ratio": round(api_ms / ms, 3) if api_ms else None,
                        "same": json.loads(child["stdout"]) == answers.get(name)}
        log(f"tally report {' '.join(options)}: {ms:,.0f} ms (API {api_ms} ms, ratio "
            f"{result[name]['ratio']}); same rows as the API: {result[name]['same']}")
    return result


# ---------------------------------------------------------------- a run


def one_run(home: Path, scratch: Path, day: date, args: argparse.Namespace,
            playwright: Any) -> dict[str, Any]:
    """Start the server, measure the page, the API and idle CPU, stop it."""
    server, base, started = start_server(home, scratch / "serve.err")
    log(f"tally serve: {base} after {started:.2f} s (pid {server.pid})")
    address = f"{base}#/overview?date={day.isoformat()}&tz=UTC"
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        run: dict[str, Any] = {"start_s": round(started, 2),
                               "paint": first_paints(browser, address, args.paints)}
        run["api"], answers = api_latency(base, args.requests)
        run["cli"] = cli_baseline(home, run["api"], answers)
        run["idle"] = idle_cpu(browser, address, server.pid, args.settle, args.window)
        run["rss"] = memory_mb(server.pid)
        log(f"tally serve RSS: peak {run['rss']['peak_mb']} MB, now {run['rss']['now_mb']} MB")
    finally:
        browser.close()
        stop(server)
    said = (scratch / "serve.err").read_text(errors="replace").strip().splitlines()[1:]
    if said:
        log("tally serve also said: " + " | ".join(said)[-500:])
    return run


# ---------------------------------------------------------------- main

# (label, part, figure, unit, goal); {paints} and {requests} are the sizes
ROWS: list[tuple[str, str, str, str, float | None]] = [
    ("overview first paint (tile), median of {paints}", "paint", "tile_ms", "ms",
     GOALS["tile_ms"]),
    ("  first page after the server started", "paint", "first_tile_ms", "ms", None),
    ("  first contentful paint", "paint", "fcp_ms", "ms", None),
    ("  all drawn (chart, gauges: state ready)", "paint", "ready_ms", "ms", None),
    ("  /api/overview asked (page booted)", "paint", "overview_at_ms", "ms", None),
    ("  /api/overview in the page", "paint", "overview_ms", "ms", None),
    ("  /api/live in the page", "paint", "live_ms", "ms", None),
    ("  /api/chart in the page", "paint", "chart_ms", "ms", None),
    ("/api/report p50, {requests} requests", "api", "p50_ms", "ms", None),
    ("/api/report p99", "api", "p99_ms", "ms", None),
    ("idle CPU, one page open", "idle", "cpu_pct", "%", GOALS["cpu_pct"]),
    ("tally serve peak RSS", "rss", "peak_mb", "MB", None),
    ("tally serve start (spawn to URL)", "start_s", "", "s", None),
]
# Option: (full, --quick) defaults.
SIZES = {"repeat": (3, 1), "paints": (5, 3), "requests": (100, 25), "settle": (5.0, 2.0),
         "window": (30.0, 10.0), "events": (10_000_000, 200_000), "slices": (52, 4)}


def figure(run: dict[str, Any], part: str, key: str) -> float | None:
    value = run.get(part)
    return value.get(key) if key and isinstance(value, dict) else value


def cli_rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(label, per-run values) of the API against the CLI, per compared query."""
    rows = []
    for name in runs[0]["cli"]:
        rows.append((f"/api/report {name}, median", [r["api"]["queries_ms"][name] for r in runs]))
        rows.append((f"  tally report {name} (process)", [r["cli"][name]["ms"] for r in runs]))
        rows.append(("  ratio API / CLI", [r["cli"][name]["ratio"] for r in runs]))
    return rows


def print_table(figures: dict[str, Any]) -> None:
    """One line per figure: the median of the runs, each run, the goal and whether it is met."""
    runs = figures["runs"]
    print(f"lake: {figures['events']:,} events ({figures['lake']['usage_files']} usage files), "
          f"overview of {figures['date']}; {figures['repeat']} run(s)")
    print(f"{'measure':<46} {'median':>11}   {'runs':<30} goal")
    sizes = {"paints": figures["paints"], "requests": figures["requests"]}
    for label, part, key, unit, goal in ROWS:
        value = figures["medians"][f"{part}.{key}" if key else part]
        each = [figure(r, part, key) for r in runs]
        shown_each = ", ".join("-" if v is None else f"{v:g}" for v in each)
        verdict = "" if goal is None else f"<= {goal:g} {unit}: " + (
            "not measured" if value is None else "met" if value <= goal else "NOT MET")
        shown = "-" if value is None else f"{value:g} {unit}"
        print(f"{label.format(**sizes):<46} {shown:>11}   {'[' + shown_each + ']':<30} {verdict}")
    for label, each in cli_rows(runs):
        values = [v for v in each if v is not None]
        unit = "" if "ratio" in label else " ms"
        shown = f"{statistics.median(values):g}{unit}" if values else "-"
        print(f"{label:<46} {shown:>11}   "
              f"{'[' + ', '.join('-' if v is None else f'{v:g}' for v in each) + ']':<30}")
    same = all(c["same"] for r in runs for c in r["cli"].values())
    last = runs[-1]
    print(f"API rows equal the CLI's: {'yes' if same else 'NO'}; overview tiles' events "
          f"{last['paint']['tile_events']}; chart drawn {last['paint']['chart_drawn']}, "
          f"{last['paint']['gauges']} gauge(s); stream on while idle "
          f"{all(r['idle']['stream_on'] for r in runs)}")
    print("reproduce: " + " ".join([".venv/bin/python -m bench.serve", *figures["argv"]]))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = sized_parser("python -m bench.serve", __doc__, SIZES)
    parser.add_argument("--lake-dir", type=Path, default=None,
                        help="bench.report's --dir of its lake [default: its own]")
    parser.add_argument("--same-source", action="store_true",
                        help="rebuild a cached lake that another tally source prepared")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where the served copy of the home goes [default: a temporary "
                             "directory, removed at the end]")
    args = settle_sizes(parser.parse_args(argv), SIZES)
    if min(args.repeat, args.paints, args.requests, args.events, args.slices) < 1:
        parser.error("need --repeat, --paints, --requests, --events and --slices of at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"no {CHROMIUM}: the first-paint figures need Debian's chromium")
    from playwright.sync_api import sync_playwright

    package, _ = report.tally_source()
    log(f"tally: {TALLY}, package {package}")
    precompile(package)
    lake_home, prepared = cached_lake(args.events, args.slices, args.lake_dir, args.same_source)
    day = last_day(lake_home)
    scratch = Path(tempfile.mkdtemp(prefix="tally-bench-serve-", dir=args.scratch))
    runs: list[dict[str, Any]] = []
    try:
        home = clone_home(lake_home, scratch / "home")
        (home / "config.toml").write_text(CONFIG_TEMPLATE, encoding="utf-8")  # budgets on
        # No tailer follows this home: /api/live counts from the lake, also when the lake
        # was built so lately that the live.json of its last `tally tail --once` is fresh.
        (home / "state" / "live.json").unlink(missing_ok=True)
        with sync_playwright() as playwright:
            for number in range(1, args.repeat + 1):
                log(f"--- run {number} of {args.repeat}")
                runs.append(one_run(home, scratch, day, args, playwright))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures: dict[str, Any] = {
        "argv": sys.argv[1:] if argv is None else argv, "cpus": os.cpu_count(),
        **{name: getattr(args, name) for name in SIZES}, "date": day.isoformat(),
        "queries": {n: p for n, p, _ in QUERIES},
        "lake": {k: prepared.get(k) for k in ("prepared_at", "seconds", "reused", "usage_files",
                                              "built_by")},
        "goals": GOALS, "runs": runs}
    figures["medians"] = medians = {}
    for _, part, key, _, _ in ROWS:  # per figure, the median of the runs that have it
        values = [v for v in (figure(r, part, key) for r in runs) if v is not None]
        medians[f"{part}.{key}" if key else part] = (
            round(statistics.median(values), 3) if values else None)
    for name in runs[0]["cli"]:
        for side, pick in (("api", lambda r, n=name: r["api"]["queries_ms"][n]),
                           ("cli", lambda r, n=name: r["cli"][n]["ms"]),
                           ("ratio", lambda r, n=name: r["cli"][n]["ratio"])):
            values = [v for v in map(pick, runs) if v is not None]
            medians[f"{side}.{name}"] = round(statistics.median(values), 3) if values else None
    print_table(figures)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
