"""`tally tail`."""

from __future__ import annotations

import time

import click

from pipeline.cli.options import new_home_option, progress_bar, say, stop_on_signals
from pipeline.config import Home
from pipeline.errors import SourceError, display_path
from pipeline.tailer import PollResult, Tailer


@click.command()
@click.option("--once", is_flag=True, help="catch up on everything present, then exit")
@click.option("--quiet", "-q", is_flag=True, help="no summary lines")
@new_home_option
def tail(home: Home, once: bool, quiet: bool) -> None:
    """Validate and stage every complete line appended under <home>/logs.

    Runs in the foreground until SIGINT or SIGTERM, which finish the current batch,
    commit the checkpoint and exit 0. Invalid lines go to <home>/quarantine. With
    --once on a terminal, a progress bar counts the bytes committed. Budgets are checked
    after every batch (with --once, at the end), and alerts delivered.

    \b
    Examples:
      tally tail --once            # catch up and exit (cron, tests, the demo)
      tally tail --home ~/.tally   # follow for ever
    """
    status = None if quiet else say  # alerts and failures are said even with --quiet
    started = time.monotonic()
    with Tailer(home, notify=status or (lambda message: None)) as tailer:
        stop_on_signals(tailer.stop)
        if once:
            with progress_bar("catching up", show=not quiet) as progress:
                result = tailer.poll(progress=progress)
        else:
            from pipeline.monitor import follow_with_budgets  # Polars: only when following

            result = follow_with_budgets(tailer, say, status)
    if not quiet:
        click.echo(summary(result, time.monotonic() - started))
    if once:
        from pipeline.monitor import check_budgets_after

        check_budgets_after(home, say, tailer.checkpoint)
    if once and result.unreadable:
        raise unreadable_error(result.unreadable)


def unreadable_error(unreadable: dict[str, str]) -> SourceError:
    """The error of a pass that could not read some files (the rest was read)."""
    path, why = sorted(unreadable.items())[0]
    more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
    return SourceError(f"{why}{more}; everything else was read",
                       path=path,
                       hint="make it readable by the user running tally; the next run reads "
                            "it from where it stopped" if len(unreadable) == 1 else
                            "make them readable by the user running tally: "
                            + ", ".join(display_path(p) for p in sorted(unreadable)[:5]))


def summary(result: PollResult, seconds: float) -> str:
    """One line: what a pass staged and quarantined, and how fast."""
    rate = result.staged / seconds if seconds > 0 else 0.0
    return (f"tail: staged {result.staged:,} events, quarantined {result.quarantined:,} lines "
            f"in {result.batches:,} batches, {seconds:.2f} s ({rate:,.0f} events/s)")
