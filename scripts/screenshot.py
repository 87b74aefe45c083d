"""Draw docs/dashboard.png: the dashboard's overview over two weeks of made-up usage that
ends now, taken in Debian's headless Chromium (as the browser tests drive it).

    .venv/bin/python scripts/screenshot.py [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

TALLY = str(Path(sys.executable).parent / "tally")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
AGENTS = {"claude-code": ("claude-sonnet-4-5", 1.0), "codex": ("gpt-5", 0.7),
          "gemini": ("gemini-2.5-pro", 0.5), "reviewer": ("claude-opus-4-1", 0.15)}
CONFIG = """[budgets]
daily_tokens = 12000000
weekly_tokens = 60000000
daily_cost_usd = 60.0
"""
TASKS = [("codex", "CX-42", "Connection pooling", "in_progress", 60),
         ("claude-code", "CL-7", "Importer for Codex rollouts", "completed", 100),
         ("gemini", "GM-3", "Docs review", "blocked", 35)]


def usage_lines(now: datetime, seed: int = 7) -> list[bytes]:
    """Two weeks of token usage per agent, busier on weekdays and in the afternoon."""
    rng = random.Random(seed)
    lines = []
    for day in range(14, -1, -1):
        for agent, (model, weight) in AGENTS.items():
            start = now - timedelta(days=day, hours=9)
            busy = weight * (0.35 if start.weekday() >= 5 else 1.0) * rng.uniform(0.6, 1.3)
            for turn in range(int(80 * busy)):
                at = start + timedelta(minutes=turn * 6 + rng.randint(0, 5))
                if at > now:
                    break
                lines.append(orjson.dumps({
                    "event_type": "agent_token_usage", "ts": at.isoformat(), "agent": agent,
                    "model": model, "session_id": f"{agent}-{day}", "role": "dev",
                    "input_tokens": rng.randint(2000, 9000),
                    "output_tokens": rng.randint(300, 2500),
                    "cache_read_tokens": rng.randint(20000, 90000),
                    "cache_write_tokens": rng.randint(0, 6000)}) + b"\n")
    for agent, task, name, status, progress in TASKS:
        lines.append(orjson.dumps({
            "event_type": "task_progress", "ts": (now - timedelta(minutes=20)).isoformat(),
            "agent": agent, "task": task, "name": name, "status": status,
            "progress": progress}) + b"\n")
    return lines


def main() -> int:
    """Make the home, serve it, take the picture."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        subprocess.run([TALLY, "init", "--home", str(home)], check=True, capture_output=True)
        (home / "config.toml").write_text(CONFIG)
        (home / "logs" / "agents.jsonl").write_bytes(b"".join(usage_lines(now)))
        for command in (["tail", "--once"], ["compact"]):
            subprocess.run([TALLY, *command, "--home", str(home)], check=True,
                           capture_output=True)
        server = subprocess.Popen([TALLY, "serve", "--port", "0", "--home", str(home)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert server.stderr is not None
            url = re.search(r"http://\S+/", server.stderr.readline())
            assert url, "tally serve did not say where it listens"
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                     args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 860},
                                        device_scale_factor=1)
                page.goto(url.group(0) + "#/overview")
                page.wait_for_selector("[data-testid=chart][data-drawn]", state="attached")
                page.wait_for_selector("[data-testid=gauges] .gauge")
                time.sleep(0.5)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
