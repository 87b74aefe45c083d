"""Model prices: the table shipped in pricing.json, the prices imported into the home,
config.toml overrides, name matching, cost.

Rates are USD per million tokens. The table in use is the shipped one, then the home's
`pricing.json` (written by `tally pricing import`) on top, then config.toml's `[pricing]`
on top of both. A model name is matched exactly, then with a provider prefix
(`anthropic/`, `models/`) and/or a dated suffix (`-20250929`, `-2024-08-06`, `-0613`,
`@20250929`, `-latest`) removed. A model that matches nothing has no price: its cost is
null and it is counted as unpriced, never as $0.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Home
from pipeline.errors import ConfigError, PricingError, display_path
from pipeline.settings import LONG_CONTEXT_PREFIX, PRICE_KEYS, PRICE_RATE_NAMES

PRICING_FILE = Path(__file__).parent / "pricing.json"
HOME_PRICING_FILE = "pricing.json"  # in the home: the prices `tally pricing import` saved
RATE_NAMES = PRICE_RATE_NAMES  # config.py checks config.toml's keys against these
LONG_PREFIX = LONG_CONTEXT_PREFIX
OVERRIDE_KEYS = frozenset(PRICE_KEYS)
PER_TOKEN = 1e-6  # rates are per million tokens

_PROVIDER_PREFIX = r"^[A-Za-z0-9_.-]+/"
_DATED_SUFFIX = r"(@.+|-[0-9]{8}|-[0-9]{4}-[0-9]{2}-[0-9]{2}|-[0-9]{4}|-latest)$"


@dataclass(frozen=True)
class Rates:
    """USD per million tokens of each bucket."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    cache_write_1h: float

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Rates:
        """Rates from a mapping with every rate name."""
        return cls(**{name: float(values[name]) for name in RATE_NAMES})

    def as_dict(self) -> dict[str, float]:
        """The rates keyed by name."""
        return {name: getattr(self, name) for name in RATE_NAMES}


@dataclass(frozen=True)
class LongContext:
    """A tier applying to every token of a request whose prompt exceeds `threshold` tokens."""

    threshold: int
    rates: Rates


@dataclass(frozen=True)
class ModelPrice:
    """The price of one model; `origin` says where it comes from: "shipped" with tally,
    "imported" into the home, or "config" (config.toml)."""

    model: str
    rates: Rates
    long_context: LongContext | None = None
    provider: str = ""
    origin: str = "shipped"


@dataclass(frozen=True)
class PriceTable:
    """Every priced model, the aliases that point at them, and where the prices came from."""

    models: dict[str, ModelPrice]
    aliases: dict[str, str]
    taken: str
    source: str

    @property
    def names(self) -> list[str]:
        """Every name that matches exactly: models and aliases."""
        return sorted({*self.models, *self.aliases})

    def lookup(self, name: str) -> ModelPrice | None:
        """The price of a model name after exact, prefix and dated-suffix matching."""
        for candidate in candidate_names(name):
            target = self.aliases.get(candidate, candidate)
            if target in self.models:
                return self.models[target]
        return None

    @property
    def thresholds(self) -> list[int]:
        """The distinct long-context thresholds, ascending."""
        return sorted({p.long_context.threshold for p in self.models.values() if p.long_context})

    def frame(self) -> pl.DataFrame:
        """One row per matchable name: rates, and the long-context tier (nulls if none).

        `long_tier` is the 1-based position of the model's threshold in `thresholds`: a
        request whose `long_context_tier` reaches it is billed at the long-context rates.
        """
        return self._frame

    def model_prices(self, models: Iterable[str | None]) -> pl.DataFrame:
        """`frame()`'s rates for each of these model names, keyed by `model` (none for an
        unpriced one); each name is matched once per table (a tailer prices every batch)."""
        known = self._matched
        for model in models:
            if model is not None and model not in known:
                known[model] = next((c for c in candidate_names(model) if c in self._name_set),
                                    None)
        wanted = [m for m in dict.fromkeys(models) if m is not None and known[m] is not None]
        matched = pl.DataFrame({"model": wanted, "price_name": [known[m] for m in wanted]},
                               schema={"model": pl.String, "price_name": pl.String})
        return matched.join(self.frame(), on="price_name", how="left").drop("price_name")

    @functools.cached_property
    def _matched(self) -> dict[str, str | None]:
        return {}

    @functools.cached_property
    def _name_set(self) -> frozenset[str]:
        return frozenset(self.names)

    @functools.cached_property
    def _frame(self) -> pl.DataFrame:
        # Built once: a following tailer prices every batch with the same table.
        # Column by column: an imported price list makes thousands of names.
        position = {threshold: n for n, threshold in enumerate(self.thresholds, 1)}
        names = self.names
        prices = [self.models[self.aliases.get(name, name)] for name in names]
        tiers = [price.long_context for price in prices]
        columns: dict[str, list[Any]] = {
            "price_name": names, "priced_as": [price.model for price in prices],
            **{rate: [getattr(price.rates, rate) for price in prices] for rate in RATE_NAMES},
            "long_tier": [position[tier.threshold] if tier else None for tier in tiers],
            **{f"long_{rate}": [getattr(tier.rates, rate) if tier else None for tier in tiers]
               for rate in RATE_NAMES}}
        return pl.DataFrame(columns, schema=_FRAME_SCHEMA)


_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "price_name": pl.String(), "priced_as": pl.String(),
    **{name: pl.Float64() for name in RATE_NAMES},
    "long_tier": pl.Int64(),
    **{f"long_{name}": pl.Float64() for name in RATE_NAMES},
}


def candidate_names(name: str) -> Iterator[str]:
    """The names tried for a model, most specific first."""
    bare = re.sub(_PROVIDER_PREFIX, "", name)
    yield name
    yield bare
    yield re.sub(_DATED_SUFFIX, "", name)
    yield re.sub(_DATED_SUFFIX, "", bare)


def _candidate_exprs(model: pl.Expr) -> list[pl.Expr]:
    bare = model.str.replace(_PROVIDER_PREFIX, "")
    return [model, bare, model.str.replace(_DATED_SUFFIX, ""),
            bare.str.replace(_DATED_SUFFIX, "")]


def price_name(model: pl.Expr, names: list[str]) -> pl.Expr:
    """The pricing-table name a model column matches (null when none), as `lookup` does."""
    return pl.coalesce([pl.when(c.is_in(names)).then(c) for c in _candidate_exprs(model)])


def matches_model(model: pl.Expr, wanted: list[str]) -> pl.Expr:
    """Whether a model column names one of `wanted`, exactly or without prefix/dated suffix."""
    return pl.any_horizontal(c.is_in(wanted) for c in _candidate_exprs(model)).fill_null(False)


def long_context_tier(thresholds: list[int]) -> pl.Expr:
    """How many of the thresholds a row's prompt (input + cache read + cache write) exceeds."""
    prompt = (pl.col("input_tokens") + pl.col("cache_read_tokens")
              + pl.col("cache_write_tokens"))
    if not thresholds:
        return pl.lit(0, pl.Int64)
    return pl.sum_horizontal(*((prompt > t).cast(pl.Int64) for t in thresholds))


def attach_prices(rows: pl.LazyFrame, table: PriceTable,
                  prices: pl.DataFrame | None = None) -> pl.LazyFrame:
    """Add the rate columns of each row's model (nulls for an unpriced model); `prices`,
    the `model_prices` of the rows' models, spares matching their names again."""
    if prices is not None:
        return rows.join(prices.lazy(), on="model", how="left")
    # Name matching runs once per distinct model, not once per row.
    models = (rows.select("model").unique()
              .with_columns(price_name(pl.col("model"), table.names).alias("price_name"))
              .join(table.frame().lazy(), on="price_name", how="left")
              .drop("price_name"))
    return rows.join(models, on="model", how="left")


def computed_cost() -> pl.Expr:
    """Cost in USD of token buckets with attached rates and a `_tier`; null when unpriced.

    `cache_write_1h_tokens` must already be capped at `cache_write_tokens` per request.
    """
    long = pl.col("long_tier").is_not_null() & (pl.col("_tier") >= pl.col("long_tier"))

    def rate(name: str) -> pl.Expr:
        return pl.when(long).then(pl.col(f"long_{name}")).otherwise(pl.col(name))

    five_minute = pl.col("cache_write_tokens") - pl.col("cache_write_1h_tokens")
    # Counters we cannot classify (task_progress extras such as embedding_generation)
    # are priced as input: they are request-side tokens for the models that report them.
    usd = (
        (pl.col("input_tokens") + pl.col("other_tokens")) * rate("input")
        + pl.col("output_tokens") * rate("output")
        + pl.col("cache_read_tokens") * rate("cache_read")
        + five_minute * rate("cache_write")
        + pl.col("cache_write_1h_tokens") * rate("cache_write_1h")
    )
    return usd * PER_TOKEN


def row_costs(rows: pl.LazyFrame, table: PriceTable,
              prices: pl.DataFrame | None = None) -> pl.LazyFrame:
    """Add `computed_cost_usd` to rows of token buckets, each row one request (`prices`:
    see `attach_prices`)."""
    capped = rows.with_columns(
        # 1-hour writes are part of cache_write; never price more of them than were written.
        pl.min_horizontal("cache_write_1h_tokens", "cache_write_tokens")
        .alias("cache_write_1h_tokens"),
        _tier=long_context_tier(table.thresholds))
    priced = attach_prices(capped, table, prices).with_columns(computed_cost_usd=computed_cost())
    return priced.select(*rows.collect_schema().names(), "computed_cost_usd")


# ---------------------------------------------------------------- loading


def pricing_for(home: Home) -> PriceTable:
    """The shipped table, the prices imported into the home on top, then config.toml's."""
    return load_pricing(home.pricing, config_path=home.config_path,
                        base=base_pricing(imported_pricing_path(home)))


def imported_pricing_path(home: Home) -> Path:
    """Where `tally pricing import` saves prices: beside config.toml, which `tally rebuild`
    leaves in place (it replaces state/)."""
    return home.root / HOME_PRICING_FILE


def load_pricing(overrides: Mapping[str, Mapping[str, float]] | None = None,
                 config_path: Path | None = None,
                 base: PriceTable | None = None) -> PriceTable:
    """`base` (the shipped table by default), then `overrides` (model -> rate name -> USD per
    million) on top."""
    table = shipped_pricing() if base is None else base
    for model, values in (overrides or {}).items():
        price = _override(table, model, values, config_path or Path("config.toml"))
        table = replace(table, models={**table.models, model: price},
                        aliases={k: v for k, v in table.aliases.items() if k != model})
    return table


@functools.cache
def shipped_pricing(path: Path = PRICING_FILE) -> PriceTable:
    """The pricing table that ships with the package."""
    try:
        return price_table(json.loads(path.read_text(encoding="utf-8")), "shipped")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PricingError(f"{path}: unreadable pricing table ({exc})",
                           hint="reinstall tally; the file ships with the package") from exc


def base_pricing(imported: Path) -> PriceTable:
    """The shipped table with the prices saved in `imported` on top (the shipped table
    alone when there is no such file)."""
    try:
        stat = imported.stat()
    except FileNotFoundError:
        return shipped_pricing()
    except OSError as exc:
        raise PricingError(f"{display_path(imported)}: cannot read the imported prices "
                           f"({exc.strerror or exc})", hint=_IMPORTED_HINT) from exc
    return _shipped_and_imported(imported, stat.st_mtime_ns, stat.st_size, stat.st_ino)


_IMPORTED_HINT = ("import a price list again (`tally pricing import FILE`), or delete the "
                  "file to use the shipped prices")


@functools.lru_cache(maxsize=8)
def _shipped_and_imported(path: Path, mtime_ns: int, size: int, ino: int) -> PriceTable:
    # Keyed by the file's identity and time: a tailer or a run of reports reads it once,
    # and a new import (a new file renamed into place) is read anew.
    return merged_pricing(shipped_pricing(), read_imported_pricing(path))


def read_imported_pricing(path: Path) -> PriceTable:
    """The prices `tally pricing import` saved at `path` (PricingError if damaged)."""
    try:
        return price_table(json.loads(path.read_text(encoding="utf-8")), "imported")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PricingError(f"{display_path(path)}: unreadable imported prices ({exc})",
                           hint=_IMPORTED_HINT) from exc


def merged_pricing(base: PriceTable, top: PriceTable) -> PriceTable:
    """`top`'s models and aliases over `base`'s: every name `top` prices is priced by it."""
    aliases = {name: target for name, target in base.aliases.items() if name not in top.models}
    return PriceTable(models={**base.models, **top.models}, aliases={**aliases, **top.aliases},
                      taken=top.taken,
                      source=f"{top.source}; other models: the shipped table (taken "
                             f"{base.taken})")


def price_table(raw: Mapping[str, Any], origin: str) -> PriceTable:
    """A table from the JSON of pricing.json (`taken`, `source`, `models`, `aliases`)."""
    models = {str(name): _table_price(str(name), spec, origin)
              for name, spec in raw["models"].items()}
    aliases = {str(name): str(target) for name, target in raw.get("aliases", {}).items()}
    missing = sorted(name for name, target in aliases.items() if target not in models)
    if missing:
        raise ValueError(f"aliases of no model: {', '.join(missing)}")
    return PriceTable(models=models, aliases=aliases, taken=str(raw["taken"]),
                      source=str(raw["source"]))


def price_spec(price: ModelPrice) -> dict[str, Any]:
    """A model's entry in pricing.json's `models` (what `price_table` reads back)."""
    spec: dict[str, Any] = {"provider": price.provider, **price.rates.as_dict()}
    if price.long_context is not None:
        spec["long_context"] = {"threshold": price.long_context.threshold,
                                **price.long_context.rates.as_dict()}
    return spec


def _table_price(name: str, spec: Mapping[str, Any], origin: str) -> ModelPrice:
    tier = spec.get("long_context")
    long_context = (LongContext(int(tier["threshold"]), _checked(Rates.from_mapping(tier)))
                    if tier else None)
    return ModelPrice(model=name, rates=_checked(Rates.from_mapping(spec)),
                      long_context=long_context, provider=str(spec.get("provider", "")),
                      origin=origin)


def _checked(rates: Rates) -> Rates:
    if not all(math.isfinite(v) and v >= 0 for v in rates.as_dict().values()):
        raise ValueError(f"a rate that is negative or not finite: {rates.as_dict()}")
    return rates


def _override(table: PriceTable, model: str, values: Mapping[str, float],
              config_path: Path) -> ModelPrice:
    """A config.toml price: the matched shipped price with the given keys replaced."""
    field = f"pricing.{model}"
    unknown = sorted(set(values) - OVERRIDE_KEYS)
    if unknown:
        raise ConfigError(f"unknown rate name(s) {', '.join(unknown)}", path=config_path,
                          field=field, hint="known: " + ", ".join(sorted(OVERRIDE_KEYS)))
    if any(value < 0 for value in values.values()):
        raise ConfigError("rates must be >= 0", path=config_path, field=field)
    base = table.lookup(model)
    if base is None and not {"input", "output"} <= set(values):
        raise ConfigError("a model tally does not know needs at least input and output",
                          path=config_path, field=field,
                          hint="cache_read and cache_write default to input, "
                               "cache_write_1h to cache_write")
    rates = _merged_rates(base.rates if base else None, values, "")
    tier = _merged_tier(base, rates, values, config_path, field)
    return ModelPrice(model=model, rates=rates, long_context=tier,
                      provider=base.provider if base else "", origin="config")


def _merged_rates(base: Rates | None, values: Mapping[str, float], prefix: str) -> Rates:
    merged = base.as_dict() if base else {}
    merged.update({name: values[prefix + name] for name in RATE_NAMES if prefix + name in values})
    merged.setdefault("cache_read", merged["input"])
    merged.setdefault("cache_write", merged["input"])
    merged.setdefault("cache_write_1h", merged["cache_write"])
    return Rates.from_mapping(merged)


def _merged_tier(base: ModelPrice | None, rates: Rates, values: Mapping[str, float],
                 config_path: Path, field: str) -> LongContext | None:
    given = {k for k in values if k.startswith(LONG_PREFIX)}
    base_tier = base.long_context if base else None
    if not given:
        return base_tier
    threshold = values.get(f"{LONG_PREFIX}threshold",
                           base_tier.threshold if base_tier else None)
    if threshold is None:
        raise ConfigError("a long-context tier needs long_context_threshold",
                          path=config_path, field=field)
    tier_base = base_tier.rates if base_tier else rates
    return LongContext(int(threshold), _merged_rates(tier_base, values, LONG_PREFIX))
