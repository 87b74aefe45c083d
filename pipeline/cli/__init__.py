"""The tally command line: each command parses, calls one library function, renders."""

from __future__ import annotations

import click

from pipeline.cli.options import TallyGroup, new_home_option
from pipeline.config import Home, init_home

LAZY_COMMANDS = {
    "schema": "pipeline.cli.events:schema",
    "log": "pipeline.cli.events:log",
    "validate": "pipeline.cli.events:validate",
    "tail": "pipeline.cli.tail:tail",
    "import": "pipeline.cli.sources:import_",
    "sources": "pipeline.cli.sources:sources",
    "status": "pipeline.cli.status:status",
    "compact": "pipeline.cli.lake:compact",
    "rebuild": "pipeline.cli.lake:rebuild",
    "report": "pipeline.cli.report:report",
    "progress": "pipeline.cli.report:progress",
    "usage": "pipeline.cli.report:usage",
    "pricing": "pipeline.cli.pricing:pricing",
    "budget": "pipeline.cli.budget:budget",
    "watch": "pipeline.cli.live:watch",
    "statusline": "pipeline.cli.live:statusline",
    "run": "pipeline.cli.live:run",
    "serve": "pipeline.cli.serve:serve",
}


@click.group(cls=TallyGroup, lazy_commands=LAZY_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tally")
def main() -> None:
    """tally: validated LLM-agent telemetry, from JSONL logs to a Delta Lake and reports.

    \b
    Example:
      tally init && tally log agent_token_usage --agent claude input_tokens=5000
    """


@main.command()
@new_home_option
def init(home: Home) -> None:
    """Create the home layout (idempotent; never overwrites config.toml).

    \b
    Example:
      tally --help; tally init --home ~/.tally
    """
    created = init_home(home.root)
    for path in created:
        click.echo(f"created {path}")
    if not created:
        click.echo(f"{home.root} is already initialised; nothing changed")
