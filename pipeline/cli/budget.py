"""`tally budget` and `tally budget check`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import polars as pl

from pipeline.budget_view import BUDGET_COLUMNS, budget_rows, worst_level
from pipeline.cli.options import (
    echo_json,
    format_option,
    home_option,
    new_home_option,
    require_home,
)
from pipeline.cli.report import (
    DAY,
    FORMATS,
    agent_option,
    refuse_group_options,
    render,
)
from pipeline.config import Home
from pipeline.query import check_day, split_values

BUDGET_SCHEMA = {"scope": pl.String, "period": pl.String, "metric": pl.String,
                 "period_start": pl.String, "used": pl.Float64, "budget": pl.Float64,
                 "percentage": pl.Float64, "status": pl.String, "burn_per_hour": pl.Float64,
                 "projected": pl.Float64, "exceeded_at": pl.String,
                 "minutes_left": pl.Float64}


AMOUNTS = ("used", "budget", "burn_per_hour", "projected")
TEXT_SCHEMA = {**BUDGET_SCHEMA, **dict.fromkeys(AMOUNTS, pl.String)}


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    """Amounts as people read them: tokens with separators, cost in dollars."""
    cost = row["metric"] == "cost"
    shown = {name: _amount(row[name], cost) for name in AMOUNTS}
    return {**row, **shown}


def _amount(value: float | None, cost: bool) -> str | None:
    if value is None:
        return None
    return f"${value:,.2f}" if cost else f"{value:,.0f}"


def _now() -> datetime:
    return datetime.now(UTC)


@click.group(invoke_without_command=True)
@click.option("--since", type=DAY, default=None, metavar="YYYY-MM-DD",
              help="also show every past period from this day on (in the budget time zone)")
@agent_option
@format_option(*FORMATS)
@new_home_option  # checked below: `check` has its own --home
@click.pass_context
def budget(ctx: click.Context, home: Home, since: datetime | None, agents: tuple[str, ...],
           fmt: str) -> None:
    """Show each budget's period: used, budget, percentage, burn rate per hour, the
    projected use at the period's end at that rate, and when it will be exceeded at
    that rate (`exceeded_at`, `minutes_left`).

    Budgets come from [budgets] in config.toml (days and weeks in its `tz`, weeks from
    Monday). `--agent` keeps the budgets of those agents' own scopes. JSON and CSV give
    tokens as whole numbers and cost in USD.

    \b
    Examples:
      tally budget
      tally budget --since 2026-11-01 --format json
      tally budget check --agent claude || echo "claude is over budget"
    """
    if ctx.invoked_subcommand is not None:
        refuse_group_options(ctx)
        return
    require_home(home)
    rows = budget_rows(home, _now(), check_day("--since", since.date() if since else None),
                       split_values(agents))
    if not rows:
        click.echo(_no_budgets(split_values(agents)), err=True)
        return
    if fmt == "json":
        echo_json(rows)
        return
    if fmt in ("table", "markdown"):
        rows = [_readable(row) for row in rows]
    schema = BUDGET_SCHEMA if fmt not in ("table", "markdown") else TEXT_SCHEMA
    frame = pl.DataFrame(rows, schema=schema, orient="row").select(BUDGET_COLUMNS)
    render(frame, fmt)


def _no_budgets(agents: tuple[str, ...]) -> str:
    if agents:
        return (f"no budgets of their own for {', '.join(agents)} (add "
                f"[budgets.agents.{agents[0]}] to config.toml)")
    return "no budgets are set (see [budgets] in config.toml)"


@budget.command("check")
@agent_option
@click.option("--quiet", "-q", is_flag=True, help="print nothing; the exit code says it all")
@home_option
def check(home: Home, agents: tuple[str, ...], quiet: bool) -> None:
    """Exit 0 when every current budget is ok, 1 at a warning, 2 when one is exceeded.

    With --agent, only the global budgets and those agents' own count: a wrapper can stop
    an agent before it spends. A wrong option is a usage error, which also exits 2: try
    the command once by hand.

    \b
    Examples:
      tally budget check && run-my-agent
      tally budget check --agent claude --quiet; echo $?
    """
    scopes = ("all", *split_values(agents)) if agents else ()
    rows = budget_rows(home, _now(), None, scopes)
    level = worst_level(rows)
    if not quiet:
        for row in map(_readable, rows):
            if row["status"] != "ok":
                click.echo(f"{row['status']}: {row['scope']} {row['period']} {row['metric']} "
                           f"at {row['percentage']:.1f} % ({row['used']} of {row['budget']})")
        if level == 0:
            click.echo("ok: every budget is within its limit")
    ctx = click.get_current_context()
    ctx.exit(level)
