"""`tally schema`, `tally log` and `tally validate`: the events themselves. In a module of
their own, so that the other commands do not load the writer and the validators."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.options import echo_json, format_option, new_home_option
from pipeline.config import Home
from pipeline.errors import UsageError
from pipeline.schemas import load_schemas
from pipeline.validation import FileReport, validate_files
from pipeline.writer import append_event, build_event, default_log_path, shared_validator


@click.group()
def schema() -> None:
    """List and show the event schemas.

    \b
    Example:
      tally schema show agent_token_usage
    """


@schema.command("list")
@format_option("table", "json")
def schema_list(fmt: str) -> None:
    """List registered event types and their versions.

    \b
    Example:
      tally schema list --format json
    """
    schemas = load_schemas()
    rows = [{"event_type": t, "versions": schemas.versions(t),
             "title": schemas.get(t).get("title", "")} for t in schemas.types]
    if fmt == "json":
        echo_json(rows)
        return
    for row in rows:
        versions = ",".join(f"v{v}" for v in row["versions"])
        click.echo(f"{row['event_type']:<20} {versions:<6} {row['title']}")


@schema.command("show")
@click.argument("event_type")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="schema version (default: latest)")
def schema_show(event_type: str, version: int | None) -> None:
    """Print the JSON Schema of EVENT_TYPE.

    \b
    Example:
      tally schema show task_progress --version 1
    """
    echo_json(load_schemas().get(event_type, version))


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("event_type")
@click.argument("fields", nargs=-1)
@click.option("--agent", envvar="TALLY_AGENT",
              help="agent name [env: TALLY_AGENT; default: the role]")
@click.option("--role", help="agent role, e.g. dev")
@click.option("--phase", help="phase number or label")
@click.option("--task", help="task id")
@click.option("--session", "session_id", help="session id")
@click.option("--model", help="model name")
@click.option("--to", "to_file", type=click.Path(dir_okay=False, path_type=Path),
              help="append to this file instead of <home>/logs/<agent>.jsonl")
@click.option("--quiet", "-q", is_flag=True, help="print nothing on success")
@new_home_option
def log(home: Home, event_type: str, fields: tuple[str, ...], agent: str | None, role: str | None,
        phase: str | None, task: str | None, session_id: str | None, model: str | None,
        to_file: Path | None, quiet: bool) -> None:
    """Validate one event and append it to a log; fields are KEY=VALUE, typed by the schema.

    Short aliases: input=, output=, cache_read=, cache_write=, cache_write_1h=, reasoning=.
    Arrays and objects are given as JSON.

    \b
    Examples:
      tally log agent_token_usage --agent claude --phase 1 role=dev \\
          input_tokens=5000 output_tokens=1200 cache_read=3000 cache_write=800
      tally log task_progress --agent gemini --task GM-004 status=in_progress progress=60 \\
          'tokens_used={"prompt":1000,"completion":1500,"total":2500}'
    """
    envelope = {"agent": agent, "role": role, "phase": phase, "task": task,
                "session_id": session_id, "model": model}
    event = build_event(load_schemas(), event_type, fields, envelope)
    event.setdefault("agent", event.get("role"))
    if event["agent"] is None:
        raise UsageError("no agent given", hint="pass --agent NAME or set TALLY_AGENT")
    target = to_file or default_log_path(home.logs, event["agent"])
    written = append_event(target, event, shared_validator(), home.tailer.max_line_bytes)
    if not quiet:
        click.echo(f"{target}: {written['event_type']} {written['event_id']}")


@click.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@format_option("text", "json", default="text")
@click.option("--max-errors", type=click.IntRange(min=0), default=1000, show_default=True,
              help="stop listing errors after this many (counting goes on)")
@new_home_option
def validate(home: Home, files: tuple[Path, ...], fmt: str, max_errors: int) -> None:
    """Check every line of FILES against the schemas; exit 1 if any line is invalid.

    A line longer than the home's [tailer] max_line_bytes is invalid (line_too_long), as
    the tailer would quarantine it; without a home, the default limit of 1 MiB applies.

    \b
    Examples:
      tally validate sample_logs/*.jsonl
      tally validate --format json logs/claude.jsonl | jq '.errors[0]'
    """
    reports = validate_files(files, shared_validator(), max_errors=max_errors,
                             max_line_bytes=home.tailer.max_line_bytes)
    if fmt == "json":
        echo_json(_validation_json(reports))
    else:
        _render_validation(reports)
    if any(report.invalid for report in reports):
        raise SystemExit(1)


def _render_validation(reports: list[FileReport]) -> None:
    for report in reports:
        for finding in report.findings:
            click.echo(f"{report.path}:{finding.line}: {finding.rejection.describe()}")
    lines = sum(r.lines for r in reports)
    invalid = sum(r.invalid for r in reports)
    status = "ok" if invalid == 0 else "INVALID"
    click.echo(f"{status}: {lines:,} lines in {len(reports)} file(s), {invalid:,} invalid",
               err=invalid > 0)


def _validation_json(reports: list[FileReport]) -> dict[str, object]:
    return {
        "files": len(reports),
        "lines": sum(r.lines for r in reports),
        "invalid": sum(r.invalid for r in reports),
        "errors": [
            {"file": str(r.path), "line": f.line, "reason": f.rejection.reason,
             "pointer": f.rejection.pointer, "message": f.rejection.message,
             "expected": f.rejection.expected, "found": f.rejection.found,
             "hint": f.rejection.hint}
            for r in reports for f in r.findings
        ],
    }
