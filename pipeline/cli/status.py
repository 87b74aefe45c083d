"""`tally status`: in its own module, so `tally tail` does not load the lake's libraries."""

from __future__ import annotations

import click

from pipeline.cli.options import echo_json, format_option, home_option
from pipeline.config import Home
from pipeline.status import tail_status


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
