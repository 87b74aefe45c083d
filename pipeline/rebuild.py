"""Rebuild: replay the raw logs into a fresh home beside the current one, then swap it in.

The fresh lake, stage, quarantine and state are built in `<home>/.rebuild-<stamp>/`. When
the build is complete and holds no fewer events of any type than the home (else the
rebuild refuses, unless forced), it is swapped in by pipeline.swap, which also finishes or
undoes a swap a kill interrupted.

A lake in an object store holds other hosts' events too, which this host's logs cannot
replay: there the fresh lake is built on local disk, and each of its tables replaces, in
one commit, the rows of this host (`host` = its id) in the shared table, less the events
another host's row already holds. A kill before the swap leaves each shared table either
as it was or replaced; both hold every event once, and the old stage and checkpoint go on.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from deltalake import CommitProperties, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from pipeline.checkpoint import read_watermark
from pipeline.commits import WRITER, create_table, fleet_transaction, plain_arrow
from pipeline.compactor import MAX_PLANS, CompactionResult, Progress, run_compaction
from pipeline.config import Home, fault
from pipeline.dedupe import ID_HASH
from pipeline.errors import (
    LakeError,
    TallyError,
    WouldLoseData,
    display_path,
    native_stderr_captured,
)
from pipeline.lake import scan_events
from pipeline.ledger import (
    HOST,
    ROLLUPS_DIR,
    app_id,
    open_table,
    record_versions,
    table_dirs,
    table_path,
)
from pipeline.pricing import pricing_for
from pipeline.rollups import sync_rollups
from pipeline.schemas import load_schemas
from pipeline.stage import iter_quarantine
from pipeline.storage import wait_before_retry
from pipeline.swap import (
    BACKUP_PREFIX,
    PARTS,
    RETIRED_PREFIX,
    SCRATCH_PREFIX,
    SwapLocks,
    recover,
    roll_forward,
    write_swap_journal,
)
from pipeline.tailer import Tailer


@dataclass(frozen=True)
class Inventory:
    """What a home holds: events of each type (each event once) and quarantined lines."""

    events: dict[str, int]
    quarantined: int


@dataclass
class RebuildResult:
    """What a rebuild did; `before` is None when the old home could not be counted."""

    compaction: CompactionResult
    before: Inventory | None
    after: Inventory
    backup: Path | None = None
    recovered: list[str] = field(default_factory=list)


def run_rebuild(home: Home, *, force: bool = False, progress: Progress | None = None,
                notify: Callable[[str], None] | None = None) -> RebuildResult:
    """Replay the raw logs into a fresh lake beside the current one, then swap it in.

    Raises WouldLoseData, changing nothing, if the fresh lake would hold fewer events of
    some type; `force` swaps anyway and keeps the old directories in a backup.
    """
    with SwapLocks(home.compactor.lock_timeout) as locks:
        locks.cover(home.state)
        recovered = recover(home, locks)
        locks.cover(home.state)  # whichever state/ the recovery left in place
        scratch = home.root / f"{SCRATCH_PREFIX}{_new_stamp(home)}"
        # The same logs and settings; the lake built on this host's disk in any case.
        fresh = replace(home, root=scratch, lake_uri="", lake_options=())
        shared = not home.lake_location.is_local
        try:
            compaction = _build(fresh, progress, notify)
            before = _old_inventory(home, force)
            after = shared_inventory(home, fresh) if shared else inventory(fresh)
            if before is not None and not force:
                _refuse_to_shrink(home, before, after)
            if shared:
                replace_host_rows(home, fresh)
            locks.cover(fresh.state)  # after the swap it is state/: no tailer may take it
            _carry_alerts(home, fresh)
            write_swap_journal(scratch, keep=force)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)  # nothing of it was swapped in
            raise
        fault("rebuild", "before_swap")
        backup = roll_forward(home, scratch, locks)
    return RebuildResult(compaction, before, after, backup, recovered)


def _carry_alerts(home: Home, fresh: Home) -> None:
    """Alerts waiting for delivery outlive the swap of state/ (the lake keeps their events)."""
    pending = home.state / "alerts" / "outbox"
    if pending.is_dir():
        shutil.copytree(pending, fresh.state / "alerts" / "outbox", dirs_exist_ok=True)


def inventory(home: Home) -> Inventory:
    """Events of each type in the lake and the stage, each once, and quarantined lines; of
    a lake other hosts share, only this host's events."""
    schemas = load_schemas()
    events = {}
    for event_type in schemas.types:
        frame = scan_events(home, event_type, schemas)
        if frame is not None and not home.lake_location.is_local:
            frame = frame.filter(pl.col(HOST) == home.host)
        if frame is not None:
            events[event_type] = int(frame.select(pl.len()).collect().item())
    quarantined = sum(1 for _ in iter_quarantine(home.quarantine, read_watermark(home.state)))
    return Inventory(events, quarantined)


def changes(before: Inventory, after: Inventory) -> list[str]:
    """Each count that differs, as "agent_token_usage 1,000 -> 10"; quarantine last."""
    types = sorted(before.events.keys() | after.events.keys())
    found = [f"{t} {before.events.get(t, 0):,} -> {after.events.get(t, 0):,}" for t in types
             if before.events.get(t, 0) != after.events.get(t, 0)]
    if before.quarantined != after.quarantined:
        found.append(f"quarantined lines {before.quarantined:,} -> {after.quarantined:,}")
    return found


# ---------------------------------------------------------------- building and checking


def _new_stamp(home: Home) -> str:
    base = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    stamp, n = base, 1
    while any((home.root / f"{prefix}{stamp}").exists()
              for prefix in (SCRATCH_PREFIX, RETIRED_PREFIX, BACKUP_PREFIX)):
        n += 1
        stamp = f"{base}-{n}"
    return stamp


def _build(fresh: Home, progress: Progress | None,
           notify: Callable[[str], None] | None) -> CompactionResult:
    with Tailer(fresh, notify=notify) as tailer:
        tailer.poll()
    result = run_compaction(fresh, progress=progress)
    for name in PARTS:  # each exists, so "still in the scratch" means "not swapped yet"
        (fresh.root / name).mkdir(exist_ok=True)
    return result


def shared_inventory(home: Home, fresh: Home) -> Inventory:
    """What a rebuilt fresh lake would leave of this host's events in the shared lake: its
    events, less those other hosts' rows hold (which the shared lake keeps as they are)."""
    events = {}
    for place in table_dirs(fresh):
        table = open_table(place)
        assert table is not None
        ids = pl.scan_delta(table).select("event_id")
        shared = open_table(table_path(home, place.name))
        if shared is not None:
            others = pl.scan_delta(shared).filter(pl.col(HOST).ne_missing(home.host))
            ids = ids.join(others.select("event_id"), on="event_id", how="anti")
        events[place.name] = int(ids.select(pl.len()).collect(engine="streaming").item())
    return Inventory(events, inventory(fresh).quarantined)


def replace_host_rows(home: Home, fresh: Home) -> None:
    """Replace this host's rows in each table of the shared lake by the fresh lake's (built
    on local disk), keep only the fresh lake's batch record, and bring the rollups up."""
    stream = read_watermark(fresh.state)
    batches = {app_id(stream.stream, home.host): stream.batch} if stream.batch else {}
    versions = {}
    for place in table_dirs(fresh):
        table = open_table(place)
        assert table is not None
        rows = pl.scan_delta(table).collect(engine="streaming")
        versions[place.name] = _replace_in_shared(home, place.name, rows, batches)
        shutil.rmtree(place.path)  # its rows are in the shared lake now
    shutil.rmtree(fresh.lake / ROLLUPS_DIR, ignore_errors=True)  # the shared lake's are kept
    record_versions(fresh, versions)
    thresholds = pricing_for(home).thresholds
    for event_type in versions:
        sync_rollups(home, event_type, thresholds)


def _replace_in_shared(home: Home, event_type: str, rows: pl.DataFrame,
                       batches: dict[str, int]) -> int:
    """One commit: the table's rows of this host replaced by `rows`, less the events the
    other hosts' rows hold; planned again if another host commits first. The new version."""
    place = table_path(home, event_type)
    for attempt in range(1, MAX_PLANS + 1):
        table = open_table(place)
        table = table or create_table(place, rows.drop(HOST, ID_HASH), home.host)
        others = (pl.scan_delta(table).filter(pl.col(HOST).ne_missing(home.host))
                  .select("event_id").collect(engine="streaming"))
        kept = rows.join(others, on="event_id", how="anti")
        try:
            with native_stderr_captured():
                write_deltalake(table, plain_arrow(kept), mode="overwrite", schema_mode="merge",
                                predicate=f"{HOST} = '{home.host}'", writer_properties=WRITER,
                                commit_properties=CommitProperties(app_transactions=[
                                    *(Transaction(a, b) for a, b in batches.items()),
                                    fleet_transaction()]))
            return table.version()
        except CommitFailedError as exc:
            if attempt == MAX_PLANS:
                raise LakeError(f"cannot replace this host's rows in {place}: other hosts "
                                f"kept committing first: {exc}",
                                hint="run `tally rebuild` again") from exc
            wait_before_retry(attempt)
    raise AssertionError("unreachable")


def _old_inventory(home: Home, force: bool) -> Inventory | None:
    try:
        return inventory(home)
    except (TallyError, OSError, ValueError, pl.exceptions.PolarsError, DeltaError) as exc:
        if force:
            return None
        raise WouldLoseData(
            f"cannot count the events of the current lake, so cannot check that the rebuild "
            f"keeps them all: {exc}".splitlines()[0],
            hint=f"nothing was changed; pass --force to replace the lake anyway, the old one "
                 f"is then kept in {_backup_hint(home)}") from exc


def _refuse_to_shrink(home: Home, before: Inventory, after: Inventory) -> None:
    shrunk = [f"{t} {n:,} -> {after.events.get(t, 0):,}"
              for t, n in sorted(before.events.items()) if after.events.get(t, 0) < n]
    if not shrunk:
        return
    if after.quarantined < before.quarantined:
        shrunk.append(f"quarantined lines {before.quarantined:,} -> {after.quarantined:,}")
    raise WouldLoseData(
        "rebuild would leave fewer events: " + ", ".join(shrunk),
        hint="the logs no longer hold every event in the lake (old logs pruned, transcripts "
             "an agent CLI deleted, or a source imported but not in [[sources]]?); nothing "
             "was changed; pass --force to replace the lake anyway, the old lake is then "
             f"kept in {_backup_hint(home)}")


def _backup_hint(home: Home) -> str:
    return f"{display_path(home.root / BACKUP_PREFIX)}<time>/"


