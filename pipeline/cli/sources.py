"""`tally import` and `tally sources`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from pipeline.checkpoint import load_checkpoint
from pipeline.cli.options import echo_json, format_option, new_home_option, progress_bar, say
from pipeline.cli.tail import summary, unreadable_error
from pipeline.config import Home
from pipeline.errors import display_path
from pipeline.sources import KINDS

if TYPE_CHECKING:
    from pipeline.imports import SourceStatus


@click.command(name="import")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--path", type=click.Path(file_okay=False), default=None,
              help="where the logs are (default: where the CLI keeps them)")
@click.option("--agent", default=None, help="agent name of the events (default: the kind)")
@click.option("--compact/--no-compact", default=True, show_default=True,
              help="move what was read into the lake at once")
@click.option("--quiet", "-q", is_flag=True, help="no summary line")
@new_home_option
def import_(home: Home, kind: str, path: str | None, agent: str | None, compact: bool,
            quiet: bool) -> None:
    """Read what is new in one agent CLI's logs, once, into the lake's stage.

    KIND is claude-code, codex, gemini or opencode. Without --path, the logs are found
    where the CLI keeps them ($CLAUDE_CONFIG_DIR or ~/.claude and ~/.config/claude;
    $CODEX_HOME or ~/.codex; ~/.gemini/tmp; ~/.local/share/opencode). A second run reads
    only what was appended since; events already read count once. Usage lines become
    agent_token_usage events, tool calls tool_call events; lines that cannot be counted go
    to the quarantine with a reason. What was read is then compacted into the lake
    (--no-compact leaves it staged). A source configured in [[sources]] is also followed
    by `tally tail` and `tally run`.

    \b
    Examples:
      tally import claude-code && tally report --by day
      tally import codex --path ~/backup/.codex --agent codex-laptop
    """
    from pipeline.imports import chosen_source, import_and_compact
    from pipeline.monitor import check_budgets_after

    source = chosen_source(home, kind, path, agent)
    started = time.monotonic()
    with progress_bar(f"importing {kind}", show=not quiet) as progress:
        done = import_and_compact(home, source, notify=None if quiet else say,
                                  progress=progress, compact=compact)
    if not quiet:
        line = summary(done.read, time.monotonic() - started).replace("tail:", "import:", 1)
        if done.compacted is not None:
            line += f"; {done.compacted.events:,} events into the lake"
        click.echo(line)
    check_budgets_after(home, say, load_checkpoint(home.state))
    if done.read.unreadable:
        raise unreadable_error(done.read.unreadable)


@click.command()
@format_option("table", "json")
@new_home_option
def sources(home: Home, fmt: str) -> None:
    """List the configured sources and those found where agent CLIs keep logs.

    For each: the directories read, the files, and how much of them is not yet read
    (the lag). A source found but not configured is read by `tally import KIND`; add it
    to config.toml as [[sources]] to have `tally tail` and `tally run` follow it.

    \b
    Examples:
      tally sources
      tally sources --format json | jq '.[] | {agent, unread_bytes}'
    """
    from pipeline.imports import list_sources

    found = list_sources(home)
    if fmt == "json":
        echo_json([_as_json(status) for status in found])
        return
    if not found:
        click.echo("no sources configured or found; see `tally import --help`")
        return
    for status in found:
        state = "configured" if status.configured else "found, not configured"
        click.echo(f"{status.source.name} ({status.source.kind}, {state})")
        for root in status.roots or ():
            click.echo(f"  {display_path(root.path)}")
        if not status.roots:
            click.echo("  (no directory found)")
        newest = _newest(status)
        click.echo(f"  {status.files:,} files, {status.bytes:,} bytes; lag "
                   f"{status.unread_bytes:,} bytes in {status.unread_files:,} files"
                   + (f"; newest {newest}" if newest else ""))


def _newest(status: SourceStatus) -> str | None:
    if status.newest_mtime is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(status.newest_mtime))


def _as_json(status: SourceStatus) -> dict[str, object]:
    return {"kind": status.source.kind, "agent": status.source.name,
            "configured": status.configured, "roots": [r.path for r in status.roots],
            "files": status.files, "bytes": status.bytes, "unread_files": status.unread_files,
            "unread_bytes": status.unread_bytes, "newest": _newest(status)}
