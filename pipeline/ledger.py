"""Which stage batches the lake holds, and which table versions compaction made.

Each Delta commit of a compaction records `Transaction(app_id(S, H), N)` for every stream S
it holds batches of, N the highest, H the host that staged them (`[host] id`): on a lake
many hosts share, each commits under app ids of its own. Stage batches of S numbered up
to N are in that table. A stream's numbers never fall behind what the lake holds: a tailer
that finds its checkpoint behind the lake (restored from a backup, replaced after damage)
starts a new stream (see `Tailer`). So that the tailer need not load deltalake (its
threads would keep it from forking its workers), compaction writes the highest batch of
each stream to `lake/_tally_batches.json` before each commit: never below what the tables
hold. (For a lake in an object store, that file stays in the home's local `lake/`.)

Compaction also records, in `state/lake.json`, the version each table had after its last
commit. A table found at an older version lost commits (files deleted under `_delta_log/`):
its events are gone from the lake although the stage no longer holds them, which is said
loudly instead of compacting on top.

Tables are opened where `[lake] uri` says (pipeline.storage): a local directory, or an
object store that other hosts write too. deltalake is imported only when a table is opened,
so a tailer over a home without a lake never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from pipeline.config import Home
from pipeline.errors import DamagedFile, LakeError
from pipeline.schemas import load_schemas
from pipeline.stage import fsync_dir, write_atomic
from pipeline.storage import REMOTE_HINT, Location

if TYPE_CHECKING:
    from deltalake import DeltaTable

# The Delta app id under which compaction records the highest tailer batch of a stream.
APP_ID = "tally-stage"
VERSIONS_FILE = "lake.json"
HIGH_WATER_FILE = "_tally_batches.json"
REBUILD_HINT = ("`tally rebuild` replays the logs into a fresh lake (it refuses if the logs "
                "no longer hold every event the lake held)")


def app_id(stream: str, host: str = "") -> str:
    """The Delta app id of a stream's batches staged on `host`; without a host, the id
    older tallies used ("tally-stage" for homes older than streams)."""
    if host:
        return f"{APP_ID}-{host}-{stream}"
    return f"{APP_ID}-{stream}" if stream else APP_ID


def table_path(home: Home, event_type: str) -> Location:
    """Where the Delta table of an event type lives."""
    return home.lake_location / event_type


HOST = "host"  # the lake column naming the host that staged an event
ROLLUPS_DIR = "_rollups"  # lake/_rollups/<name>: tables derived from the events
ROLLUP_NAMES = ("usage", "usage_tasks", "increments", "context")  # pipeline.rollups
CLAIMS_DIR = "_alerts"  # a shared lake's alert claims (pipeline.claims)


def table_dirs(home: Home) -> list[Location]:
    """The event tables of the lake (for an object store: the registered types that have a
    table, since a bucket has no directories to list)."""
    root = home.lake_location
    if not root.is_local:
        return [place for t in sorted(load_schemas().types)
                if open_table(place := root / t) is not None]
    if not home.lake.is_dir():
        return []
    return [Location.local(p) for p in sorted(home.lake.iterdir())
            if (p / "_delta_log").is_dir()]


def all_table_dirs(home: Home) -> list[Location]:
    """Every Delta table of the lake: the event tables, then the rollups (and a shared
    lake's alert claims)."""
    rollups = home.lake_location / ROLLUPS_DIR
    if not rollups.is_local:
        places = [*(rollups / name for name in sorted(ROLLUP_NAMES)),
                  home.lake_location / CLAIMS_DIR]
        derived = [place for place in places if open_table(place) is not None]
    elif rollups.path.is_dir():
        derived = [Location.local(p) for p in sorted(rollups.path.iterdir())
                   if (p / "_delta_log").is_dir()]
    else:
        derived = []
    return [*table_dirs(home), *derived]


_opened: dict[str, tuple[DeltaTable, tuple[object, ...], int]] = {}


def open_table(place: Location | Path) -> DeltaTable | None:
    """The Delta table at `path` as of now, or None when there is none yet; DamagedFile if
    its log cannot be read.

    Opening a table replays its log from its last checkpoint; a table opened before in this
    process is handed out again while its log is unchanged, or changed only by commits made
    through that object (compaction writing), which brought it up to date. Otherwise it is
    opened anew rather than brought up to date in place: a Polars scan resolves its files
    from the table object when collected, so moving a shared object on would move the scans
    others built on it (a reader would see a batch in the stage and in the table).
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    place = place if isinstance(place, Location) else Location.local(place)
    if not place.is_local:
        return _open_remote(place)
    path = place.path
    key, log = str(path), path / "_delta_log"
    known = _opened.get(key)
    try:
        if known is not None:
            table, identity, version = known
            now, current = _identity(log), table.version()
            if (now == identity or current > version) and now[1] == identity[1] \
                    and (log / f"{current:020d}.json").exists() \
                    and not (log / f"{current + 1:020d}.json").exists():
                _opened[key] = (table, now, current)
                return table
        table = DeltaTable(key)
    except TableNotFoundError:
        _opened.pop(key, None)
        return None
    except (DeltaError, OSError) as exc:
        _opened.pop(key, None)
        detail = (str(exc).splitlines() or ["unreadable"])[0]
        if "gap" in detail:
            detail = "a commit file is missing from its _delta_log (the versions have a gap)"
        raise DamagedFile("lake table", path, detail[:300], hint=REBUILD_HINT) from exc
    _opened[key] = (table, _identity(log), table.version())
    return table


def _open_remote(place: Location) -> DeltaTable | None:
    """A table in an object store, opened anew (its log cannot be watched cheaply)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        return DeltaTable(place.uri, storage_options=place.storage_options)
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        detail = (str(exc).splitlines() or ["unreadable"])[0][:300]
        if "gap" in detail or "Invalid JSON" in detail:
            raise DamagedFile("lake table", place.uri, detail, hint=REBUILD_HINT) from exc
        raise LakeError(f"cannot read the lake table {place.uri}: {detail}",
                        hint=REMOTE_HINT) from exc


def _identity(log: Path) -> tuple[object, ...]:
    """What tells one table's log from another's at the same path, or the same log changed
    (a commit added or a commit file lost): the inodes and times of the directory and of
    its first commit (a table deleted and made anew gets other ones)."""
    found: list[object] = []
    for path in (log, log / f"{0:020d}.json"):
        try:
            st = os.stat(path)
            found.append((st.st_dev, st.st_ino, st.st_mtime_ns))
        except OSError:
            found.append(None)  # a log cleaned up after a checkpoint drops its first commits
    return tuple(found)


def stream_batch(table: DeltaTable | None, stream: str, host: str, legacy: bool = True) -> int:
    """The highest batch of `stream`, staged on `host`, already committed into a table (0
    for none); with `legacy`, batches an older tally committed without a host count too
    (never on a lake hosts share: there the id without a host may be another host's)."""
    if table is None:
        return 0
    apps = (app_id(stream, host), app_id(stream)) if legacy else (app_id(stream, host),)
    versions = [table.transaction_version(app) for app in apps]
    return max((int(v) for v in versions if v is not None), default=0)


def lake_high_water(home: Home, stream: str) -> int:
    """At least the highest batch of `stream` that any table of the lake holds."""
    known = _high_water(home)
    return max(known.get(app_id(stream, home.host), 0), known.get(app_id(stream), 0))


def raise_high_water(home: Home, batches: dict[str, int]) -> None:
    """Before a commit: record the highest batch of each stream (by app id) it may hold."""
    known = _high_water(home)
    merged = {app: max(known.get(app, 0), batch) for app, batch in batches.items()}
    if all(known.get(app) == batch for app, batch in merged.items()):
        return
    body = orjson.dumps({**known, **merged}, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    home.lake.mkdir(parents=True, exist_ok=True)
    write_atomic(home.lake / HIGH_WATER_FILE, lambda handle: handle.write(body))
    fsync_dir(home.lake)


def _high_water(home: Home) -> dict[str, int]:
    try:
        body = orjson.loads((home.lake / HIGH_WATER_FILE).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    if not isinstance(body, dict):
        return {}
    return {str(k): v for k, v in body.items() if isinstance(v, int)}


# ---------------------------------------------------------------- table versions made


def recorded_versions(home: Home) -> dict[str, int]:
    """The version of each table after compaction's last change to it."""
    try:
        body = orjson.loads((home.state / VERSIONS_FILE).read_bytes())
    except FileNotFoundError:
        return {}
    except orjson.JSONDecodeError:
        return {}  # only a check's input: a damaged record checks nothing, and is rewritten
    return {str(k): int(v) for k, v in body.items()} if isinstance(body, dict) else {}


def record_versions(home: Home, versions: dict[str, int]) -> None:
    """Remember tables' versions after a change compaction made."""
    merged = {**recorded_versions(home), **versions}
    body = orjson.dumps(merged, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    write_atomic(home.state / VERSIONS_FILE, lambda handle: handle.write(body))


def lost_commits(home: Home, event_type: str, table: DeltaTable | None) -> str | None:
    """What is wrong if a table is older than compaction left it, else None."""
    made = recorded_versions(home).get(event_type)
    if made is None:
        return None
    if table is None:
        return (f"lake table {event_type} is missing, but compaction committed version "
                f"{made} of it")
    if table.version() < made:
        return (f"lake table {event_type} is at version {table.version()}, but compaction "
                f"committed version {made}: commits were lost from "
                f"{table_path(home, event_type) / '_delta_log'}")
    return None


def check_not_behind(home: Home, event_type: str, table: DeltaTable | None) -> None:
    """LakeError if a table lost commits compaction made (see `lost_commits`)."""
    problem = lost_commits(home, event_type, table)
    if problem is not None:
        raise LakeError(problem + "; the events of those commits are gone from the lake",
                        hint=REBUILD_HINT)


def dates_sql(dates: Iterable[str | date]) -> str:
    """Dates as a SQL list of DATE literals for a Delta predicate: `(DATE '2025-03-01', ...)`
    (delta-rs does not compare a date column with text)."""
    return "(" + ", ".join(f"DATE '{day}'" for day in sorted({str(d) for d in dates})) + ")"
