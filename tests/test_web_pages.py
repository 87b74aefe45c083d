"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, loads
each page of a real `tally serve` over the sample logs and checks what it shows against the
CLI, that charts are drawn, that nothing comes from another origin, and that an append to
a followed log shows up live.

Skipped, with the reason, where Chromium or Playwright is missing (`make test` installs
Chromium with apt when it runs as root)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import event_line, make_home, run_tally, tally_executable
from test_cli_report import SAMPLE_LOGS
from test_web_server import serving

CHROMIUM = os.environ.get("TALLY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium as root "
                "(apt-get install chromium); set TALLY_TEST_CHROMIUM to another binary",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def cli_json(home: Path, *args: str) -> Any:
    run = run_tally(*args, "--format", "json", "--home", str(home))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A home of sample_logs/ (the invalid lines too), tailed and compacted, served."""
    root = tmp_path_factory.mktemp("pages") / "home"
    make_home(root)
    shutil.rmtree(root / "logs")
    shutil.copytree(SAMPLE_LOGS, root / "logs", ignore=shutil.ignore_patterns("*.md"))
    for command in (("tail", "--once"), ("compact",)):
        assert run_tally(*command, "--home", str(root)).returncode == 0
    with serving(root) as (_, url):
        yield root, url


@pytest.fixture
def page(browser: Browser, sample: tuple[Path, str]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    origin = sample[1].rstrip("/")
    foreign: list[str] = []
    failures: list[str] = []
    opened.on("request", lambda r: None if r.url.startswith((origin, "data:"))
              else foreign.append(r.url))
    opened.on("pageerror", lambda error: failures.append(str(error)))
    yield opened
    context.close()
    assert not foreign, f"requests to other origins: {foreign}"
    assert not failures, f"script errors: {failures}"


def show(page: Page, url: str, view: str) -> None:
    """Open a view and wait until it has drawn."""
    page.goto(url + view)
    page.wait_for_function("document.body.dataset.state === 'ready' || "
                           "document.body.dataset.state === 'error'", timeout=30_000)
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#error")


def bars(page: Page) -> int:
    """Bars drawn in the view's chart (Vega's SVG marks)."""
    page.wait_for_selector("[data-testid=chart][data-drawn]", state="attached", timeout=30_000)
    return int(page.locator("[data-testid=chart] svg .mark-rect path").count())


def test_overview_shows_the_reports_numbers_and_a_chart(page: Page,
                                                        sample: tuple[Path, str]) -> None:
    home, url = sample
    show(page, url, "#/overview?date=2025-08-29&tz=UTC")
    for tile, since in (("today", "2025-08-29"), ("week", "2025-08-25"),
                        ("month", "2025-08-01")):
        rows = cli_json(home, "report", "--by", "agent", "--since", since,
                        "--until", "2025-08-29")
        tokens = sum(r["total_tokens"] for r in rows)
        shown = page.locator(f"[data-testid=tile-{tile}]")
        assert int(shown.get_attribute("data-tokens") or -1) == tokens
        assert int(shown.get_attribute("data-events") or -1) == sum(r["events"] for r in rows)
        assert f"{tokens:,} tokens" in shown.inner_text()
        cost = sum(r["cost_usd"] or 0 for r in rows)
        assert f"${cost:,.2f}" in shown.inner_text()
    assert bars(page) > 0
    page.wait_for_selector("[data-testid=gauges] .gauge", timeout=30_000)
    budgets = cli_json(home, "budget")
    assert page.locator("[data-testid=gauges] .gauge").count() == len(budgets)


def test_usage_stacks_the_models_per_week(page: Page, sample: tuple[Path, str]) -> None:
    home, url = sample
    show(page, url, "#/usage?group=model&period=week&measure=tokens")
    assert bars(page) > 0
    legend = page.locator("[data-testid=chart] svg").text_content() or ""
    biggest = max(cli_json(home, "report", "--by", "model"), key=lambda r: r["total_tokens"])
    assert biggest["model"] in legend


def test_breakdown_is_the_report_sortable_with_its_csv(page: Page,
                                                       sample: tuple[Path, str]) -> None:
    home, url = sample
    show(page, url, "#/breakdown?by=agent,phase")
    rows = cli_json(home, "report", "--by", "agent,phase")
    table = page.locator("table[data-table=breakdown] tbody tr")
    assert table.count() == len(rows) + 1  # and the totals row
    page.click("table[data-table=breakdown] th[data-column=total_tokens]")
    page.wait_for_selector("th[data-column=total_tokens].sorted-desc")
    shown = [int(text.replace(",", "")) for text in page.locator(
        "table[data-table=breakdown] tbody tr:not(.total) td[data-column=total_tokens]"
    ).all_inner_texts()]
    assert shown == sorted((r["total_tokens"] for r in rows), reverse=True)
    href = page.get_attribute("[data-testid=csv]", "href")
    with urllib.request.urlopen(url.rstrip("/") + (href or "")) as response:
        downloaded = list(csv.DictReader(io.StringIO(response.read().decode())))
    assert [(r["agent"], int(r["total_tokens"])) for r in downloaded] == [
        (r["agent"], r["total_tokens"]) for r in rows]


def test_a_bad_time_zone_is_said_on_the_page(page: Page, sample: tuple[Path, str]) -> None:
    page.goto(sample[1] + "#/usage?tz=Mars/Olympus")
    page.wait_for_function("document.body.dataset.state === 'error'", timeout=30_000)
    assert "unknown time zone" in page.inner_text("#error")


def test_tasks_show_the_latest_progress(page: Page, sample: tuple[Path, str]) -> None:
    home, url = sample
    show(page, url, "#/tasks")
    tasks = cli_json(home, "progress")
    rows = page.locator("table[data-table=tasks] tbody tr")
    assert rows.count() == len(tasks)
    first = rows.nth(0).locator("td").all_inner_texts()
    assert first[:2] == [tasks[0]["agent"], tasks[0]["task"]]
    assert tasks[0]["status"] in first[3]


def test_quarantine_lists_each_rejected_line_with_its_line_and_a_copy(
        page: Page, sample: tuple[Path, str]) -> None:
    home, url = sample
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    show(page, url, "#/quarantine")
    bad = (home / "logs" / "invalid" / "bad_lines.jsonl").read_bytes().split(b"\n")
    rows = page.locator("table[data-table=quarantine] tbody tr")
    records = [json.loads(line) for path in sorted((home / "quarantine").glob("*.jsonl"))
               for line in path.read_bytes().splitlines()]
    assert rows.count() == len(records) > 0
    for index in range(rows.count()):
        cells = rows.nth(index).locator("td")
        assert cells.nth(1).inner_text() == "invalid/bad_lines.jsonl"
        line = int(cells.nth(2).inner_text())
        excerpt = cells.nth(5).locator("code").get_attribute("title") or ""
        assert bad[line - 1].decode("utf-8", "replace").startswith(excerpt[:20])
    rows.nth(0).locator("button.copy").click()
    page.wait_for_function("document.querySelector('button.copy').textContent === 'copied'")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == rows.nth(0).locator("code").get_attribute("title")


def test_alerts_show_the_alert_log(page: Page, sample: tuple[Path, str]) -> None:
    home, url = sample
    show(page, url, "#/alerts")
    log = home / "logs" / "tally" / "budget_alerts.jsonl"
    count = len(log.read_bytes().splitlines()) if log.exists() else 0
    assert f"{count:,} alert(s) in the alert log" in page.inner_text("main")


def test_an_append_shows_up_live(browser: Browser, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    log = home.logs / "agent.jsonl"
    now = datetime.now(UTC)
    log.write_bytes(event_line(agent="claude", input_tokens=1000, ts=now.isoformat()))
    tailer = subprocess.Popen([tally_executable(), "tail", "--home", str(home.root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = browser.new_context()
    try:
        with serving(home.root) as (_, url):
            page = context.new_page()
            show(page, url, f"#/overview?tz=UTC&date={now:%Y-%m-%d}")
            page.wait_for_function("document.querySelector('[data-testid=tile-today]')"
                                   ".dataset.tokens === '1020'", timeout=30_000)
            page.wait_for_selector("#live.on", timeout=30_000)
            appended = time.monotonic()
            with open(log, "ab") as handle:
                handle.write(event_line(agent="codex", input_tokens=5000, output_tokens=0,
                                        ts=datetime.now(UTC).isoformat()))
            page.wait_for_function("document.querySelector('[data-testid=tile-today]')"
                                   ".dataset.tokens === '6020'", timeout=30_000)
            print(f"an append showed on the page {time.monotonic() - appended:.2f} s later")
            assert "codex" in page.inner_text("table[data-table=overview]")
            page.click("input[name=tz]")
            page.keyboard.press("End")
            page.keyboard.type("x")  # a redraw now would take the field from under the typist
            with open(log, "ab") as handle:
                handle.write(event_line(agent="gemini", input_tokens=1000, output_tokens=0,
                                        ts=datetime.now(UTC).isoformat()))
            page.wait_for_timeout(2500)
            assert page.input_value("input[name=tz]") == "UTCx"
            assert page.evaluate("document.activeElement.name") == "tz"
            page.fill("input[name=tz]", "UTC")
            page.keyboard.press("Tab")  # left: the view shows the batch it held back
            page.wait_for_function("document.querySelector('[data-testid=tile-today]')"
                                   ".dataset.tokens === '7020'", timeout=30_000)
    finally:
        context.close()
        tailer.send_signal(signal.SIGTERM)
        tailer.wait(timeout=60)
