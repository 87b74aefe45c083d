"""pipeline.dedupe: the duplicate rule as a total order, and a stable id hash."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedupe import ID_HASH, ORIGIN, dedupe, id_hash, losers, matching_hashes

USAGE = "agent_token_usage"


def test_the_id_hash_is_xxhash64_and_fits_a_delta_long() -> None:
    hashes = pl.DataFrame({"event_id": ["", "abc"]}).select(id_hash())[ID_HASH]
    # xxh64("") and xxh64("abc"), seed 0, as every implementation computes them.
    expected = [0xEF46DB3751D8E999, 0x44BC2CF5AD770999]
    assert hashes.dtype == pl.Int64
    assert [value % 2**64 for value in hashes.to_list()] == expected


def usage_rows(rows: list[tuple[str, int, str, int]]) -> pl.DataFrame:
    """(event_id, total tokens, source, offset) rows of token usage."""
    return pl.DataFrame(rows, schema=["event_id", "input_tokens", "_source", "_offset"],
                        orient="row").with_columns(output_tokens=pl.lit(0),
                                                   cache_read_tokens=pl.lit(0),
                                                   cache_write_tokens=pl.lit(0))


def test_the_largest_total_wins_then_the_first_source_and_offset() -> None:
    rows = usage_rows([("a", 5, "b.jsonl", 0), ("a", 9, "z.jsonl", 9), ("b", 1, "z.jsonl", 0),
                       ("b", 1, "a.jsonl", 7), ("c", 3, "a.jsonl", 0)])
    kept = dedupe(rows.lazy(), USAGE).collect().sort("event_id")
    assert kept.select("event_id", "input_tokens", "_source").rows() == [
        ("a", 9, "z.jsonl"), ("b", 1, "a.jsonl"), ("c", 3, "a.jsonl")]


def test_other_types_keep_the_first_by_source_and_offset_whatever_the_tokens() -> None:
    rows = usage_rows([("a", 5, "b.jsonl", 0), ("a", 9, "z.jsonl", 9)])
    assert dedupe(rows.lazy(), "tool_call").collect()["_source"].to_list() == ["b.jsonl"]


def test_between_equal_rows_the_lake_wins() -> None:
    lake = usage_rows([("a", 5, "x.jsonl", 0)]).with_columns(pl.lit(0, pl.Int8).alias(ORIGIN))
    new = usage_rows([("a", 5, "x.jsonl", 0)]).with_columns(pl.lit(1, pl.Int8).alias(ORIGIN))
    lost = losers(pl.concat([new, lake]), USAGE, ["event_id", ORIGIN])
    assert lost.rows() == [("a", 1)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 3),
                          st.sampled_from(["x.jsonl", "y.jsonl"]), st.integers(0, 3)),
                min_size=1, max_size=12), st.randoms())
def test_the_winner_does_not_depend_on_the_order_rows_arrive(
        rows: list[tuple[str, int, str, int]], order: object) -> None:
    import random

    assert isinstance(order, random.Random)
    shuffled = rows[:]
    order.shuffle(shuffled)
    first = dedupe(usage_rows(rows).lazy(), USAGE).collect()
    second = dedupe(usage_rows(shuffled).lazy(), USAGE).collect()
    key = ["event_id", "input_tokens", "_source", "_offset"]
    assert first.select(key).sort(key).rows() == second.select(key).sort(key).rows()
    assert first["event_id"].n_unique() == first.height == len({r[0] for r in rows})


def test_only_hashes_repeated_or_in_the_lake_match() -> None:
    new = pl.LazyFrame({"event_id": ["a", "b", "b", "c"]}).select(id_hash())
    lake = pl.LazyFrame({"event_id": ["c", "z"]}).select(id_hash())
    matched = set(matching_hashes(new, lake).to_list())
    expected = pl.DataFrame({"event_id": ["b", "c"]}).select(id_hash())[ID_HASH].to_list()
    assert matched == set(expected)
