"""`tally pricing` (the prices in use) and `tally pricing import` (LiteLLM's price list)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import polars as pl

from pipeline.cli.options import (
    echo_json,
    format_option,
    home_option,
    new_home_option,
    require_home,
)
from pipeline.cli.report import FORMATS, refuse_group_options, render
from pipeline.config import Home
from pipeline.errors import UsageError
from pipeline.price_list import ImportResult, PriceChange, import_price_list
from pipeline.pricing import RATE_NAMES, ModelPrice, PriceTable, pricing_for
from pipeline.records import json_records


def _price_row(price: ModelPrice) -> dict[str, Any]:
    tier = price.long_context
    return {**price.rates.as_dict(),
            "long_context_threshold": tier.threshold if tier else None,
            **{f"long_context_{k}": (v if tier else None)
               for k, v in (tier.rates if tier else price.rates).as_dict().items()}}


def _price_frame(table: PriceTable, model: str | None) -> pl.DataFrame:
    rows = []
    for name, price in sorted(table.models.items()):
        if model is not None and table.lookup(model) is not price:
            continue
        rows.append({"model": name, "provider": price.provider, **_price_row(price),
                     "origin": price.origin})
    schema = {"model": pl.String(), "provider": pl.String(),
              **{n: pl.Float64() for n in RATE_NAMES}, "long_context_threshold": pl.Int64(),
              **{f"long_context_{n}": pl.Float64() for n in RATE_NAMES}, "origin": pl.String()}
    return pl.DataFrame(rows, schema=schema)


@click.group(invoke_without_command=True)
@click.option("--model", default=None, help="show only the price this model name matches")
@format_option(*FORMATS)
@new_home_option  # checked below: `import` has its own --home
@click.pass_context
def pricing(ctx: click.Context, home: Home, model: str | None, fmt: str) -> None:
    """The pricing table in use: USD per million tokens, shipped, imported (`tally pricing
    import`) and from config.toml, each over the one before.

    Names match exactly, then without a provider prefix or a dated suffix
    (claude-sonnet-4-5-20250929 is priced as claude-sonnet-4-5).

    \b
    Examples:
      tally pricing
      tally pricing --model claude-sonnet-4-5@20250929 --format json
      tally pricing import model_prices_and_context_window.json
    """
    if ctx.invoked_subcommand is not None:
        refuse_group_options(ctx)
        return
    require_home(home)
    table = pricing_for(home)
    frame = _price_frame(table, model)
    if model is not None and frame.height == 0:
        raise UsageError(f"no price for model {model!r}",
                         hint="add it under [pricing] in config.toml, or import a price list "
                              "(tally pricing import FILE)")
    if fmt == "json":
        aliases = {a: t for a, t in table.aliases.items() if t in set(frame["model"])}
        echo_json({"taken": table.taken, "source": table.source, "unit": "USD per 1M tokens",
                   "models": json_records(frame), "aliases": aliases})
        return
    if fmt in ("table", "markdown"):
        frame = frame.select(pl.exclude("^long_context_(cache_.*)$"))
    render(frame, fmt)
    if fmt != "csv":
        click.echo(f"prices taken {table.taken}; check them against the providers' pages",
                   err=True)


@pricing.command("import", short_help="Import LiteLLM's price list as the home's prices.")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True,
              help="show what would change, and write nothing")
@format_option("table", "json")
@home_option
def import_command(home: Home, file: Path, dry_run: bool, fmt: str) -> None:
    """Import LiteLLM's price list (model_prices_and_context_window.json, the one ccusage
    uses) as the home's prices: saved as <home>/pricing.json, over the shipped table and
    under config.toml's [pricing]. A new import replaces the last one whole.

    Chat, completion and responses models with per-token prices are taken, in USD per
    million tokens; a key with a provider prefix (anthropic/, vertex_ai/, us.anthropic.)
    also prices its bare name. Where the list gives no cache price, a Claude's cache costs
    1.25 x input to write, 2 x for one hour, 0.1 x to read; another model's, the input rate.

    The file is at the root of LiteLLM's repository (github.com/BerriAI/litellm).

    \b
    Examples:
      tally pricing import model_prices_and_context_window.json --dry-run
      tally pricing import ~/Downloads/model_prices_and_context_window.json
    """
    result = import_price_list(home, file, dry_run=dry_run)
    if fmt == "json":
        echo_json(_result_json(result))
        return
    for line in _summary(result):
        click.echo(line)
    if dry_run and result.changes:
        click.echo("")
        render(_changes_frame(result.changes), "table")


def _summary(result: ImportResult) -> list[str]:
    verb = "imported" if result.written else "would import"
    skipped = sum(result.skipped.values())
    lines = [f"{verb} {result.keys:,} of {result.keys + skipped:,} entries from {result.source} "
             f"into {result.target}: {result.names:,} model names with the bare ones, "
             f"{result.new:,} new, {result.replaced:,} priced before"]
    changed = len(result.changes)
    lines.append(f"prices in use that {'change' if result.written else 'would change'}: "
                 f"{changed:,}" + ("" if result.written or not changed else " (below)"))
    if result.dropped:
        lines.append(f"names of the last import it lacks: {len(result.dropped):,} "
                     f"({_first(result.dropped)})")
    if skipped:
        reasons = "; ".join(f"{n:,} {reason}" for reason, n in result.skipped.items())
        lines.append(f"skipped {skipped:,}: {reasons}")
    if not result.written:
        lines.append("nothing written (--dry-run)")
    return lines


def _first(names: list[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return shown if len(names) <= count else f"{shown}, ..."


def _changes_frame(changes: list[PriceChange]) -> pl.DataFrame:
    """One row per rate that changes: model, rate, before, after (USD per 1M tokens)."""
    rows = []
    for change in changes:
        before = _price_row(change.before)
        after = _price_row(change.after) if change.after else dict.fromkeys(before)
        for rate, old in before.items():
            new = after[rate]
            if old != new:
                rows.append({"model": change.model, "rate": rate, "before": _number(old),
                             "after": _number(new)})
    return pl.DataFrame(rows, schema={"model": pl.String(), "rate": pl.String(),
                                      "before": pl.Float64(), "after": pl.Float64()})


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _result_json(result: ImportResult) -> dict[str, Any]:
    def price(value: ModelPrice | None) -> dict[str, Any] | None:
        return None if value is None else {"priced_as": value.model, "origin": value.origin,
                                           **_price_row(value)}

    return {"source": str(result.source), "target": str(result.target),
            "written": result.written, "keys": result.keys, "names": result.names,
            "new": result.new, "replaced": result.replaced, "skipped": result.skipped,
            "dropped": result.dropped,
            "changes": [{"model": c.model, "before": price(c.before), "after": price(c.after)}
                        for c in result.changes]}
