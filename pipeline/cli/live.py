"""`tally watch`, `tally statusline` and `tally run`: the live side.

`statusline` is imported on every assistant message of Claude Code: this module imports
nothing heavy at the top (no Polars, no rich); each command imports what it needs.
"""

from __future__ import annotations

import sys
import threading

import click

from pipeline.cli.options import home_option, new_home_option, say, stop_on_signals
from pipeline.config import Home


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON line per committed batch instead of drawing")
@home_option
def watch(home: Home, as_json: bool) -> None:
    """A live view: today and this week per agent with budget bars, the burn rate, the
    5-hour block and each agent's latest task, redrawn as batches land.

    It shows what a running `tally run` or `tally tail` publishes; without one, the lake
    as counted at start. `q` or Ctrl-C quits. Not on a terminal, it prints a plain line
    per update. With --json it prints, per committed batch, its token deltas per agent
    and the day and week totals with budget percentages: any program can subscribe by
    reading the pipe.

    \b
    Examples:
      tally watch
      tally watch --json | jq -c '.added'
    """
    stop = threading.Event()
    stop_on_signals(stop)
    if as_json:
        from pipeline.live import kept_live
        from pipeline.watch import watch_feed

        if not kept_live(home):
            click.echo("no tailer publishes batches for this home yet: lines come once "
                       "`tally run` or `tally tail` commits one", err=True)
        watch_feed(home, stop, sys.stdout.buffer)
    elif sys.stdout.isatty():
        from pipeline.watch import watch_screen

        watch_screen(home, stop)
    else:
        from pipeline.watch import watch_plain

        watch_plain(home, stop, lambda line: click.echo(line))


@click.command()
@home_option
def statusline(home: Home) -> None:
    """Print one line for Claude Code's status bar: the Claude Code session's and the day's
    tokens and cost, and the daily budget's percentage, from what a tailer publishes.

    Reads Claude Code's statusline JSON on stdin (session_id, model). In
    ~/.claude/settings.json:

    \b
      "statusLine": {"type": "command", "command": "tally statusline --home ~/.tally"}

    \b
    Example:
      echo '{"session_id": "abc", "model": {"display_name": "Opus"}}' | tally statusline
    """
    from pipeline.statusline import line_for

    piped = b"" if sys.stdin.isatty() else sys.stdin.buffer.read()  # nothing, run by hand
    click.echo(line_for(str(home.root), piped))


@click.command()
@click.option("--quiet", "-q", is_flag=True,
              help="no summary lines (alerts and failures are still printed)")
@new_home_option
def run(home: Home, quiet: bool) -> None:
    """Follow the logs, check budgets after every batch, compact every `[compactor] every`
    seconds (default 300) and deliver alerts: everything, in one process.

    SIGTERM or SIGINT commit the batch under way, let a compaction under way finish, and
    exit 0; alerts not yet delivered are delivered after the next start.

    \b
    Examples:
      tally run --home ~/.tally
      systemctl start tally          # the unit in the README runs `tally run`
    """
    from pipeline.service import run_service

    result = run_service(home, say, None if quiet else say,
                         on_ready=lambda tailer: stop_on_signals(tailer.stop))
    if not quiet:
        click.echo(f"run: staged {result.tailed.staged:,} events, quarantined "
                   f"{result.tailed.quarantined:,} lines; {result.compactions} compaction(s) "
                   f"moved {result.compacted_events:,} events to the lake")
