"""Rebuild: replay the raw logs into a fresh home beside the current one, then swap it in.

The fresh lake, stage, quarantine and state are built in `<home>/.rebuild-<stamp>/`. When
the build is complete and holds no fewer events of any type than the home (else the
rebuild refuses, unless forced), it is swapped in by pipeline.swap, which also finishes or
undoes a swap a kill interrupted.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from deltalake.exceptions import DeltaError

from pipeline.checkpoint import read_watermark
from pipeline.compactor import CompactionResult, Progress, run_compaction
from pipeline.config import Home, fault
from pipeline.errors import TallyError, WouldLoseData, display_path
from pipeline.lake import scan_events
from pipeline.schemas import load_schemas
from pipeline.stage import iter_quarantine
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
        fresh = replace(home, root=scratch)  # the same logs and settings
        try:
            compaction = _build(fresh, progress, notify)
            before = _old_inventory(home, force)
            after = inventory(fresh)
            if before is not None and not force:
                _refuse_to_shrink(home, before, after)
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
    """Events of each type in the lake and the stage, each once, and quarantined lines."""
    schemas = load_schemas()
    events = {}
    for event_type in schemas.types:
        frame = scan_events(home, event_type, schemas)
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


