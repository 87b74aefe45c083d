"""`tally tail` and `tally status`."""

from __future__ import annotations

import signal
import time
from types import FrameType

import click

from pipeline.cli.options import (
    echo_json,
    format_option,
    home_option,
    new_home_option,
    progress_bar,
)
from pipeline.config import Home
from pipeline.status import tail_status
from pipeline.tailer import PollResult, Tailer, follow


@click.command()
@click.option("--once", is_flag=True, help="catch up on everything present, then exit")
@click.option("--quiet", "-q", is_flag=True, help="no summary lines")
@new_home_option
def tail(home: Home, once: bool, quiet: bool) -> None:
    """Validate and stage every complete line appended under <home>/logs.

    Runs in the foreground until SIGINT or SIGTERM, which finish the current batch,
    commit the checkpoint and exit 0. Invalid lines go to <home>/quarantine. With
    --once on a terminal, a progress bar counts the bytes committed.

    \b
    Examples:
      tally tail --once            # catch up and exit (cron, tests, the demo)
      tally tail --home ~/.tally   # follow for ever
    """
    notify = (lambda message: None) if quiet else (lambda message: click.echo(message, err=True))
    started = time.monotonic()
    with Tailer(home, notify=notify) as tailer:
        _stop_on_signals(tailer)
        if once:
            with progress_bar("catching up", show=not quiet) as progress:
                result = tailer.poll(progress=progress)
        else:
            result = follow(tailer, on_status=notify)
    if not quiet:
        click.echo(_summary(result, time.monotonic() - started))


def _stop_on_signals(tailer: Tailer) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        tailer.stop.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _summary(result: PollResult, seconds: float) -> str:
    rate = result.staged / seconds if seconds > 0 else 0.0
    return (f"tail: staged {result.staged:,} events, quarantined {result.quarantined:,} lines "
            f"in {result.batches:,} batches, {seconds:.2f} s ({rate:,.0f} events/s)")


@click.command()
@format_option("table", "json")
@home_option
def status(home: Home, fmt: str) -> None:
    """Show each watched file's offset, size and lag, and the stage and quarantine counts.

    \b
    Example:
      tally status --format json
    """
    report = tail_status(home)
    if fmt == "json":
        echo_json({
            "files": [{"path": f.path, "offset": f.offset, "size": f.size, "lag": f.lag}
                      for f in report.files],
            "staged_waiting": report.staged_waiting, "staged_total": report.staged_total,
            "quarantined_total": report.quarantined_total, "batch": report.batch,
            "last_checkpoint": report.last_checkpoint or None,
        })
        return
    width = max([len(f.path) for f in report.files] + [4])
    click.echo(f"{'file':<{width}}  {'offset':>14}  {'size':>14}  {'lag':>12}")
    for f in report.files:
        size = "gone" if f.size is None else f"{f.size:,}"
        lag = "-" if f.lag is None else f"{f.lag:,}"
        click.echo(f"{f.path:<{width}}  {f.offset:>14,}  {size:>14}  {lag:>12}")
    click.echo(f"staged, waiting for compaction: {report.staged_waiting:,}")
    click.echo(f"staged since the start: {report.staged_total:,}; "
               f"quarantined: {report.quarantined_total:,}")
    click.echo(f"last checkpoint: {report.last_checkpoint or 'never'} (batch {report.batch})")
