"""pipeline.price_list: LiteLLM's price list converted to tally's rates, its names kept
usable, bad files refused, and the import saved where pricing_for reads it."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_home
from pipeline.errors import PriceListError, PricingError
from pipeline.price_list import (
    SKIP_NO_PRICE,
    SKIP_SAMPLE,
    bare_name,
    convert_price_list,
    import_price_list,
    read_price_list,
)
from pipeline.pricing import (
    Rates,
    imported_pricing_path,
    load_pricing,
    merged_pricing,
    price_spec,
    price_table,
    pricing_for,
    shipped_pricing,
)
from tests.conftest import make_home

SOURCE = Path("/prices/model_prices_and_context_window.json")
SAMPLE_SPEC = {
    "input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "litellm_provider":
    "one of https://docs.litellm.ai/docs/providers", "mode": "one of: chat, embedding, ...",
}


def entry(input_: float, output: float, **fields: Any) -> dict[str, Any]:
    """A LiteLLM entry: USD per token, chat mode unless `fields` say otherwise."""
    return {"input_cost_per_token": input_, "output_cost_per_token": output, "mode": "chat",
            **fields}


def sonnet(**fields: Any) -> dict[str, Any]:
    """Claude Sonnet 4.5 as LiteLLM lists it, with its 1M-context tier."""
    return entry(3e-06, 1.5e-05, litellm_provider="anthropic",
                 cache_read_input_token_cost=3e-07, cache_creation_input_token_cost=3.75e-06,
                 cache_creation_input_token_cost_above_1hr=6e-06,
                 input_cost_per_token_above_200k_tokens=6e-06,
                 output_cost_per_token_above_200k_tokens=2.25e-05,
                 cache_read_input_token_cost_above_200k_tokens=6e-07,
                 cache_creation_input_token_cost_above_200k_tokens=7.5e-06, **fields)


def convert(raw: dict[str, Any], priced: tuple[str, ...] = ()) -> Any:
    return convert_price_list(raw, SOURCE, priced)


def rates(**values: float) -> Rates:
    return Rates(**values)


# ---------------------------------------------------------------- conversion


def test_rates_become_usd_per_million_without_float_noise() -> None:
    price = convert({"claude-sonnet-4-5-20250929": sonnet()}).models[
        "claude-sonnet-4-5-20250929"]
    assert price.rates == rates(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75,
                                cache_write_1h=6.0)
    assert price.provider == "anthropic" and price.origin == "imported"


def test_the_above_200k_keys_become_the_long_context_tier() -> None:
    tier = convert({"claude-sonnet-4-5": sonnet()}).models["claude-sonnet-4-5"].long_context
    assert tier is not None and tier.threshold == 200_000
    assert tier.rates == rates(input=6.0, output=22.5, cache_read=0.6, cache_write=7.5,
                               cache_write_1h=12.0)  # 1h: the base 1h rate, doubled as input is


def test_a_tier_without_cache_prices_scales_the_base_cache_rates() -> None:
    gemini = entry(1.25e-06, 1e-05, litellm_provider="gemini",
                   cache_read_input_token_cost=1.25e-07,
                   input_cost_per_token_above_200k_tokens=2.5e-06,
                   output_cost_per_token_above_200k_tokens=1.5e-05)
    price = convert({"gemini-2.5-pro": gemini}).models["gemini-2.5-pro"]
    assert price.rates == rates(input=1.25, output=10.0, cache_read=0.125, cache_write=1.25,
                                cache_write_1h=1.25)
    assert price.long_context is not None
    assert price.long_context.rates == rates(input=2.5, output=15.0, cache_read=0.25,
                                             cache_write=2.5, cache_write_1h=2.5)


def test_a_128k_tier_and_the_lowest_of_several_thresholds() -> None:
    old = entry(1.25e-06, 5e-06, input_cost_per_token_above_128k_tokens=2.5e-06)
    several = entry(1e-06, 2e-06, input_cost_per_token_above_272k_tokens=4e-06,
                    input_cost_per_token_above_200k_tokens=3e-06)
    models = convert({"gemini-1.5-pro": old, "m": several}).models
    assert models["gemini-1.5-pro"].long_context.threshold == 128_000  # type: ignore[union-attr]
    tier = models["m"].long_context
    assert tier is not None and tier.threshold == 200_000 and tier.rates.input == 3.0
    assert tier.rates.output == 2.0  # no output price above the threshold: the base one


def test_an_anthropic_model_without_cache_prices_gets_ccusages_multipliers() -> None:
    bare = entry(3e-06, 1.5e-05, litellm_provider="anthropic")
    via_bedrock = entry(1e-06, 5e-06, litellm_provider="bedrock")  # a Claude by its name
    models = convert({"claude-x": bare, "anthropic.claude-y-20250101-v1:0": via_bedrock}).models
    assert models["claude-x"].rates == rates(input=3.0, output=15.0, cache_read=0.3,
                                             cache_write=3.75, cache_write_1h=6.0)
    assert models["claude-y-20250101"].rates == rates(input=1.0, output=5.0, cache_read=0.1,
                                                      cache_write=1.25, cache_write_1h=2.0)


def test_the_1h_write_is_2x_input_when_only_the_5_minute_write_is_listed() -> None:
    listed = entry(1e-06, 5e-06, litellm_provider="anthropic",
                   cache_creation_input_token_cost=1.3e-06, cache_read_input_token_cost=1e-07)
    price = convert({"claude-haiku-4-5": listed}).models["claude-haiku-4-5"]
    assert price.rates.cache_write == 1.3 and price.rates.cache_write_1h == 2.0


def test_a_claude_1h_write_is_2x_input_whatever_litellm_lists() -> None:
    # LiteLLM lists 6e-06 for claude-3-opus's 1-hour write; Anthropic charges 2 x input.
    opus = entry(1.5e-05, 7.5e-05, litellm_provider="anthropic",
                 cache_creation_input_token_cost=1.875e-05,
                 cache_creation_input_token_cost_above_1hr=6e-06)
    other = entry(1e-06, 2e-06, litellm_provider="openai",
                  cache_creation_input_token_cost_above_1hr=1.5e-06)
    models = convert({"claude-3-opus-20240229": opus, "gpt-x": other}).models
    assert models["claude-3-opus-20240229"].rates.cache_write_1h == 30.0
    assert models["gpt-x"].rates.cache_write_1h == 1.5


def test_other_models_without_cache_prices_pay_the_input_rate() -> None:
    gpt = entry(1.25e-06, 1e-05, litellm_provider="openai", cache_read_input_token_cost=1.25e-07)
    plain = entry(5e-07, 1.5e-06, litellm_provider="openai")
    models = convert({"gpt-5": gpt, "gpt-3.5-turbo": plain}).models
    assert models["gpt-5"].rates == rates(input=1.25, output=10.0, cache_read=0.125,
                                          cache_write=1.25, cache_write_1h=1.25)
    assert models["gpt-3.5-turbo"].rates == rates(input=0.5, output=1.5, cache_read=0.5,
                                                  cache_write=0.5, cache_write_1h=0.5)


def test_skipped_entries_are_counted_by_reason() -> None:
    raw = {
        "sample_spec": SAMPLE_SPEC,
        "text-embedding-3-small": entry(2e-08, 0.0, mode="embedding"),
        "dall-e-3": {"mode": "image_generation", "input_cost_per_pixel": 1e-07},
        "whisper-1": entry(1e-04, 0.0, mode="audio_transcription"),
        "chat-bison": {"mode": "chat", "input_cost_per_character": 2.5e-07,
                       "output_cost_per_character": 5e-07},
        "gpt-5-codex": entry(1.25e-06, 1e-05, mode="responses"),
        "gpt-3.5-turbo-instruct": entry(1.5e-06, 2e-06, mode="completion"),
        "no-mode": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
        "free-model": entry(0, 0),
    }
    converted = convert(raw)
    assert set(converted.models) == {"gpt-5-codex", "gpt-3.5-turbo-instruct", "no-mode",
                                     "free-model"}
    assert converted.keys == 4
    assert converted.skipped == {SKIP_SAMPLE: 1, "mode embedding": 1,
                                 "mode image_generation": 1, "mode audio_transcription": 1,
                                 SKIP_NO_PRICE: 1}
    assert converted.models["free-model"].rates.input == 0.0  # free is a price, not none


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(("key", "bare"), [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
    ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("openai/gpt-5", "gpt-5"),
    ("gemini/gemini-2.5-pro", "gemini-2.5-pro"),
    ("vertex_ai/claude-sonnet-4-5@20250929", "claude-sonnet-4-5@20250929"),
    ("anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet-20241022"),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929"),
    ("bedrock/us-east-1/anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku-20240307"),
    ("openrouter/anthropic/claude-3.5-sonnet", "claude-3.5-sonnet"),
    ("anthropic.claude-v2:1", "claude-v2:1"),  # no date: the version is part of the name
    ("meta.llama3-70b-instruct-v1:0", "llama3-70b-instruct-v1:0"),
    ("ft:gpt-4o-mini-2024-07-18", "ft:gpt-4o-mini-2024-07-18"),
    ("gpt-4.1", "gpt-4.1"),
])
def test_bare_name(key: str, bare: str) -> None:
    assert bare_name(key) == bare


def test_the_unprefixed_key_wins_and_prefixed_keys_stay_usable() -> None:
    raw = {
        "vertex_ai/claude-sonnet-4-5": sonnet(input_cost_per_token=3.3e-06),  # its own price
        "anthropic/claude-sonnet-4-5": sonnet(),  # the same price: an alias
        "claude-sonnet-4-5": sonnet(),
    }
    converted = convert(raw)
    assert converted.models["claude-sonnet-4-5"].rates.input == 3.0
    assert converted.aliases == {"anthropic/claude-sonnet-4-5": "claude-sonnet-4-5"}
    assert converted.models["vertex_ai/claude-sonnet-4-5"].rates.input == 3.3
    assert converted.keys == 3


def test_a_prefixed_key_alone_prices_its_bare_name() -> None:
    raw = {"openrouter/openai/gpt-5": entry(2e-06, 2e-05),  # a reseller, listed first
           "openai/gpt-5": entry(1.25e-06, 1e-05),  # first party: preferred
           "gemini/gemini-2.5-pro": entry(1.25e-06, 1e-05),
           "us.anthropic.claude-sonnet-4-5-20250929-v1:0": sonnet()}
    converted = convert(raw)
    assert converted.models["gpt-5"].rates.input == 1.25
    assert converted.aliases["openai/gpt-5"] == "gpt-5"
    assert converted.models["openrouter/openai/gpt-5"].rates.input == 2.0
    assert converted.aliases["gemini/gemini-2.5-pro"] == "gemini-2.5-pro"
    assert converted.aliases["us.anthropic.claude-sonnet-4-5-20250929-v1:0"] == (
        "claude-sonnet-4-5-20250929")
    table = merged_pricing(shipped_pricing(), price_table(
        {"taken": "2026-01-01", "source": "test", "aliases": converted.aliases,
         "models": {n: price_spec(p) for n, p in converted.models.items()}}, "imported"))
    for logged in ("gemini-2.5-pro", "models/gemini-2.5-pro", "claude-sonnet-4-5-20250929",
                   "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "gpt-5"):
        price = table.lookup(logged)
        assert price is not None and price.origin == "imported", logged


def test_a_reseller_alone_does_not_take_over_a_shipped_name() -> None:
    raw = {"openrouter/anthropic/claude-3-5-haiku": entry(1e-06, 5e-06),
           "vertex_ai/claude-new-model": entry(1e-06, 5e-06)}
    converted = convert(raw, priced=tuple(shipped_pricing().names))
    assert "claude-3-5-haiku" not in converted.models  # the shipped price stays in use
    assert "openrouter/anthropic/claude-3-5-haiku" in converted.models
    assert converted.aliases == {"vertex_ai/claude-new-model": "claude-new-model"}


# ---------------------------------------------------------------- bad files


def write(tmp_path: Path, raw: Any, name: str = "prices.json") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize(("value", "says"), [
    (-1e-06, "a price must be a number >= 0"),
    ("3e-06", "not a number"),
    (True, "not a number"),
    (float("nan"), "a price must be a number >= 0"),
    ({"usd": 1}, "not a number"),
])
def test_a_bad_price_names_the_file_and_the_model(tmp_path: Path, value: Any, says: str) -> None:
    raw = {"ok": entry(1e-06, 2e-06), "bad-model": entry(1e-06, 2e-06,
                                                          cache_read_input_token_cost=value)}
    path = write(tmp_path, raw)
    with pytest.raises(PriceListError) as caught:
        convert_price_list(read_price_list(path), path)
    error = caught.value
    assert error.path == path and error.field == "bad-model" and error.exit_code == 4
    assert says in error.message and "cache_read_input_token_cost" in error.message
    assert str(path) in error.message and error.hint


def test_a_bad_price_in_a_skipped_entry_is_not_read(tmp_path: Path) -> None:
    raw = {"emb": entry(-1, "x", mode="embedding"), "ok": entry(1e-06, 2e-06)}
    assert set(convert(raw).models) == {"ok"}


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PriceListError, match="no such file") as caught:
        read_price_list(tmp_path / "nope.json")
    assert "litellm" in (caught.value.hint or "").lower()


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PriceListError, match="directory"):
        read_price_list(tmp_path)


def test_invalid_json_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "gpt-5": {"input_cost_per_token": 1e-06,}\n}\n')
    with pytest.raises(PriceListError, match="invalid JSON") as caught:
        read_price_list(path)
    assert caught.value.line == 2 and f"{path}:2:" in caught.value.message


@pytest.mark.parametrize(("raw", "says"), [([1, 2], "got an array"), ("\"x\"", "got a string"),
                                           ("null", "got null")])
def test_a_wrong_top_level_shape(tmp_path: Path, raw: Any, says: str) -> None:
    with pytest.raises(PriceListError, match=says):
        read_price_list(write(tmp_path, raw))


def test_an_entry_that_is_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(PriceListError, match="expected an object") as caught:
        convert({"gpt-5": [1e-06]})
    assert caught.value.field == "gpt-5"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"caf\xe9": {}}')
    with pytest.raises(PriceListError):
        read_price_list(path)


# ---------------------------------------------------------------- importing into a home


def litellm_file(tmp_path: Path, **models: dict[str, Any]) -> Path:
    return write(tmp_path, {"sample_spec": SAMPLE_SPEC, **models}, "litellm.json")


def test_import_saves_the_prices_where_pricing_for_reads_them(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    source = litellm_file(tmp_path, **{"claude-sonnet-4-5-20250929": sonnet(
        input_cost_per_token=4e-06), "anthropic/claude-sonnet-4-5-20250929": sonnet(
        input_cost_per_token=4e-06), "brand-new-model": entry(1e-06, 2e-06)})
    result = import_price_list(home, source, today=date(2026, 12, 1))
    target = imported_pricing_path(home)
    assert result.written and result.target == target == home.root / "pricing.json"
    assert result.keys == 3 and result.skipped == {SKIP_SAMPLE: 1}
    assert (result.names, result.new, result.replaced) == (3, 1, 2)
    assert [c.model for c in result.changes] == ["anthropic/claude-sonnet-4-5-20250929",
                                                 "claude-sonnet-4-5-20250929"]
    table = pricing_for(home)
    price = table.lookup("claude-sonnet-4-5-20250929")
    assert price is not None and price.origin == "imported" and price.rates.input == 4.0
    assert table.lookup("claude-sonnet-4-5").origin == "shipped"  # type: ignore[union-attr]
    assert table.lookup("gpt-5") is not None  # the shipped models stay
    assert table.taken == "2026-12-01" and "LiteLLM" in table.source
    saved = json.loads(target.read_text(encoding="utf-8"))
    assert saved["models"]["brand-new-model"]["input"] == 1.0


def test_config_overrides_still_win_over_the_import(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home",
                     '[pricing."claude-sonnet-4-5-20250929"]\noutput = 99.0\n')
    import_price_list(home, litellm_file(tmp_path, **{
        "claude-sonnet-4-5-20250929": sonnet(input_cost_per_token=4e-06)}))
    price = pricing_for(load_home(home.root)).lookup("claude-sonnet-4-5-20250929")
    assert price is not None and price.origin == "config"
    assert (price.rates.input, price.rates.output) == (4.0, 99.0)  # the rest: the import's


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    source = litellm_file(tmp_path, **{"gpt-5": entry(2e-06, 1e-05)})
    result = import_price_list(home, source, dry_run=True)
    assert not result.written and not imported_pricing_path(home).exists()
    [change] = result.changes
    assert change.model == "gpt-5" and change.before.rates.input == 1.25
    assert change.after is not None and change.after.rates.input == 2.0
    assert pricing_for(home).lookup("gpt-5").origin == "shipped"  # type: ignore[union-attr]


def test_a_new_import_replaces_the_last_one_whole(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    import_price_list(home, litellm_file(tmp_path, **{"gpt-5": entry(2e-06, 1e-05),
                                                      "old-model": entry(1e-06, 1e-06)}))
    again = import_price_list(home, litellm_file(tmp_path, **{"gpt-5": entry(2e-06, 1e-05)}))
    assert again.dropped == ["old-model"] and again.replaced == 1 and again.new == 0
    assert [(c.model, c.after) for c in again.changes] == [("old-model", None)]
    table = pricing_for(home)
    assert table.lookup("old-model") is None
    assert table.lookup("gpt-5").rates.input == 2.0  # type: ignore[union-attr]


def test_a_file_with_no_model_is_refused_and_the_last_import_kept(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    import_price_list(home, litellm_file(tmp_path, **{"gpt-5": entry(2e-06, 1e-05)}))
    empty = write(tmp_path, {"sample_spec": SAMPLE_SPEC,
                             "emb": entry(1e-08, 0, mode="embedding")}, "empty.json")
    with pytest.raises(PriceListError, match="no model with per-token prices"):
        import_price_list(home, empty)
    assert pricing_for(home).lookup("gpt-5").origin == "imported"  # type: ignore[union-attr]


def test_a_damaged_import_is_a_pricing_error_and_a_new_import_mends_it(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    imported_pricing_path(home).write_text("{not json", encoding="utf-8")
    with pytest.raises(PricingError) as caught:
        pricing_for(home)
    assert "pricing.json" in caught.value.message and "tally pricing import" in (
        caught.value.hint or "")
    import_price_list(home, litellm_file(tmp_path, **{"gpt-5": entry(2e-06, 1e-05)}))
    assert pricing_for(home).lookup("gpt-5").rates.input == 2.0  # type: ignore[union-attr]


def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    target = imported_pricing_path(home)
    for rate in (2.0, 3.0):
        body = {"taken": "2026-12-01", "source": "test", "aliases": {},
                "models": {"m": {"input": rate, "output": 1.0, "cache_read": 1.0,
                                 "cache_write": 1.0, "cache_write_1h": 1.0}}}
        target.write_text(json.dumps(body), encoding="utf-8")
        os.utime(target, ns=(0, int(rate * 1e9)))  # a new time even within one clock tick
        assert pricing_for(home).lookup("m").rates.input == rate  # type: ignore[union-attr]


def test_a_hand_edited_negative_rate_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    body = {"taken": "2026-12-01", "source": "test",
            "models": {"m": {"input": -1.0, "output": 1.0, "cache_read": 1.0,
                             "cache_write": 1.0, "cache_write_1h": 1.0}}}
    imported_pricing_path(home).write_text(json.dumps(body), encoding="utf-8")
    with pytest.raises(PricingError, match="negative"):
        pricing_for(home)


def test_the_saved_table_reads_back_the_same(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    source = litellm_file(tmp_path, **{"claude-sonnet-4-5": sonnet(),
                                       "anthropic/claude-sonnet-4-5": sonnet()})
    import_price_list(home, source)
    converted = convert_price_list(read_price_list(source), source)
    table = pricing_for(home)
    assert table.models["claude-sonnet-4-5"].rates == converted.models[
        "claude-sonnet-4-5"].rates
    assert table.models["claude-sonnet-4-5"].long_context == converted.models[
        "claude-sonnet-4-5"].long_context
    assert table.aliases["anthropic/claude-sonnet-4-5"] == "claude-sonnet-4-5"
    assert load_pricing().lookup("claude-sonnet-4-5").origin == "shipped"  # type: ignore[union-attr]
