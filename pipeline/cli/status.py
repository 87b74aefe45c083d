"""`tally status`: in its own module, so `tally tail` does not load the lake's libraries."""

from __future__ import annotations

import click

from pipeline.cli.options import echo_json, format_option, home_option
from pipeline.config import Home
from pipeline.errors import LakeError, safe_text
from pipeline.status import TailStatus, tail_status


@click.command()
@format_option("table", "json")
@home_option
def status(home: Home, fmt: str) -> None:
    """Show each watched file's offset, size and lag, the stage and quarantine counts, and
    any disagreement between checkpoint, stage and lake (then the exit code is 5).

    \b
    Examples:
      tally status
      tally status --format json | jq .problems
    """
    report = tail_status(home)
    if fmt == "json":
        echo_json({
            "files": [{"path": safe_text(f.path), "offset": f.offset, "size": f.size,
                       "lag": f.lag} for f in report.files],
            "staged_waiting": report.staged_waiting, "staged_total": report.staged_total,
            "quarantined_total": report.quarantined_total, "batch": report.batch,
            "stream": report.stream, "last_checkpoint": report.last_checkpoint or None,
            "damaged_set_aside": report.set_aside, "problems": report.problems,
            "lake": str(home.lake_location), "host": home.host,
        })
    else:
        _render(report)
        click.echo(f"lake: {home.lake_location} (host {home.host})")
    if report.problems:
        raise LakeError(f"{len(report.problems)} problem(s) found; see above")


def _render(report: TailStatus) -> None:
    width = max([len(safe_text(f.path)) for f in report.files] + [4])
    click.echo(f"{'file':<{width}}  {'offset':>14}  {'size':>14}  {'lag':>12}")
    for f in report.files:
        size = "gone" if f.size is None else f"{f.size:,}"
        lag = "-" if f.lag is None else f"{f.lag:,}"
        click.echo(f"{safe_text(f.path):<{width}}  {f.offset:>14,}  {size:>14}  {lag:>12}")
    click.echo(f"staged, waiting for compaction: {report.staged_waiting:,}")
    click.echo(f"staged since the start: {report.staged_total:,}; "
               f"quarantined: {report.quarantined_total:,}")
    click.echo(f"last checkpoint: {report.last_checkpoint or 'never'} (batch {report.batch})")
    if report.set_aside:
        click.echo(f"damaged stage files set aside in quarantine/damaged/: {report.set_aside}")
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
