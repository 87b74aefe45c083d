"""pipeline.pricing: the shipped table, name matching, config.toml overrides, row costs."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from pipeline.config import load_home
from pipeline.errors import ConfigError
from pipeline.pricing import (
    PRICING_FILE,
    RATE_NAMES,
    attach_prices,
    load_pricing,
    matches_model,
    price_name,
    pricing_for,
    row_costs,
    shipped_pricing,
)

REQUIRED_MODELS = [
    # Anthropic 4.5, 4.x and 3.x
    "claude-opus-4-5", "claude-opus-4-1", "claude-opus-4", "claude-sonnet-4-5",
    "claude-sonnet-4", "claude-haiku-4-5", "claude-3-7-sonnet", "claude-3-5-sonnet",
    "claude-3-5-haiku", "claude-3-opus", "claude-3-haiku",
    # OpenAI
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini",
    "gpt-4", "o1", "o3", "o3-mini", "o4-mini", "text-embedding-ada-002",
    "text-embedding-3-small", "text-embedding-3-large",
    # Google
    "gemini-2.5-pro", "gemini-2.5-flash",
]
SEED_MODELS = ["gpt-4", "claude-3", "text-embedding-ada-002"]


# ---------------------------------------------------------------- the shipped table


def test_pricing_file_is_package_data() -> None:
    assert PRICING_FILE.parent.name == "pipeline"
    raw = json.loads(PRICING_FILE.read_text(encoding="utf-8"))
    assert date.fromisoformat(raw["taken"])
    assert "check" in raw["source"].lower()  # it says the figures must be verified


@pytest.mark.parametrize("model", REQUIRED_MODELS + SEED_MODELS)
def test_shipped_table_prices_current_and_seed_models(model: str) -> None:
    assert shipped_pricing().lookup(model) is not None, model


def test_every_shipped_rate_is_complete_and_sane() -> None:
    table = shipped_pricing()
    for name, price in table.models.items():
        rates = price.rates.as_dict()
        assert set(rates) == set(RATE_NAMES)
        assert all(v >= 0 for v in rates.values()), name
        assert rates["cache_read"] <= rates["input"], name
        assert rates["cache_write_1h"] >= rates["cache_write"], name
        assert price.provider in {"anthropic", "openai", "google"}, name
        if price.long_context:
            assert price.long_context.rates.input > rates["input"], name
    for alias, target in table.aliases.items():
        assert target in table.models, alias


def test_anthropic_cache_multipliers() -> None:
    for name in ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"):
        rates = shipped_pricing().models[name].rates
        assert rates.cache_write == pytest.approx(rates.input * 1.25)
        assert rates.cache_write_1h == pytest.approx(rates.input * 2)
        assert rates.cache_read == pytest.approx(rates.input * 0.1)


def test_long_context_tiers_where_providers_have_them() -> None:
    models = shipped_pricing().models
    gemini = models["gemini-2.5-pro"].long_context
    assert gemini is not None and gemini.threshold == 200_000
    sonnet = models["claude-sonnet-4-5"].long_context
    assert sonnet is not None and sonnet.rates.input == 6.0
    assert models["gemini-2.5-flash"].long_context is None


# ---------------------------------------------------------------- name matching

MATCHES = {
    "claude-sonnet-4-5": "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
    "claude-sonnet-4-5@20250929": "claude-sonnet-4-5",
    "anthropic/claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
    "claude-3-5-haiku-latest": "claude-3-5-haiku",
    "claude-opus-4-20250514": "claude-opus-4",
    "claude-opus-4-0": "claude-opus-4",
    "gpt-4o-2024-08-06": "gpt-4o",
    "gpt-4o-2024-05-13": "gpt-4o-2024-05-13",  # an exact dated entry beats its alias
    "gpt-4-0613": "gpt-4",
    "models/gemini-2.5-pro": "gemini-2.5-pro",
    "claude-3": "claude-3-sonnet",
}


@pytest.mark.parametrize(("name", "expected"), MATCHES.items())
def test_lookup_exact_then_dated_suffix(name: str, expected: str) -> None:
    price = shipped_pricing().lookup(name)
    assert price is not None and price.model == expected


@pytest.mark.parametrize("name", ["local-llama-3-8b", "claude", "gpt-6", "", "gpt-4o-mini-x"])
def test_unknown_models_have_no_price(name: str) -> None:
    assert shipped_pricing().lookup(name) is None


def test_polars_matching_agrees_with_lookup() -> None:
    table = shipped_pricing()
    names = [*MATCHES, "local-llama-3-8b", None]
    frame = pl.DataFrame({"model": names}, schema={"model": pl.String}).with_columns(
        name=price_name(pl.col("model"), table.names))
    for model, matched in frame.iter_rows():
        price = table.lookup(model) if model is not None else None
        expected = None if price is None else table.aliases.get(matched, matched)
        assert (price.model if price else None) == expected, model


def test_matches_model_accepts_the_undated_name() -> None:
    frame = pl.DataFrame({"model": ["claude-sonnet-4-5-20250929", "gpt-5", None]})
    hits = frame.select(matches_model(pl.col("model"), ["claude-sonnet-4-5"]))
    assert hits.to_series().to_list() == [True, False, False]


# ---------------------------------------------------------------- overrides


def test_override_replaces_only_the_given_rates() -> None:
    table = load_pricing({"claude-sonnet-4-5": {"input": 2.0}})
    price = table.models["claude-sonnet-4-5"]
    assert price.rates.input == 2.0 and price.rates.output == 15.0 and price.origin == "config"
    assert price.long_context is not None  # the shipped tier stays


def test_override_of_a_dated_name_starts_from_the_matched_model() -> None:
    table = load_pricing({"claude-sonnet-4-5-20250929": {"output": 10.0}})
    dated = table.lookup("claude-sonnet-4-5-20250929")
    assert dated is not None and dated.rates.output == 10.0 and dated.rates.input == 3.0
    undated = table.lookup("claude-sonnet-4-5")
    assert undated is not None and undated.rates.output == 15.0


def test_new_model_defaults_cache_rates_to_input() -> None:
    price = load_pricing({"local-llama-3-8b": {"input": 0.1, "output": 0.2}}).models[
        "local-llama-3-8b"]
    assert price.rates.as_dict() == {"input": 0.1, "output": 0.2, "cache_read": 0.1,
                                     "cache_write": 0.1, "cache_write_1h": 0.1}


def test_override_can_add_a_long_context_tier() -> None:
    price = load_pricing({"my-model": {
        "input": 1.0, "output": 2.0, "long_context_threshold": 1000, "long_context_input": 3.0,
    }}).models["my-model"]
    assert price.long_context is not None
    assert price.long_context.threshold == 1000
    assert price.long_context.rates.input == 3.0 and price.long_context.rates.output == 2.0


@pytest.mark.parametrize(("values", "message"), [
    ({"input": 1.0}, "at least input and output"),
    ({"input": 1.0, "output": 2.0, "cache_reed": 0.1}, "unknown rate name"),
    ({"input": -1.0, "output": 2.0}, ">= 0"),
    ({"input": 1.0, "output": 2.0, "long_context_input": 2.0}, "long_context_threshold"),
])
def test_bad_overrides_are_config_errors(values: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_pricing({"my-model": values}, config_path=Path("/h/config.toml"))
    assert caught.value.field == "pricing.my-model"


def test_pricing_for_reads_config_toml(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[pricing."local-llama-3-8b"]\ninput = 0.05\noutput = 0.1\n', encoding="utf-8")
    table = pricing_for(load_home(tmp_path))
    assert table.lookup("local-llama-3-8b") is not None
    assert table.lookup("gpt-5") is not None


# ---------------------------------------------------------------- row costs


def _cost(model: str | None, **tokens: int) -> float | None:
    columns: dict[str, Any] = {
        "model": [model], **{name: [tokens.get(name, 0)] for name in (
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "cache_write_1h_tokens", "other_tokens")}}
    rows = pl.LazyFrame(columns, schema_overrides={"model": pl.String})
    value = row_costs(rows, shipped_pricing()).select("computed_cost_usd").collect().item()
    return None if value is None else float(value)


def test_cost_of_each_bucket() -> None:
    cost = _cost("claude-sonnet-4-5", input_tokens=10_000, output_tokens=10_000,
                 cache_read_tokens=10_000, cache_write_tokens=10_000)
    assert cost == pytest.approx(10_000 * (3.0 + 15.0 + 0.3 + 3.75) / 1e6)


def test_one_hour_cache_writes_are_priced_at_the_one_hour_rate() -> None:
    cost = _cost("claude-sonnet-4-5", cache_write_tokens=1_000, cache_write_1h_tokens=400)
    assert cost == pytest.approx((600 * 3.75 + 400 * 6.0) / 1e6)


def test_one_hour_writes_beyond_the_writes_are_capped() -> None:
    assert _cost("claude-sonnet-4-5", cache_write_tokens=100,
                 cache_write_1h_tokens=500) == pytest.approx(100 * 6.0 / 1e6)


def test_long_context_rates_apply_above_the_threshold() -> None:
    under = _cost("gemini-2.5-pro", input_tokens=200_000, output_tokens=1_000)
    over = _cost("gemini-2.5-pro", input_tokens=150_000, cache_read_tokens=50_001,
                 output_tokens=1_000)
    assert under == pytest.approx((200_000 * 1.25 + 1_000 * 10.0) / 1e6)
    assert over == pytest.approx((150_000 * 2.5 + 50_001 * 0.25 + 1_000 * 15.0) / 1e6)


def test_other_tokens_are_priced_as_input() -> None:
    assert _cost("text-embedding-ada-002", other_tokens=1_000_000) == pytest.approx(0.1)


def test_unpriced_model_costs_null_not_zero() -> None:
    assert _cost("local-llama-3-8b", input_tokens=10) is None
    assert _cost(None, input_tokens=10) is None


def test_dated_model_is_priced_as_its_alias() -> None:
    assert _cost("claude-sonnet-4-5-20250929", output_tokens=1_000_000) == pytest.approx(15.0)


@given(st.lists(st.one_of(st.none(), st.sampled_from([
    "claude-sonnet-4-5", "anthropic/claude-sonnet-4-5-20250929", "claude-opus-4-5@20251101",
    "gpt-5", "openai/gpt-5-latest", "gemini-2.5-pro", "no-such-model", "x/y/z", ""])),
    min_size=1, max_size=8))
def test_model_prices_attach_what_name_matching_attaches(models: list[str | None]) -> None:
    """The per-table cache a tailer prices batches with gives the rates the expression
    matching gives, name by name (unpriced and null models included)."""
    table = shipped_pricing()
    rows = pl.LazyFrame({"model": models}, schema={"model": pl.String})
    matched = attach_prices(rows, table).collect()
    cached = attach_prices(rows, table, table.model_prices(models)).collect()
    assert_frame_equal(matched, cached, check_row_order=False)
