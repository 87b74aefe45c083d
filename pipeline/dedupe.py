"""The duplicate rule of DESIGN.md, kept on write: each event_id once in a table.

Rows with the same event_id count once. For token usage the row with the largest total
wins, except that a row with role `sidechain` loses to one without (Claude Code's asides
replay their parent's messages, and ccusage counts the main copy); otherwise, and between
equal totals, the first by source and offset; between rows equal on all of that, the one
already in the lake. The rule is a total order on a row's
*rank* (`rank_columns`), so whichever way rows arrive (in one batch, in batches months
apart, in a run killed halfway and run again) the same row wins.

Finding duplicates must not cost a scan of every event_id string per commit: each lake row
carries `_id_hash`, a stable 64-bit xxHash of its event_id (the same in every process and
version, unlike Polars' own hash). A run's new ids are matched against that one column,
and only the rows whose hash matches (true duplicates, or a rare collision the exact
comparison of event_ids then tells apart) are ranked.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import polars_hash as plh

ID_HASH = "_id_hash"
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
USAGE = "agent_token_usage"
ORIGIN = "_origin"  # 0: a row in the lake, 1: a new row: the lake wins a tie
RANK = "_rank_total"
SIDE_RANK = "_rank_side"
SIDECHAIN = "sidechain"


def id_hash(column: str = "event_id") -> pl.Expr:
    """The stable 64-bit hash of an event id (xxHash64, seed 0), as a signed integer: Delta
    tables have no unsigned type."""
    return plh.col(column).nchash.xxhash64().reinterpret(signed=True).alias(ID_HASH)


def with_id_hash(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add `_id_hash` to rows that have an event_id."""
    return frame.with_columns(id_hash())


ORDER = ("_file", "_row")  # where a new row was read: the last tie-break, the first read


def rank_columns(event_type: str) -> list[str]:
    """The columns that order rows with one event_id, best first (after `with_rank`)."""
    leading = [SIDE_RANK, RANK] if event_type == USAGE else []
    return [*leading, "_source", "_offset", ORIGIN, *ORDER]


def with_rank(frame: pl.LazyFrame, event_type: str) -> pl.LazyFrame:
    """Add what `rank_columns` orders by: the negated token total for usage, and nulls for
    the ORDER columns a frame lacks (the lake's rows)."""
    present = frame.collect_schema().names()
    missing = [pl.lit(None, pl.Int64).alias(name) for name in ORDER if name not in present]
    if ORIGIN not in present:
        missing.append(pl.lit(1, pl.Int8).alias(ORIGIN))
    if event_type == USAGE:
        total = pl.sum_horizontal(pl.col(c).fill_null(0) for c in TOKEN_COLUMNS)
        missing.append((-total).alias(RANK))
        side = pl.col("role").eq(SIDECHAIN).fill_null(False) if "role" in present else \
            pl.lit(False)
        missing.append(side.alias(SIDE_RANK))
    return frame.with_columns(missing)


def best_per_id(candidates: pl.LazyFrame, event_type: str) -> pl.LazyFrame:
    """One row per event_id among `candidates` (ranked, with ORIGIN): the rule's winner."""
    return (with_rank(candidates, event_type)
            .sort([*rank_columns(event_type)], nulls_last=True, maintain_order=True)
            .unique(subset="event_id", keep="first", maintain_order=True))


def dedupe(frame: pl.LazyFrame, event_type: str) -> pl.LazyFrame:
    """One row per event_id of `frame` by the rule (all rows new: no lake row among them)."""
    # Hash tables keyed by millions of distinct id strings are slow; sorting their u64
    # hashes is not. An id whose hash occurs once is unique, so only the rows whose hash
    # repeats (true duplicates, or a rare collision) go through the full rule.
    hashed = frame.with_columns(id_hash()).with_row_index("_row").with_columns(
        pl.lit(0, pl.Int64).alias("_file"))
    repeated = (hashed.select(ID_HASH).group_by(ID_HASH).len()
                .filter(pl.col("len") > 1).select(ID_HASH))
    once = hashed.join(repeated, on=ID_HASH, how="anti")
    many = hashed.join(repeated, on=ID_HASH, how="semi")
    chosen = best_per_id(many, event_type).drop(ORIGIN, RANK, SIDE_RANK, strict=False)
    return pl.concat([once, chosen]).drop(ID_HASH, *ORDER)


def matching_hashes(new: pl.LazyFrame, lake_hashes: pl.LazyFrame) -> pl.Series:
    """The hashes of `new` (a frame of `_id_hash`) that repeat among themselves or occur in
    `lake_hashes` (a lake's `_id_hash` column): the only ids the rule has to look at."""
    counted = new.group_by(ID_HASH).len()
    repeated = counted.filter(pl.col("len") > 1).select(ID_HASH)
    in_lake = lake_hashes.join(counted.select(ID_HASH), on=ID_HASH, how="semi")
    found = pl.concat([repeated, in_lake.select(ID_HASH)]).unique()
    return found.collect(engine="streaming").get_column(ID_HASH)


def losers(candidates: pl.DataFrame, event_type: str,
           keys: Sequence[str]) -> pl.DataFrame:
    """The rows of `candidates` (rows sharing event_ids, with ORIGIN) that lose to another
    row of their event_id, as their `keys`."""
    ranked = with_rank(candidates.lazy(), event_type).sort(
        [*rank_columns(event_type)], nulls_last=True, maintain_order=True)
    first = pl.int_range(pl.len()).over("event_id") == 0
    present = set(candidates.columns)
    return ranked.filter(~first).select(
        pl.col(key) if key in present else pl.lit(None).alias(key) for key in keys).collect()
