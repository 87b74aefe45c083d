"""`tally watch`: the rich view driven in a real tmux pane next to a following `tally tail`,
the plain lines it prints into a pipe, the `--json` feed (and how long a batch takes to
reach it), and the view and plain line of a known summary."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from conftest import make_home, run_tally, tally_executable
from rich.console import Console

import pipeline.live as live_module
from pipeline.budgets import Budget
from pipeline.config import Home
from pipeline.live import (
    FEED_FILE,
    FeedReader,
    feed_line,
    feed_path,
    live_path,
    read_live,
    summary,
    write_live,
)
from pipeline.totals import CountedRow, LiveTotals, Spend
from pipeline.watch import LiveSource, plain_line, view
from pipeline.writer import append_event

FAST_RESCAN = "[tailer]\nrescan_seconds = 0.2\n"


# ---------------------------------------------------------------- helpers


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """The first true value of `predicate` within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then wait (kill after `timeout`); the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def following(home: Home, output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A following `tally tail` on `home` (its output in `output`), once it published."""
    with open(output, "wb") as out:
        process = subprocess.Popen([tally_executable(), "tail", "--home", str(home.root)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        ready = wait_for(lambda: live_path(home).exists() or process.poll() is not None, 30)
        assert ready and process.poll() is None, output.read_text()
        yield process
    finally:
        status = stop(process)
    assert status == 0, output.read_text()


@contextlib.contextmanager
def watching(home: Home, *options: str) -> Iterator[Lines]:
    """`tally watch` on `home` with its stdout on a pipe; its lines as they come."""
    process = subprocess.Popen([tally_executable(), "watch", *options, "--home", str(home.root)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    lines = Lines(process.stdout)
    try:
        yield lines
    finally:
        status = stop(process)
        assert process.stderr is not None
        errors = process.stderr.read().decode(errors="replace")
        process.stdout.close()
        process.stderr.close()
    assert status == 0 and "Traceback" not in errors, errors  # SIGTERM ends it cleanly


class Lines:
    """A pipe's lines as a thread reads them, each with the monotonic time it was read."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.queue: queue.Queue[tuple[float, bytes]] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed when the test is done
            for line in iter(stream.readline, b""):
                self.queue.put((time.monotonic(), line))

    def next(self, timeout: float) -> tuple[float, bytes] | None:
        """The next line and when it was read, None if none comes within `timeout`."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def first(self, wanted: Callable[[bytes], bool],
              timeout: float) -> tuple[float, bytes] | None:
        """The first line that is `wanted` within `timeout`, skipping the others."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.next(left)
            if got is not None and wanted(got[1]):
                return got
        return None


def usage(home: Home, agent: str, input_tokens: int, output_tokens: int) -> None:
    append_event(home.logs / f"{agent}.jsonl", {
        "event_type": "agent_token_usage", "agent": agent, "session_id": f"s-{agent}",
        "model": "claude-sonnet-4-5", "input_tokens": input_tokens,
        "output_tokens": output_tokens})


def added_for(agent: str) -> Callable[[bytes], bool]:
    return lambda line: agent in orjson.loads(line)["added"]


# ---------------------------------------------------------------- (a) the view in tmux


class Tmux:
    """A tmux server of its own (socket `-L`, no configuration file)."""

    def __init__(self) -> None:
        self.socket = f"tally-test-{uuid.uuid4().hex[:12]}"
        # os.environ, not the C environment: GNU readline, once loaded (pytest may load it),
        # exports LINES and COLUMNS of the test's terminal, and rich obeys COLUMNS over the
        # size of the pane
        self.env = {k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=30, env=self.env)

    def screen(self, target: str) -> str:
        return self("capture-pane", "-p", "-t", target).stdout

    def kill(self) -> None:
        """Stop the server, and remove its socket (tmux 3.3 leaves it behind)."""
        self("kill-server")
        where = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
        (where / self.socket).unlink(missing_ok=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: the full-screen view needs a terminal to run in")
    server = Tmux()
    try:
        yield server
    finally:
        server.kill()


def test_watch_draws_batches_in_a_terminal_and_quits_on_q(tmp_path: Path, tmux: Tmux) -> None:
    home = make_home(tmp_path / "home", FAST_RESCAN)
    with following(home, tmp_path / "tail.out"):
        status = tmp_path / "watch.status"  # tmux 3.3 does not always keep a pane's status
        command = (shlex.join([tally_executable(), "watch", "--home", str(home.root)])
                   + f"; echo $? > {shlex.quote(str(status))}")
        started = tmux("new-session", "-d", "-s", "watch", "-x", "160", "-y", "50", command)
        assert started.returncode == 0, started.stderr
        tmux("set-option", "-t", "watch", "remain-on-exit", "on")  # to see the screen after
        drawn = wait_for(lambda: "q quits" in tmux.screen("watch"), 15)
        assert drawn, tmux.screen("watch")
        first = tmux.screen("watch")
        assert "live, updated" in first and "today tokens" in first  # a tailer's totals
        assert "zed-agent" not in first

        usage(home, "zed-agent", 12_345, 1_000)

        def agent_row() -> str | None:
            screen = tmux.screen("watch")
            rows = [line for line in screen.splitlines() if "zed-agent" in line]
            return rows[0] if rows and "13,345" in rows[0] else None

        row = wait_for(agent_row, 15)
        assert row, tmux.screen("watch")
        cells = [cell.strip() for cell in row.split("│")]
        assert cells[1:4] == ["zed-agent", "13,345", "0.05"]  # today: tokens and $
        assert cells[5:7] == ["13,345", "0.05"]  # this week
        shown = tmux.screen("watch")
        assert row_cells(shown, "all")[:3] == ["all", "13,345", "0.05"]  # the only agent

        sent = tmux("send-keys", "-t", "watch", "q")
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: status.exists() and status.read_text().endswith("\n"), 10), \
            tmux.screen("watch")
        assert status.read_text() == "0\n", tmux.screen("watch")
        assert wait_for(lambda: tmux("display-message", "-p", "-t", "watch",
                                     "#{pane_dead}").stdout.strip() == "1", 10)
        assert "zed-agent" not in tmux.screen("watch")  # the alternate screen was left


# ---------------------------------------------------------------- (b) plain lines into a pipe


def test_watch_into_a_pipe_prints_a_line_per_update(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", FAST_RESCAN)
    with following(home, tmp_path / "tail.out"), watching(home) as lines:
        first = lines.next(15)
        assert first is not None, "no line at start"
        text = first[1].decode()
        assert " today 0 tokens $0.00 · week 0 tokens $0.00 · all daily tokens 0% · " in text
        assert "\x1b[" not in text and "│" not in text  # plain: no colours, no tables

        usage(home, "plain-agent", 1_000, 200)
        second = lines.next(15)
        assert second is not None, "no line after the append"
        text = second[1].decode()
        assert " today 1,200 tokens $0.01 · week 1,200 tokens $0.01 · " in text
        assert "all daily tokens 1% · " in text and text.endswith(" · block 1,200 tokens\n")


def test_watch_without_a_tailer_prints_the_lake_s_count(tmp_path: Path) -> None:
    """No fresh live.json (a stale one is ignored): the line is counted from the home."""
    home = make_home(tmp_path / "home")
    usage(home, "lake-agent", 2_000, 500)
    assert run_tally("tail", "--once", "--quiet", "--home", str(home.root)).returncode == 0
    stale = read_live(home)
    assert stale is not None
    stale["all"]["today"]["tokens"] = 999_999  # what the view must not show
    write_live(home, stale, [])
    an_hour_ago = time.time() - 3600
    os.utime(live_path(home), (an_hour_ago, an_hour_ago))
    with watching(home) as lines:
        first = lines.next(30)
    assert first is not None, "no line at start"
    assert " today 2,500 tokens $0.01 · week 2,500 tokens $0.01 · " in first[1].decode()


# ---------------------------------------------------------------- (c) --json and its latency


ROUNDS = 8


def test_watch_json_prints_each_batch_soon_after_its_append(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")  # the default rescan: watchdog alone wakes the tailer
    with following(home, tmp_path / "tail.out"):
        usage(home, "warmup", 10, 1)  # feed.jsonl exists before the watcher starts
        assert wait_for(feed_path(home).exists, 15), (tmp_path / "tail.out").read_text()
        with watching(home, "--json") as lines:
            # the watcher starts at the feed's end: wait until it is there
            for attempt in range(30):
                usage(home, f"ready-{attempt}", 10, 1)
                if lines.first(added_for(f"ready-{attempt}"), 1.0) is not None:
                    break
            else:
                pytest.fail("watch --json printed no batch in 30 s")
            latencies, published = [], []
            for round_ in range(ROUNDS):
                agent = f"lat-{round_}"
                # batches apart, the tailer idle as a producer finds it, and at a random
                # point of the watcher's poll: a fixed pause would land on the same point
                time.sleep(random.uniform(0.2, 0.5))
                appended, appended_at = time.monotonic(), time.time()
                usage(home, agent, 1_000 + round_, 100)
                got = lines.first(added_for(agent), 10)
                assert got is not None, f"no feed line for {agent} within 10 s"
                arrived, raw = got
                latencies.append(arrived - appended)
                line = orjson.loads(raw)
                stamp = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
                published.append(stamp.timestamp() - appended_at)  # the tailer's share
                assert line["added"] == {agent: {"tokens": 1_100 + round_,
                                                 "cost_usd": line["added"][agent]["cost_usd"]}}
                assert line["added"][agent]["cost_usd"] > 0
                assert line["today"][agent]["tokens"] == 1_100 + round_
                assert line["week"][agent]["tokens"] == 1_100 + round_
                assert {b["period"] for b in line["budgets"]} >= {"daily", "weekly"}
    assert max(latencies) < 10  # generous: the measurement is what the output records
    for what, seconds in (("append to line read", latencies),
                          ("append to feed line published", published)):
        print(f"\nwatch --json latency, {what}, {ROUNDS} batches: "
              f"{', '.join(f'{s * 1000:.0f}' for s in seconds)} ms; median "
              f"{statistics.median(seconds) * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms")


def test_feed_line_holds_the_batch_s_additions_and_the_totals() -> None:
    now = datetime(2025, 8, 29, 12, 30, tzinfo=UTC)
    content = summary(a_known_totals(), known_budgets(), now, "abc/7")
    line = orjson.loads(feed_line(content, "abc/7", {"bob": Spend(51_000, 166_000_000)}))
    assert line["batch"] == "abc/7" and line["ts"] == "2025-08-29T12:30:00Z"
    assert line["added"] == {"bob": {"tokens": 51_000, "cost_usd": 0.166}}
    assert line["today"] == {"all": {"tokens": 52_500, "cost_usd": 0.1741},
                             "alice": {"tokens": 1_500, "cost_usd": 0.0081},
                             "bob": {"tokens": 51_000, "cost_usd": 0.166}}
    assert line["week"]["all"] == {"tokens": 53_500, "cost_usd": 0.1771}
    assert [(b["scope"], b["period"], b["percentage"], b["status"]) for b in line["budgets"]] \
        == [("all", "daily", 35.0, "ok"), ("all", "weekly", 17.71, "ok"),
            ("alice", "daily", 150.0, "exceeded"), ("bob", "daily", 85.0, "warning")]


def test_feed_reader_follows_the_feed_across_a_roll_over(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_home(tmp_path / "home")
    monkeypatch.setattr(live_module, "FEED_MAX_BYTES", 40)
    write_live(home, {}, [b'{"n":0}\n'])
    reader = FeedReader(feed_path(home))
    assert list(reader.lines()) == []  # it starts at the end
    write_live(home, {}, [b'{"n":1}\n', b'{"n":2}\n'])
    assert list(reader.lines()) == [b'{"n":1}', b'{"n":2}']
    write_live(home, {}, [b'{"n":3}\n' * 3])  # 24 bytes: the feed is 48 now
    write_live(home, {}, [b'{"n":4}\n'])  # past 40 bytes: rolled over first
    assert (home.state / (FEED_FILE + ".1")).exists()
    assert list(reader.lines()) == [b'{"n":3}'] * 3 + [b'{"n":4}']
    with open(feed_path(home), "ab") as feed:
        feed.write(b'{"n":5}\n{"n":')  # a line being written is not read yet
    assert list(reader.lines()) == [b'{"n":5}']
    with open(feed_path(home), "ab") as feed:
        feed.write(b'6}\n')
    assert list(reader.lines()) == [b'{"n":6}']


def test_feed_reader_reads_a_feed_created_after_it_started(tmp_path: Path) -> None:
    """`tally watch --json` on a home whose tailer has not committed a batch yet: the
    first batch's line must be printed like every later one."""
    home = make_home(tmp_path / "home")
    reader = FeedReader(feed_path(home))
    assert list(reader.lines()) == []  # no feed.jsonl yet
    write_live(home, {}, [b'{"n":1}\n'])
    assert list(reader.lines()) == [b'{"n":1}']


# ---------------------------------------------------------------- (d) view and plain_line


NOW = datetime(2025, 8, 29, 12, 30, tzinfo=UTC)  # a Friday; the week began on the 25th


def a_known_totals() -> LiveTotals:
    """Today 52,500 tokens ($0.1741), this week 53,500 ($0.1771), and last week's 700."""
    totals = LiveTotals()
    at = NOW.replace
    totals.add_rows([
        CountedRow("e1", at(minute=10), "alice", "s1", NOW.date(), 1_500, 8_100_000),
        CountedRow("e2", at(minute=20), "bob", "s2", NOW.date(), 51_000, 166_000_000),
        CountedRow("e3", at(day=27, hour=9), "bob", "s3", date(2025, 8, 27), 1_000, 3_000_000),
        CountedRow("e4", at(day=22, hour=9), "alice", "s0", date(2025, 8, 22), 700, 1_000_000),
    ])
    totals.tasks[("alice", "T-6")] = {"ts": at(hour=11), "name": "Old task", "status": "done"}
    totals.tasks[("alice", "T-7")] = {"ts": at(minute=25), "name": "Fix login",
                                      "status": "in_progress", "progress": 60.0}
    totals.tasks[("bob", "T-9")] = {"ts": at(minute=5), "status": "blocked"}
    return totals


def known_budgets() -> list[Budget]:
    return [Budget("all", "daily", "tokens", 150_000, 0.8),
            Budget("all", "weekly", "cost", 1.0, 0.8),
            Budget("alice", "daily", "tokens", 1_000, 0.8),
            Budget("bob", "daily", "tokens", 60_000, 0.8)]


def rendered(renderable: Any) -> tuple[str, dict[str, str]]:
    """The text of a renderable at 160 columns, and each budget bar's colour by its text."""
    console = Console(width=160, record=True, file=io.StringIO(), color_system="truecolor",
                      force_terminal=True)
    bars = {segment.text: str(segment.style.color.name) for segment in
            console.render(renderable) if "█" in segment.text and segment.style
            and segment.style.color}
    console.print(renderable)
    return console.export_text(), bars


def row_cells(text: str, first: str) -> list[str]:
    """The cells of the first table row of `text` whose first cell is `first`."""
    row = next(line for line in text.splitlines() if line.startswith(f"│ {first} "))
    return [cell.strip() for cell in row.split("│")[1:-1]]


def clock(moment: datetime) -> str:
    """A time as the view shows it: local time of the machine."""
    return moment.astimezone().strftime("%H:%M:%S")


def test_view_of_a_known_summary() -> None:
    content = summary(a_known_totals(), known_budgets(), NOW, "abc/7")
    text, bars = rendered(view(content, False, NOW))
    assert text.splitlines()[0] == (f"tally watch  12:30:00  ·  live, updated "
                                    f"{clock(NOW)}  ·  today 2025-08-29 (UTC)  ·  q quits")
    full, empty = "█" * 20, "░" * 20
    assert row_cells(text, "all") == ["all", "52,500", "0.17", f"{'█' * 7}{'░' * 13} 35% tok",
                                      "53,500", "0.18", f"{'█' * 4}{'░' * 16} 18% $"]
    assert row_cells(text, "alice") == ["alice", "1,500", "0.01", f"{full} 150% tok", "1,500",
                                        "0.01", ""]  # last week's 700 are not this week's
    assert row_cells(text, "bob") == ["bob", "51,000", "0.17", f"{'█' * 17}{'░' * 3} 85% tok",
                                      "52,000", "0.17", ""]
    assert empty not in text
    assert bars == {"█" * 7: "green", "█" * 4: "green", full: "red", "█" * 17: "yellow"}
    burn = content["burn"]  # 52,500 tokens in about the last 20 minutes
    assert 2_000 < burn["tokens_per_minute"] <= 2_625 and burn["cost_per_hour"] > 0
    assert row_cells(text, "burn rate") == [
        "burn rate", f"{burn['tokens_per_minute']:,.0f} tokens/min, "
                     f"${burn['cost_per_hour']:,.2f}/h"]
    block = row_cells(text, "5-hour block (current)")
    assert block[1].startswith(f"{clock(NOW.replace(minute=0))}–"
                               f"{clock(NOW.replace(hour=17, minute=0))}: 52,500 tokens, $0.17; "
                               f"projected ")
    assert "Old task" not in text  # an agent's latest task only
    tasks = text[text.index("latest task per agent"):]
    assert row_cells(tasks, "alice") == ["alice", "Fix login", "in_progress", "60%",
                                         clock(NOW.replace(minute=25))]
    assert row_cells(tasks, "bob") == ["bob", "T-9", "blocked", "", clock(NOW.replace(minute=5))]


def test_view_says_where_its_numbers_come_from() -> None:
    content = summary(LiveTotals(), [], NOW, None)
    text, bars = rendered(view(content, True, NOW))
    assert text.splitlines()[0] == (f"tally watch  12:30:00  ·  no tailer running: the lake as "
                                    f"counted at {clock(NOW)}  ·  today 2025-08-29 (UTC)  ·  "
                                    f"q quits")
    assert row_cells(text, "all") == ["all", "0", "0.00", "", "0", "0.00", ""]  # no budgets
    assert row_cells(text, "5-hour block") == ["5-hour block", "no usage in the last day"]
    assert bars == {}
    assert rendered(view(None, True, NOW))[0] == "counting the lake…\n"


def test_plain_line_of_a_known_summary() -> None:
    content = summary(a_known_totals(), known_budgets(), NOW, "abc/7")
    rate = content["burn"]["tokens_per_minute"]
    assert 2_000 < rate <= 2_625
    assert plain_line(content, NOW) == (
        "12:30:00 today 52,500 tokens $0.17 · week 53,500 tokens $0.18 · "
        "all daily tokens 35% · all weekly cost 18% · alice daily tokens 150% · "
        f"bob daily tokens 85% · burn {rate:,.0f} tokens/min · block 52,500 tokens")


def test_plain_line_leaves_out_a_block_that_ended() -> None:
    evening = NOW.replace(hour=20, minute=0)  # the block ran 12:00-17:00; nothing in the last hour
    content = summary(a_known_totals(), [], evening, None)
    assert plain_line(content, evening) == ("20:00:00 today 52,500 tokens $0.17 · "
                                            "week 53,500 tokens $0.18 · burn 0 tokens/min")


# ---------------------------------------------------------------- LiveSource


def test_live_source_prefers_a_fresh_live_json_to_the_lake(home: Home) -> None:
    source = LiveSource(home)
    assert not source.changed()  # no live.json: the lake is being counted, on a thread
    source.wait_for_count(30)
    assert source.changed() and source.from_lake
    assert source.content is not None and source.content["all"]["today"]["tokens"] == 0
    assert not source.changed()  # the lake is counted again only every minute

    published = summary(a_known_totals(), [], datetime.now(UTC), "abc/1")
    write_live(home, published, [])
    assert source.changed() and not source.from_lake
    assert source.content == orjson.loads(orjson.dumps(published))
    assert not source.changed()  # the same file: nothing to redraw

    published["batch"] = "abc/2"
    write_live(home, published, [])
    os.utime(live_path(home), (time.time() + 1, time.time() + 1))  # a later mtime for sure
    assert source.changed() and source.content is not None
    assert source.content["batch"] == "abc/2"

    long_ago = time.time() - timedelta(hours=1).total_seconds()
    os.utime(live_path(home), (long_ago, long_ago))  # the tailer stopped an hour ago
    source.changed()
    source.wait_for_count(30)
    assert source.changed() and source.from_lake
    assert source.content is not None and source.content["all"]["today"]["tokens"] == 0
