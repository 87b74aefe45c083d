"""Importing LiteLLM's price list (`model_prices_and_context_window.json`, the one ccusage
and LiteLLM use) into a home, for `tally pricing import`.

LiteLLM's file maps a model key to USD per token: `input_cost_per_token`,
`output_cost_per_token`, `cache_read_input_token_cost`, `cache_creation_input_token_cost`
(the 5-minute cache write), `cache_creation_input_token_cost_above_1hr` (the 1-hour one),
and for a long-context tier the same keys ending `_above_200k_tokens` (or `_128k_`...).
They become tally's rates, USD per million tokens, saved as `<home>/pricing.json` in the
shipped table's format: `pipeline.pricing` puts them over the shipped table and under
config.toml's `[pricing]`.

Where LiteLLM gives no cache price, ccusage's meaning is kept: an Anthropic-style model
(a Claude, or a provider named anthropic) writes its cache at 1.25 x input and reads it at
0.1 x input; its 1-hour write is always 2 x input (ccusage #1221); other models read
and write their cache at the input rate (no discount or premium known), the 1-hour write
at the 5-minute one. A tier's missing rates are the base rates scaled as its input rate
is (Anthropic and Gemini double every prompt-side rate past 200k), its missing output
rate the base one. A tier applies to every token of a request whose prompt exceeds the
threshold, as the shipped table's `long_context` does; with several thresholds in one
entry, the lowest is kept.

Keys are kept usable under the names agents log: `anthropic/claude-sonnet-4-5`,
`vertex_ai/claude-sonnet-4-5@20250929`, `us.anthropic.claude-sonnet-4-5-20250929-v1:0`
are also priced under their bare name (`claude-sonnet-4-5`, `claude-sonnet-4-5@20250929`,
`claude-sonnet-4-5-20250929`). The bare name takes the un-prefixed key's price where the
file has one, else a first-party provider's (`anthropic/`, `openai/`, `gemini/`...), else
the first key's in the file, but a name the shipped table prices is not taken over by a
reseller's key alone (`openrouter/anthropic/claude-3-5-haiku`); every other key keeps its
own name (an alias of the bare name when its price is the same).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pipeline.config import Home
from pipeline.errors import PriceListError, PricingError, display_path, storage_error
from pipeline.pricing import (
    LongContext,
    ModelPrice,
    PriceTable,
    Rates,
    base_pricing,
    imported_pricing_path,
    load_pricing,
    merged_pricing,
    price_spec,
    read_imported_pricing,
    shipped_pricing,
)
from pipeline.stage import fsync_dir, write_atomic

LITELLM_FILE = "model_prices_and_context_window.json"
LITELLM_URL = ("https://raw.githubusercontent.com/BerriAI/litellm/main/"
               "model_prices_and_context_window.json")
MODES = frozenset({"chat", "completion", "responses"})
SAMPLE_SPEC = "sample_spec"
PER_MILLION = 1_000_000

# tally's rate name -> LiteLLM's key (USD per token)
RATE_KEYS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
}
_TIER_KEY = re.compile(
    r"^(?P<key>" + "|".join(map(re.escape, RATE_KEYS.values())) + r")_above_(?P<k>[0-9]+)k_tokens$")

# Skip reasons, as `ImportResult.skipped` counts them.
SKIP_SAMPLE = "the sample_spec entry"
SKIP_NO_PRICE = "no per-token input and output price"

# What a key may start with that is not part of the model's name: provider and region path
# segments (`vertex_ai/`, `bedrock/us-east-1/`, `openrouter/anthropic/`), Bedrock's
# `[region.]vendor.` prefix, and after a dated Bedrock id its version (`-v1:0`).
_PATH_PREFIX = re.compile(r"^(?:[^/]+/)+")
_BEDROCK_PREFIX = re.compile(
    r"^(?:(?:us|eu|apac|au|jp|ca|global|us-gov)\.)?"
    r"(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|openai|qwen|writer)\.")
_BEDROCK_VERSION = re.compile(r"(-[0-9]{8})-v[0-9]+(?::[0-9]+)?$")
FIRST_PARTY_PREFIXES = ("anthropic/", "openai/", "gemini/", "xai/", "mistral/", "deepseek/")

_READ_HINT = f"give the path of LiteLLM's {LITELLM_FILE} (download it from {LITELLM_URL})"
_SHAPE_HINT = (f"LiteLLM's {LITELLM_FILE} is one JSON object: model name -> "
               '{"input_cost_per_token": ..., "output_cost_per_token": ..., ...}')


@dataclass(frozen=True)
class PriceList:
    """A LiteLLM price list in tally's terms: models and aliases, and what was left out."""

    models: dict[str, ModelPrice]
    aliases: dict[str, str]
    keys: int  # the file's keys it prices
    skipped: dict[str, int]  # reason -> keys

    @property
    def names(self) -> list[str]:
        """Every name it prices: each key taken, and the bare names."""
        return sorted({*self.models, *self.aliases})


@dataclass(frozen=True)
class PriceChange:
    """A name whose price in use changes (`after` None: it would have no price)."""

    model: str
    before: ModelPrice
    after: ModelPrice | None


@dataclass(frozen=True)
class ImportResult:
    """What `import_price_list` did, or would do with `dry_run`."""

    source: Path
    target: Path
    written: bool
    names: int  # names priced by the import (keys taken, plus bare names)
    keys: int  # of the file's keys, those imported
    skipped: dict[str, int]  # reason -> keys
    new: int  # names tally had no price for
    replaced: int  # names priced before (shipped or an earlier import)
    dropped: list[str]  # names of the earlier import that this one lacks
    changes: list[PriceChange] = field(default_factory=list)  # prices in use that change


# ---------------------------------------------------------------- reading and converting


def read_price_list(path: Path) -> dict[str, Any]:
    """The JSON object of a LiteLLM price list file (PriceListError if unreadable)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise PriceListError("no such file", path=path, hint=_READ_HINT) from exc
    except IsADirectoryError as exc:
        raise PriceListError("is a directory, not a price list", path=path,
                             hint=_READ_HINT) from exc
    except OSError as exc:
        raise PriceListError(f"cannot read: {exc.strerror or exc}", path=path) from exc
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as exc:
        raise PriceListError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path,
                             line=exc.lineno, hint=_SHAPE_HINT) from exc
    except ValueError as exc:  # not UTF-8 (or -16/-32)
        raise PriceListError(f"not JSON text: {exc}", path=path, hint=_SHAPE_HINT) from exc
    if not isinstance(raw, dict):
        raise PriceListError(f"expected a JSON object of models, got {_kind(raw)}", path=path,
                             hint=_SHAPE_HINT)
    return raw


def convert_price_list(raw: Mapping[str, Any], path: Path,
                       priced: Collection[str] = ()) -> PriceList:
    """LiteLLM's entries as tally's prices (`path` names the file in errors).

    A bare name in `priced` (the shipped table's names) is taken over only by an
    un-prefixed or first-party key: a reseller's price (`openrouter/anthropic/...`) stays
    under its own key.
    """
    skipped: Counter[str] = Counter()
    groups: dict[str, list[tuple[str, ModelPrice]]] = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            raise PriceListError(f"expected an object of prices, got {_kind(entry)}",
                                 path=path, field=key, hint=_SHAPE_HINT)
        reason = skip_reason(key, entry)
        if reason is None:
            price = entry_price(key, entry, path)
            if price is None:
                reason = SKIP_NO_PRICE
            else:
                groups.setdefault(bare_name(key), []).append((key, price))
        if reason is not None:
            skipped[reason] += 1
    models: dict[str, ModelPrice] = {}
    aliases: dict[str, str] = {}
    for bare, keys in groups.items():
        chosen_key, chosen = min(keys, key=lambda item: _rank(item[0], bare))
        if bare in priced and _rank(chosen_key, bare) > 1:
            models.update(keys)
            continue
        models[bare] = _named(chosen, bare)
        for key, price in keys:
            if key == bare:
                continue
            if key == chosen_key or same_price(price, chosen):
                aliases[key] = bare
            else:
                models[key] = price
    return PriceList(models=dict(sorted(models.items())), aliases=dict(sorted(aliases.items())),
                     keys=sum(map(len, groups.values())), skipped=dict(skipped.most_common()))


def skip_reason(key: str, entry: Mapping[str, Any]) -> str | None:
    """Why an entry is not imported for its mode (None: its prices are read)."""
    if key == SAMPLE_SPEC:
        return SKIP_SAMPLE
    mode = entry.get("mode")
    if mode is not None and mode not in MODES:
        return f"mode {mode}"
    return None


def entry_price(key: str, entry: Mapping[str, Any], path: Path) -> ModelPrice | None:
    """One entry's price in USD per million tokens (None without a per-token input and
    output price); PriceListError naming the key for a price that is not a number >= 0."""
    def rate(name: str) -> float | None:
        value = entry.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PriceListError(f"{name} is {value!r}, not a number", path=path, field=key,
                                 hint="a price is a number of USD per token, such as 3e-06")
        if not math.isfinite(value) or value < 0:
            raise PriceListError(f"{name} is {value!r}; a price must be a number >= 0",
                                 path=path, field=key,
                                 hint="fix the entry or delete it, then import again")
        return float(value) * PER_MILLION

    base = {name: rate(litellm) for name, litellm in RATE_KEYS.items()}
    tiers: dict[int, dict[str, float | None]] = {}
    for name in entry:
        if (match := _TIER_KEY.match(name)) is not None:
            tier = tiers.setdefault(int(match["k"]) * 1000, {})
            tier[_rate_name(match["key"])] = rate(name)
    input_rate, output_rate = base["input"], base["output"]
    if input_rate is None or output_rate is None:
        return None
    provider = str(entry.get("litellm_provider") or entry.get("provider") or "")
    anthropic = "anthropic" in provider.lower() or "claude" in bare_name(key).lower()
    rates = _base_rates(base, input_rate, output_rate, anthropic)
    long_context = None
    if tiers:
        threshold = min(tiers)
        long_context = LongContext(threshold, _tier_rates(tiers[threshold], rates))
    return ModelPrice(model=key, rates=rates, long_context=long_context, provider=provider,
                      origin="imported")


def _base_rates(given: Mapping[str, float | None], input_rate: float, output_rate: float,
                anthropic: bool) -> Rates:
    cache_read = given["cache_read"]
    cache_write = given["cache_write"]
    if cache_read is None:
        cache_read = input_rate * 0.1 if anthropic else input_rate
    if cache_write is None:
        cache_write = input_rate * 1.25 if anthropic else input_rate
    # Anthropic's 1-hour write is 2 x input; LiteLLM's `..._above_1hr` is wrong for older
    # Claudes (6e-06 for claude-3-opus), so ccusage (#1221), and tally, ignore it there.
    cache_write_1h = given["cache_write_1h"]
    if anthropic:
        cache_write_1h = input_rate * 2
    elif cache_write_1h is None:
        cache_write_1h = cache_write
    return _rounded(Rates(input=input_rate, output=output_rate, cache_read=cache_read,
                          cache_write=cache_write, cache_write_1h=cache_write_1h))


def _tier_rates(given: Mapping[str, float | None], base: Rates) -> Rates:
    input_rate = given.get("input")
    if input_rate is None:
        input_rate = base.input
    scale = input_rate / base.input if base.input > 0 else 1.0

    def tier(name: str, fallback: float) -> float:
        value = given.get(name)
        return fallback if value is None else value

    return _rounded(Rates(input=input_rate, output=tier("output", base.output),
                          cache_read=tier("cache_read", base.cache_read * scale),
                          cache_write=tier("cache_write", base.cache_write * scale),
                          cache_write_1h=tier("cache_write_1h", base.cache_write_1h * scale)))


def _rounded(rates: Rates) -> Rates:
    # 3e-06 * 1e6 is 2.9999999999999996: ten significant digits keep every real price.
    return Rates(**{name: float(f"{value:.10g}") for name, value in rates.as_dict().items()})


def _rate_name(litellm_key: str) -> str:
    return next(name for name, key in RATE_KEYS.items() if key == litellm_key)


def bare_name(key: str) -> str:
    """A key without its provider, region and Bedrock parts: the name agents log."""
    name = key
    while True:
        stripped = _BEDROCK_PREFIX.sub("", _PATH_PREFIX.sub("", name))
        if stripped != name:
            stripped = _BEDROCK_VERSION.sub(r"\1", stripped)
        if stripped == name or not stripped:
            return name
        name = stripped


def _rank(key: str, bare: str) -> int:
    if key == bare:
        return 0
    return 1 if key.startswith(FIRST_PARTY_PREFIXES) else 2


def _named(price: ModelPrice, name: str) -> ModelPrice:
    return ModelPrice(model=name, rates=price.rates, long_context=price.long_context,
                      provider=price.provider, origin=price.origin)


def same_price(a: ModelPrice | None, b: ModelPrice | None) -> bool:
    """Whether two prices bill every request alike (the model names aside)."""
    if a is None or b is None:
        return a is b
    return a.rates == b.rates and a.long_context == b.long_context


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


# ---------------------------------------------------------------- importing into a home


def import_price_list(home: Home, source: Path, *, dry_run: bool = False,
                      today: date | None = None) -> ImportResult:
    """Read a LiteLLM price list and save it as the home's imported prices (replacing an
    earlier import whole); with `dry_run`, only say what would change."""
    converted = convert_price_list(read_price_list(source), source,
                                   frozenset(shipped_pricing().names))
    if not converted.models:
        skipped = ", ".join(f"{n} {reason}" for reason, n in converted.skipped.items())
        raise PriceListError(f"no model with per-token prices (skipped: {skipped or 'none'})",
                             path=source, hint=_READ_HINT)
    day = today or datetime.now(UTC).date()
    table = PriceTable(models=converted.models, aliases=converted.aliases,
                       taken=day.isoformat(), source=_source_text(source, day))
    target = imported_pricing_path(home)
    result = _compare(home, table, converted, source, target, written=not dry_run)
    if not dry_run:
        save_price_table(target, table)
    return result


def _compare(home: Home, table: PriceTable, converted: PriceList, source: Path,
            target: Path, *, written: bool) -> ImportResult:
    """How the prices in use change when `table` replaces the home's imported prices."""
    try:
        earlier: PriceTable | None = read_imported_pricing(target) if target.exists() else None
        old_base = base_pricing(target)
    except PricingError:  # a damaged earlier import: this one replaces it
        earlier, old_base = None, shipped_pricing()
    before = load_pricing(home.pricing, home.config_path, base=old_base)
    after = load_pricing(home.pricing, home.config_path,
                         base=merged_pricing(shipped_pricing(), table))
    names = converted.names
    replaced = sum(1 for name in names if old_base.lookup(name) is not None)
    dropped = sorted(set(earlier.names) - set(names)) if earlier else []
    changes = []
    for name in sorted({*names, *dropped}):
        old = before.lookup(name)
        new = after.lookup(name)
        if old is not None and not same_price(old, new):
            changes.append(PriceChange(name, old, new))
    return ImportResult(source=source, target=target, written=written, names=len(names),
                        keys=converted.keys, skipped=converted.skipped,
                        new=len(names) - replaced, replaced=replaced, dropped=dropped,
                        changes=changes)


def save_price_table(path: Path, table: PriceTable) -> None:
    """Write a table as pricing.json (temp file, fsync, rename): what `price_table` reads."""
    body = {"taken": table.taken, "source": table.source, "unit": "USD per million tokens",
            "models": {name: price_spec(price) for name, price in table.models.items()},
            "aliases": table.aliases}
    text = json.dumps(body, indent=1, ensure_ascii=False) + "\n"
    try:
        write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))
        fsync_dir(path.parent)
    except OSError as exc:
        raise storage_error(exc, "save the imported prices", path) from exc


def _source_text(source: Path, day: date) -> str:
    return (f"LiteLLM's {LITELLM_FILE}, imported from {display_path(source.absolute())} by "
            f"`tally pricing import` on {day.isoformat()}; USD per token as LiteLLM lists "
            "them (standard tier): check a figure against the provider's pricing page "
            "before relying on it")
