"""`tally compact` and `tally rebuild`."""

from __future__ import annotations

import click

from pipeline.cli.options import home_option, progress_bar, setting_type
from pipeline.compactor import (
    ROWS_PER_COMMIT,
    CompactionResult,
    check_retention,
    optimize_lake,
    run_compaction,
    vacuum_lake,
)
from pipeline.config import Home
from pipeline.errors import LakeError, display_path, safe_text
from pipeline.monitor import check_budgets
from pipeline.rebuild import changes, run_rebuild
from pipeline.settings import CompactorSettings


def _summary(verb: str, result: CompactionResult) -> str:
    retried = (f", planned again {result.conflicts} time(s) after other hosts' commits"
               if result.conflicts else "")
    if result.rollup_conflicts:
        retried += f", rollups caught up again {result.rollup_conflicts} time(s)"
    return (f"{verb}: {result.events:,} events in {result.commits} commit(s), "
            f"{len(result.partitions)} partition(s) touched, {result.seconds:.2f} s "
            f"({result.rate:,.0f} events/s){retried}")


@click.command()
@click.option("--lock-timeout", type=setting_type(CompactorSettings, "lock_timeout"), default=None,
              help="seconds to wait for a running compaction [default: from config, 60]")
@click.option("--optimize", is_flag=True, help="then merge small files per partition")
@click.option("--target-mb", type=setting_type(CompactorSettings, "target_file_mb"), default=None,
              help="target file size for --optimize [default: from config, 128]")
@click.option("--vacuum", is_flag=True, help="then delete files no longer referenced")
@click.option("--retention-hours", default=None,
              type=setting_type(CompactorSettings, "vacuum_retention_hours"),
              help="keep unreferenced files younger than this [default: from config, 168]")
@click.option("--rows-per-commit", type=click.IntRange(min=1), default=ROWS_PER_COMMIT,
              hidden=True, help="events per Delta commit (tests use small values)")
@home_option
def compact(home: Home, lock_timeout: float | None, optimize: bool, target_mb: int | None,
            vacuum: bool, retention_hours: float | None, rows_per_commit: int) -> None:
    """Move staged events into the Delta lake (one table per type, partitioned by UTC date).

    Idempotent and safe to kill: a batch already committed is recognised and never
    written twice. Run it from cron or a systemd timer beside `tally tail`.

    \b
    Examples:
      tally compact
      tally compact --optimize --vacuum --retention-hours 168
    """
    if vacuum:
        check_retention(home, retention_hours)  # before the work, not after it
    with progress_bar("compacting") as progress:
        result = run_compaction(home, lock_timeout=lock_timeout, progress=progress,
                                rows_per_commit=rows_per_commit)
    click.echo(_summary("compact", result))
    _render_repairs(result)
    if optimize:
        merged = optimize_lake(home, target_mb, lock_timeout)
        click.echo("optimize: " + _per_table(merged, "files merged"))
    if vacuum:
        removed = vacuum_lake(home, retention_hours, lock_timeout)
        click.echo("vacuum: " + _per_table(removed, "files deleted"))
    check_budgets(home, lambda message: click.echo(message, err=True))


def _render_repairs(result: CompactionResult) -> None:
    """What compaction set right on its way, and what it could not: LakeError for that."""
    for line in result.recovered:
        click.echo(f"recovered: {line}", err=True)
    for restaged in result.restaged:
        click.echo(f"damaged stage file set aside as {display_path(restaged.set_aside)}; "
                   f"{restaged.events:,} events staged again from the logs", err=True)
    if result.unwritable:
        click.echo(f"{len(result.unwritable):,} row(s) the lake cannot hold were quarantined "
                   f"(first: {safe_text(result.unwritable[0].source)} at byte "
                   f"{result.unwritable[0].offset:,}: {result.unwritable[0].message})", err=True)
    if result.uncommitted_files_removed:
        click.echo(f"removed {result.uncommitted_files_removed:,} file(s) of a compaction "
                   "killed while writing", err=True)
    if result.lost:
        raise LakeError(f"events of {len(result.lost)} damaged stage file(s) could not be "
                        f"read again: {result.lost[0]}",
                        hint="the damaged files are kept under quarantine/damaged/; "
                             "everything else was compacted")


def _per_table(counts: dict[str, int], what: str) -> str:
    if not counts:
        return "no tables"
    return ", ".join(f"{table} {n:,} {what}" for table, n in counts.items())


@click.command()
@click.option("--force", is_flag=True,
              help="swap in the rebuilt lake even if it holds fewer events; the old lake, "
                   "stage, quarantine and state are kept in <home>/rebuild-backup-<time>/")
@home_option
def rebuild(home: Home, force: bool) -> None:
    """Replay the raw logs into a fresh lake beside the current one, then swap it in.

    Stop `tally tail` first: rebuild takes its lock. Stage, quarantine and checkpoints
    are rebuilt too, so the tailer resumes from the replayed position.

    Refuses (exit 6, nothing changed) if the fresh lake would hold fewer events of any
    type than the current one, as after old logs were pruned. Safe to kill: the next
    rebuild first finishes or undoes an interrupted one. On a lake other hosts share
    ([lake] uri), it replaces this host's events only.

    \b
    Examples:
      tally rebuild --home ~/.tally
      tally rebuild --force   # even if smaller; the old lake is kept as a backup
    """
    with progress_bar("rebuilding") as progress:
        result = run_rebuild(home, force=force, progress=progress,
                             notify=lambda message: click.echo(message, err=True))
    for line in result.recovered:
        click.echo(f"recovered: {line}", err=True)
    click.echo(_summary("rebuild", result.compaction))
    shared = "" if home.lake_location.is_local else f" (the rows of host {home.host})"
    click.echo(f"lake: {home.lake_location}{shared}")
    changed = changes(result.before, result.after) if result.before else []
    if changed:
        click.echo("changed: " + ", ".join(changed))
    if result.backup is not None:
        click.echo(f"the previous lake is kept in {display_path(result.backup)}; delete it "
                   "when you no longer need it")
