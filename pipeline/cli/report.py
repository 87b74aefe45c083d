"""`tally report` (and its daily-summary and context views), `tally progress`, `tally usage`:
each parses, calls one library function, renders."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
import polars as pl
from click.core import ParameterSource

from pipeline.charts import draw_png, report_figure
from pipeline.cli.options import (
    echo_json,
    format_option,
    home_option,
    new_home_option,
    require_home,
)
from pipeline.config import Home
from pipeline.errors import LakeError, UsageError
from pipeline.progress import STATUSES, run_progress
from pipeline.query import (
    COST_MODES,
    DAY_FORMAT,
    DEFAULT_BY,
    GROUP_KEYS,
    ReportQuery,
    check_timezone,
    parse_by,
    split_values,
)
from pipeline.records import (
    cell_text,
    csv_text,
    json_records,
    json_text,
    numeric,
    parquet_bytes,
    plain,
    totals_row,
    write_bytes,
)
from pipeline.report_html import report_html
from pipeline.reports import (
    ReportCheck,
    check_report,
    run_context_report,
    run_daily_summary,
    run_report,
    run_usage,
)

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "json", "csv", "markdown")
DAY = click.DateTime(formats=[DAY_FORMAT])


# ---------------------------------------------------------------- shared options


def _day(value: datetime | None) -> date | None:
    return value.date() if value else None


def tz_option(func: F) -> F:
    """--tz IANA zone for day boundaries, checked."""
    return click.option("--tz", default="UTC", show_default=True, metavar="IANA",
                        callback=lambda ctx, param, value: _checked_tz(value),
                        help="IANA time zone of the day boundaries, e.g. Europe/Istanbul")(func)


def _checked_tz(value: str) -> str:
    try:
        return check_timezone(value)
    except UsageError as error:
        raise click.BadParameter(str(error)) from error


def agent_option(func: F) -> F:
    """--agent NAME, repeatable."""
    return click.option("--agent", "agents", multiple=True, metavar="NAME",
                        help="only these agents (repeatable, or comma-separated)")(func)


def range_options(func: F) -> F:
    """--since/--until inclusive dates in the report's time zone."""
    func = click.option("--until", type=DAY, default=None, metavar="YYYY-MM-DD",
                        help="last day included (in --tz)")(func)
    return click.option("--since", type=DAY, default=None, metavar="YYYY-MM-DD",
                        help="first day included (in --tz)")(func)


def filter_options(func: F) -> F:
    """--role/--phase/--model filters, each repeatable."""
    for name, dest, meta in (("--model", "models", "MODEL"), ("--phase", "phases", "PHASE"),
                             ("--role", "roles", "ROLE")):
        func = click.option(name, dest, multiple=True, metavar=meta,
                            help=f"only these {dest} (repeatable, or comma-separated)")(func)
    return func


def cost_mode_option(func: F) -> F:
    """--cost-mode auto|calculate."""
    return click.option("--cost-mode", type=click.Choice(COST_MODES), default="auto",
                        show_default=True,
                        help="auto: the producer's cost_usd when present, else computed; "
                             "calculate: always from the pricing table")(func)


# ---------------------------------------------------------------- rendering


def _table_lines(frame: pl.DataFrame, totals: bool, markdown: bool) -> list[str]:
    headers = frame.columns
    rows = [[cell_text(c, v) for c, v in zip(headers, r, strict=True)] for r in frame.iter_rows()]
    if totals and frame.height:
        total = totals_row(frame, headers[0])
        rows.append([cell_text(c, total[c]) if total[c] is not None or numeric(frame, c) else ""
                     for c in headers])
    right = [numeric(frame, c) for c in headers]
    if markdown:
        rule = ["---:" if r else "---" for r in right]
        return ["| " + " | ".join(cells) + " |" for cells in (headers, rule, *rows)]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    if totals and frame.height:
        out.insert(len(out) - 1, line(["-" * w for w in widths]))
    return out


def rendered(frame: pl.DataFrame, fmt: str, *, totals: bool = False) -> str | None:
    """A result frame as the text of a table, JSON array, CSV or Markdown table; None for a
    table of no rows."""
    if fmt == "json":
        return json_text(json_records(frame)) + "\n"
    if fmt == "csv":
        return csv_text(frame)
    if frame.height == 0:
        return None
    return "\n".join(_table_lines(frame, totals, markdown=fmt == "markdown")) + "\n"


def render(frame: pl.DataFrame, fmt: str, *, totals: bool = False) -> None:
    """Print a result frame as a table, JSON array, CSV or Markdown table."""
    text = rendered(frame, fmt, totals=totals)
    if text is None:
        click.echo("no events match", err=True)
    else:
        click.echo(text, nl=False)


def _warn_unpriced(models: list[str], events: int) -> None:
    if models:
        click.echo(f"warning: no price for {', '.join(models)}: {events:,} event(s) have no "
                   "cost (add the model under [pricing] in config.toml)", err=True)


# ---------------------------------------------------------------- tally report


@click.group(invoke_without_command=True)
@click.option("--by", "by_text", default=",".join(DEFAULT_BY), show_default=True, metavar="KEYS",
              help="comma-separated group keys: " + ", ".join(GROUP_KEYS))
@range_options
@agent_option
@filter_options
@tz_option
@cost_mode_option
@format_option(*FORMATS, "html", "parquet")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              metavar="FILE", help="write the report to FILE instead of stdout "
                                   "(--format parquet needs one unless stdout is a pipe)")
@click.option("--chart", type=click.Path(dir_okay=False, writable=True), default=None,
              metavar="FILE.png", help="also draw the report as a PNG picture: cost above "
                                       "tokens, stacked by group over the time key")
@click.option("--check", is_flag=True,
              help="also count the report from every event, and say whether the rollups' "
                   "answer is the same (exit 5 if not)")
@new_home_option  # checked below: a subcommand has its own --home
@click.pass_context
def report(ctx: click.Context, home: Home, by_text: str, since: datetime | None,
           until: datetime | None, agents: tuple[str, ...], roles: tuple[str, ...],
           phases: tuple[str, ...], models: tuple[str, ...], tz: str, cost_mode: str,
           fmt: str, output: str | None, chart: str | None, check: bool) -> None:
    """Tokens and cost per agent, role, phase, day, week, month, model, task or session.

    Counts every validated event once, compacted or still staged: token-usage rows
    summed, task_progress tokens_used increments for tasks without usage rows.
    Columns: events, input/output/cache_read/cache_write/other/total tokens, cost_usd
    (null when nothing in the group has a price) and unpriced_events. Models without
    a price are listed on stderr. --format html writes one self-contained page (charts
    as inline SVG, no script: fit for mail and CI artefacts); --format parquet a typed
    Parquet file for analysts.

    \b
    Examples:
      tally report --by role,phase                  # per agent role per phase
      tally report --by agent,week --since 2025-08-01 --tz Europe/Istanbul
      tally report --by model --agent claude --cost-mode calculate --format json
      tally report --by agent,day --check           # the rollups against every event
      tally report --by agent,week --format html -o report.html --chart report.png
      tally report --by model,day --format parquet -o usage.parquet
      tally report daily-summary --date 2025-08-29 --format json
    """
    if ctx.invoked_subcommand is not None:
        refuse_group_options(ctx)
        return
    require_home(home)
    query = ReportQuery(by=parse_by(by_text), since=_day(since), until=_day(until),
                        agents=split_values(agents), roles=split_values(roles),
                        phases=split_values(phases),
                        models=split_values(models), tz=tz, cost_mode=cost_mode)
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise UsageError("--format parquet writes binary data, not for a terminal",
                         hint="give a file: tally report --format parquet -o report.parquet")
    result = run_report(home, query)
    if chart:
        write_bytes(Path(chart), draw_png(report_figure(json_records(result.rows), query.by,
                                                         query.since, query.until)))
    if fmt in ("html", "parquet") or output is not None:
        _write_report(result.rows, fmt, query, result.unpriced_models, output)
    else:
        render(result.rows, fmt, totals=True)
    _warn_unpriced(result.unpriced_models, int(result.rows["unpriced_events"].sum()))
    if check:
        _render_check(check_report(home, query))


def _write_report(rows: pl.DataFrame, fmt: str, query: ReportQuery, unpriced: list[str],
                  output: str | None) -> None:
    """A report as a file's bytes, to --output or stdout."""
    if fmt == "html":
        data = report_html(rows, query, unpriced, datetime.now(ZoneInfo(query.tz))).encode()
    elif fmt == "parquet":
        data = parquet_bytes(rows)
    else:
        text = rendered(rows, fmt, totals=True)
        if text is None:
            click.echo("no events match", err=True)
        data = (text or "").encode()
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        write_bytes(Path(output), data)


def _render_check(checked: ReportCheck) -> None:
    if checked.same:
        click.echo(f"check: the rollups' answer equals the count from every event "
                   f"({checked.from_events.height:,} group(s))", err=True)
        return
    differences = checked.differences()
    raise LakeError(f"check: the rollups' answer differs from the count from every event in "
                    f"{differences.height:,} group(s), e.g. {differences.row(0, named=True)}",
                    hint="run `tally compact`, which brings the rollups up to date; if they "
                         "still differ, `tally rebuild` makes them again from the logs")


def refuse_group_options(ctx: click.Context) -> None:
    """Options of a group's own command given before a subcommand would be silently
    ignored: UsageError."""
    given = [p.opts[0] for p in ctx.command.params if p.name and
             ctx.get_parameter_source(p.name) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise UsageError(f"{', '.join(given)} before {ctx.invoked_subcommand!r} would be ignored",
                         hint=f"put options after the subcommand: tally {ctx.info_name} "
                              f"{ctx.invoked_subcommand} {given[0]} ...")


@report.command("daily-summary")
@click.option("--date", "day", type=DAY, default=None, metavar="YYYY-MM-DD",
              help="the day, in --tz [default: today]")
@agent_option
@tz_option
@cost_mode_option
@format_option(*FORMATS, default="json")
@home_option
def daily_summary(home: Home, day: datetime | None, agents: tuple[str, ...], tz: str,
                  cost_mode: str, fmt: str) -> None:
    """The daily token report: per agent tasks, tokens and cost, and the day's totals.

    tasks: distinct tasks with activity that day; tasks_completed: those whose last
    status that day is completed; avg_tokens_per_task: tokens per completed task.
    JSON has the shape of the seed's aggregated token report, costs as "$X.XX".

    \b
    Example:
      tally report daily-summary --date 2025-08-29 --agent claude,gemini,codex
    """
    when = _day(day) or datetime.now(ZoneInfo(tz)).date()
    summary = run_daily_summary(home, when, ReportQuery(agents=split_values(agents), tz=tz,
                                                        cost_mode=cost_mode))
    if fmt == "json":
        echo_json(summary.seed_shape())
        return
    render(summary.agents, fmt, totals=True)


@report.command("context")
@range_options
@agent_option
@click.option("--role", "roles", multiple=True, metavar="ROLE",
              help="only these roles (repeatable, or comma-separated)")
@tz_option
@format_option(*FORMATS)
@home_option
def context(home: Home, since: datetime | None, until: datetime | None,
            agents: tuple[str, ...], roles: tuple[str, ...], tz: str, fmt: str) -> None:
    """Context compilations per role with estimated input tokens and cache hit ratio.

    Without a producer's estimates, a compilation whose prefix_hash equals the previous
    one of the same role and session counts as a cache read of the prefix, any other as
    a cache write; bytes stand in for tokens. The hit ratio is cache-read tokens over
    cache-read plus cache-write tokens.

    \b
    Example:
      tally report context --since 2025-08-25 --format markdown
    """
    query = ReportQuery(since=_day(since), until=_day(until), agents=split_values(agents),
                        roles=split_values(roles), tz=tz)
    render(run_context_report(home, query), fmt, totals=True)


# ---------------------------------------------------------------- progress, usage


@click.command()
@agent_option
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="only tasks whose latest status is this (repeatable)")
@tz_option
@format_option(*FORMATS)
@home_option
def progress(home: Home, agents: tuple[str, ...], statuses: tuple[str, ...], tz: str,
             fmt: str) -> None:
    """The latest state of every (agent, task), folded from its task_progress events.

    Shows status, progress, last update, tokens and cost counted so far (by the report's
    rules), deliverables, completed components and what remains.

    \b
    Examples:
      tally progress --status in_progress
      tally progress --agent gemini --format json
    """
    frame = run_progress(home, split_values(agents), statuses, tz)
    if fmt in ("table", "markdown"):
        frame = frame.drop("snapshots", "components_completed")
    render(frame, fmt)


@click.command()
@click.option("--date", "day", type=DAY, default=None, metavar="YYYY-MM-DD",
              help="count 'today' and 'this week' as of this day [default: today in --tz]")
@agent_option
@tz_option
@cost_mode_option
@format_option(*FORMATS)
@home_option
def usage(home: Home, day: datetime | None, agents: tuple[str, ...], tz: str, cost_mode: str,
          fmt: str) -> None:
    """Total tokens and cost today, this week (ISO, from Monday) and all time, per agent.

    \b
    Examples:
      tally usage
      tally usage --tz America/New_York --format json
    """
    today = _day(day) or datetime.now(ZoneInfo(tz)).date()
    frame = run_usage(home, today, ReportQuery(agents=split_values(agents), tz=tz,
                                               cost_mode=cost_mode))
    if fmt == "json":
        total = totals_row(frame, "agent")
        echo_json({"date": today.isoformat(), "tz": tz, "agents": json_records(frame),
                   "total": {k: plain(v) for k, v in total.items() if k != "agent"}})
        return
    render(frame, fmt, totals=True)
