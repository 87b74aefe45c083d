"""`tally watch`: the live view of live.json, drawn with rich; `--json` prints the feed.

The view is redrawn when live.json changes (looked at every POLL_SECONDS) and once a
second for the clock; nothing is drawn in between, so an idle view costs next to no CPU.
Without a following tailer (no fresh live.json) it shows the lake as counted at start,
and counts again every LAKE_REFRESH_SECONDS.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.budgets import budgets_of
from pipeline.config import Home
from pipeline.live import (
    FeedReader,
    feed_path,
    kept_live,
    live_path,
    read_live,
    summary,
)

POLL_SECONDS = 0.2
LAKE_REFRESH_SECONDS = 60.0
FIRST_COUNT_SECONDS = 5.0  # the first view waits this long for the lake's count
BAR_WIDTH = 20
QUIT_KEYS = {"q", "Q", "\x03"}


def lake_summary(home: Home) -> dict[str, Any]:
    """live.json's content counted from the lake now (no tailer keeps it)."""
    from pipeline.observe import seed_totals  # Polars: only when no tailer publishes

    now = datetime.now(UTC)
    return summary(seed_totals(home, now), budgets_of(home.budgets), now, None)


class LiveSource:
    """The freshest summary: live.json while a tailer keeps it, else the lake's, counted
    on a thread of its own so that the view still answers its keys meanwhile."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._mtime = -1.0
        self._lake_at = -LAKE_REFRESH_SECONDS
        self._counting: threading.Thread | None = None
        self._counted: dict[str, Any] | None = None
        self.content: dict[str, Any] | None = None
        self.from_lake = False

    def changed(self) -> bool:
        """Re-read if live.json changed, or take the lake's count once done; whether the
        content changed."""
        if kept_live(self.home):
            try:
                mtime = os.stat(live_path(self.home)).st_mtime
            except OSError:  # replaced or removed since: the next look sees it
                return False
            if mtime == self._mtime:
                return False
            self._mtime, self.from_lake = mtime, False
            self.content = read_live(self.home) or self.content
            return True
        if self._counted is not None:
            self.content, self._counted, self.from_lake = self._counted, None, True
            return True
        # Due every LAKE_REFRESH_SECONDS, and at once when live.json went stale.
        due = not self.from_lake or time.monotonic() - self._lake_at >= LAKE_REFRESH_SECONDS
        if due and (self._counting is None or not self._counting.is_alive()):
            self._lake_at = time.monotonic()
            self._counting = threading.Thread(target=self._count, daemon=True)
            self._counting.start()
        return False

    def wait_for_count(self, timeout: float) -> None:
        """Wait for a lake count under way (a plain or first view has nothing else)."""
        if self._counting is not None:
            self._counting.join(timeout)

    def _count(self) -> None:
        self._counted = lake_summary(self.home)


# ---------------------------------------------------------------- drawing


def view(content: dict[str, Any] | None, from_lake: bool, now: datetime) -> RenderableType:
    """The whole screen for one summary."""
    if content is None:
        return Text("counting the lake…")
    source = ("no tailer running: the lake as counted at " if from_lake
              else "live, updated ") + _clock(content["updated"])
    header = Text.assemble(("tally watch", "bold"), f"  {now:%H:%M:%S}  ·  {source}  ·  ",
                           f"today {content['today']} ({content['tz']})  ·  q quits")
    return Group(header, _agents_table(content), _rates_table(content),
                 _tasks_table(content))


def _agents_table(content: dict[str, Any]) -> Table:
    table = Table(title="spend", title_justify="left", expand=False)
    for name in ("agent", "today tokens", "today $", "day budget", "week tokens", "week $",
                 "week budget"):
        table.add_column(name, justify="left" if "budget" in name or name == "agent"
                         else "right")
    rows = [("all", content["all"]), *sorted(content["agents"].items())]
    for agent, spent in rows:
        table.add_row(agent, f"{spent['today']['tokens']:,}", f"{spent['today']['cost_usd']:.2f}",
                      _bar(content, agent, "daily"), f"{spent['week']['tokens']:,}",
                      f"{spent['week']['cost_usd']:.2f}", _bar(content, agent, "weekly"))
    return table


def _bar(content: dict[str, Any], scope: str, period: str) -> Text:
    """The scope's fullest budget of the period as a bar, or nothing without one."""
    budgets = [b for b in content["budgets"] if b["scope"] == scope and b["period"] == period]
    if not budgets:
        return Text("")
    fullest = max(budgets, key=lambda b: b["percentage"])
    filled = min(BAR_WIDTH, round(fullest["percentage"] / 100 * BAR_WIDTH))
    style = {"ok": "green", "warning": "yellow", "exceeded": "red"}[fullest["status"]]
    unit = "$" if fullest["metric"] == "cost" else "tok"
    return Text.assemble(("█" * filled, style), ("░" * (BAR_WIDTH - filled), "dim"),
                         f" {fullest['percentage']:.0f}% {unit}")


def _rates_table(content: dict[str, Any]) -> Table:
    burn, block = content["burn"], content["block"]
    table = Table(title="burn rate and 5-hour block", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("burn rate", f"{burn['tokens_per_minute']:,.0f} tokens/min, "
                               f"${burn['cost_per_hour']:,.2f}/h")
    table.add_row("end of day at this rate", f"{burn['projected_day_tokens']:,} tokens, "
                                             f"${burn['projected_day_cost_usd']:,.2f}")
    if block is None:
        table.add_row("5-hour block", "no usage in the last day")
    else:
        state = "current" if block["active"] else "last"
        table.add_row(f"5-hour block ({state})",
                      f"{_clock(block['start'])}–{_clock(block['end'])}: "
                      f"{block['tokens']:,} tokens, ${block['cost_usd']:,.2f}; projected "
                      f"{block['projected_tokens']:,} tokens, ${block['projected_cost_usd']:,.2f}")
    return table


def _tasks_table(content: dict[str, Any]) -> Table:
    table = Table(title="latest task per agent", title_justify="left")
    for name in ("agent", "task", "status", "progress", "updated"):
        table.add_column(name)
    for agent, task in sorted(content["tasks"].items()):
        progress = task.get("progress")
        table.add_row(agent, str(task.get("name") or task["task"]), str(task.get("status", "")),
                      "" if progress is None else f"{progress:g}%", _clock(task["ts"]))
    return table


def plain_line(content: dict[str, Any], now: datetime) -> str:
    """One line per update, for a pipe or a log: today, week, burn rate, block."""
    spent = content["all"]
    parts = [f"{now:%H:%M:%S} today {spent['today']['tokens']:,} tokens "
             f"${spent['today']['cost_usd']:.2f}",
             f"week {spent['week']['tokens']:,} tokens ${spent['week']['cost_usd']:.2f}"]
    parts += [f"{b['scope']} {b['period']} {b['metric']} {b['percentage']:.0f}%"
              for b in content["budgets"]]
    parts.append(f"burn {content['burn']['tokens_per_minute']:,.0f} tokens/min")
    if content["block"] and content["block"]["active"]:
        parts.append(f"block {content['block']['tokens']:,} tokens")
    return " · ".join(parts)


def _clock(text: str) -> str:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.astimezone().strftime("%H:%M:%S")


# ---------------------------------------------------------------- loops


def watch_screen(home: Home, stop: threading.Event, console: Console | None = None) -> None:
    """Draw the view until `q`, Ctrl-C or `stop`."""
    source = LiveSource(home)
    console = console or Console()
    source.changed()
    source.wait_for_count(FIRST_COUNT_SECONDS)
    source.changed()
    with _keys() as key, Live(view(source.content, source.from_lake, datetime.now()),
                               console=console, auto_refresh=False, screen=True) as live:
        drawn = time.monotonic()
        while not stop.is_set():
            if key(POLL_SECONDS) in QUIT_KEYS:
                return
            if source.changed() or time.monotonic() - drawn >= 1.0:
                live.update(view(source.content, source.from_lake, datetime.now()),
                            refresh=True)
                drawn = time.monotonic()


def watch_plain(home: Home, stop: threading.Event, out: Callable[[str], None]) -> None:
    """Print a plain line at start and whenever live.json changes, until `stop`."""
    source = LiveSource(home)
    while not stop.is_set():
        source.wait_for_count(POLL_SECONDS)
        if source.changed() and source.content is not None:
            out(plain_line(source.content, datetime.now()))
        stop.wait(POLL_SECONDS)


def watch_feed(home: Home, stop: threading.Event, out: IO[bytes]) -> None:
    """Copy each new feed line (one per committed batch) to `out` as it lands."""
    reader = FeedReader(feed_path(home))
    list(reader.lines())  # from now on
    while not stop.is_set():
        for line in reader.lines():
            out.write(line + b"\n")
            out.flush()
        stop.wait(POLL_SECONDS / 2)


@contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """A function that waits up to its timeout for a key press (cbreak mode on a TTY)."""
    if not sys.stdin.isatty():
        def wait(timeout: float) -> str:
            time.sleep(timeout)
            return ""

        yield wait
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def key(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace") if ready else ""

    try:
        yield key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
