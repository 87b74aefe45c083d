"""The settings config.toml may give, with their defaults and ranges, and the file
`tally init` writes. Plain data: pipeline.config reads and checks the file against it."""

from __future__ import annotations

import functools
import os
import zoneinfo
from dataclasses import Field, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")

CONFIG_TEMPLATE = """\
# tally configuration. Every setting is optional; the values shown are the defaults.
# An unknown section or key, or a value out of its range, is an error naming it.

[paths]
# logs = "logs"              # watched input directory, relative to the home
# include = ["*.jsonl", "*.jsonl.[0-9]", "*.jsonl.[0-9][0-9]"]

[tailer]
# max_line_bytes = 1048576   # longer lines are quarantined as a record, never read whole
# rescan_seconds = 1.0       # periodic rescan beside the watchdog observer
# sources_rescan_seconds = 60.0  # the same for the [[sources]] (thousands of files: slower)
# idle_seconds = 30.0        # a rotated-away file idle this long has its partial tail quarantined
# batch_lines = 10000        # lines per staged batch (bounds memory: ~190 MB peak)
# status_interval = 10.0     # seconds between the running tailer's summary lines
# workers = 2                # line-checking processes for a catch-up (CPUs, at most 4; 0: none)
# parallel_min_bytes = 67108864  # unread bytes, all files together, that start those workers

[compactor]
# lock_timeout = 60.0        # seconds a second compaction waits for the first
# target_file_mb = 128       # --optimize merges small files up to this size
# auto_optimize_files = 16   # compaction merges a partition's small files past this many (0: never)
# vacuum_retention_hours = 168
# every = 300.0              # seconds between the compactions of `tally run`

[budgets]                     # 0 turns a budget off
# daily_tokens = 150000
# weekly_tokens = 1000000
# daily_cost_usd = 10.0
# weekly_cost_usd = 0
# warning_ratio = 0.8
# tz = "UTC"                 # IANA time zone of the days and weeks (weeks start on Monday)
#
# [budgets.agents.claude]     # an agent's own budgets; keys not given take the global value
# daily_tokens = 80000

[alerts]                      # where budget alerts go, besides the log and the terminal
# command = "notify-send tally"   # run with the alert JSON on stdin
# webhook = "https://hooks.slack.com/services/..."  # POSTed the alert JSON with a `text` field
# timeout = 10.0             # seconds one delivery attempt may take
# retry_max_seconds = 300.0  # longest wait between attempts of a failing receiver

[serve]                       # `tally serve`, the dashboard
# host = "127.0.0.1"         # any other address needs a token
# port = 8787
# token = ""                 # required off loopback: browsers open /?token=..., scripts send
#                            # "Authorization: Bearer ..."

[lake]                        # where the Delta tables live (stage and checkpoints stay here)
# uri = "s3://bucket/prefix" # one lake in an object store for many hosts
#                            # (docs/scale-out.md); default: the home's lake/
# endpoint = "http://127.0.0.1:9000"  # an S3-compatible store (MinIO...); or AWS_ENDPOINT_URL
# region = "us-east-1"       # or AWS_REGION
# allow_http = false         # true for an endpoint without TLS; or AWS_ALLOW_HTTP=true
#                            # keys come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY

[host]
# id = "<hostname>"          # this host's name in the lake: its `host` column, its commits

# [[sources]]                 # logs an agent CLI writes: claude-code, codex, gemini, opencode
# kind = "claude-code"       # without a path, found where the CLI keeps them
# path = "~/.claude"         # optional
# agent = "claude-code"      # optional: the agent name its events carry (default: the kind)

# [pricing."my-model"]        # USD per million tokens; overrides or extends the shipped table
# input = 1.0
# output = 4.0
# cache_read = 0.1
# cache_write = 1.25
# cache_write_1h = 2.0
"""


# Line-checking worker processes pay off only with a second core to run on.
DEFAULT_WORKERS = 0 if (os.cpu_count() or 1) < 2 else min(os.cpu_count() or 1, 4)
BOUNDS = "bounds"  # dataclass field metadata key: the values a numeric setting accepts


@dataclass(frozen=True)
class Bounds:
    """The values a numeric setting accepts: `least`/`most` inclusive, `above` exclusive."""

    least: float | None = None
    most: float | None = None
    above: float | None = None

    def refusal(self, value: float) -> str | None:
        """Why `value` is out of range, or None when it is accepted."""
        low_ok = ((self.least is None or value >= self.least)
                  and (self.above is None or value > self.above))
        if low_ok and (self.most is None or value <= self.most):
            return None
        return f"must be {self.describe()}, got {value!r}"

    def describe(self) -> str:
        """The range in words: "between 1 and 4", "at least 0", "greater than 0"."""
        if self.least is not None and self.most is not None:
            return f"between {_shown(self.least)} and {_shown(self.most)}"
        low = (f"at least {_shown(self.least)}" if self.least is not None
               else f"greater than {_shown(self.above)}" if self.above is not None else "")
        high = f"at most {_shown(self.most)}" if self.most is not None else ""
        return " and ".join(part for part in (low, high) if part)


def _shown(number: float | None) -> str:
    return str(int(number)) if number is not None and float(number).is_integer() else str(number)


def _setting(default: T, least: float | None = None, most: float | None = None,
             above: float | None = None) -> T:
    """A dataclass field for a numeric setting, with the range config.toml may give it."""
    return field(default=default, metadata={BOUNDS: Bounds(least, most, above)})


@dataclass(frozen=True)
class TailerSettings:
    """Limits and intervals of the tailer."""

    # Below 128 bytes even the shortest valid event would be quarantined.
    max_line_bytes: int = _setting(1 << 20, least=128, most=1 << 30)
    rescan_seconds: float = _setting(1.0, above=0)
    sources_rescan_seconds: float = _setting(60.0, above=0)
    idle_seconds: float = _setting(30.0, above=0)
    batch_lines: int = _setting(10_000, least=1, most=10_000_000)
    status_interval: float = _setting(10.0, above=0)
    workers: int = _setting(DEFAULT_WORKERS, least=0, most=4)
    parallel_min_bytes: int = _setting(64 << 20, least=0)


@dataclass(frozen=True)
class CompactorSettings:
    """Locking and file sizing of compaction."""

    lock_timeout: float = _setting(60.0, least=0)
    target_file_mb: int = _setting(128, least=1, most=100_000)
    # Small files (under half of target_file_mb) a partition may hold before compaction
    # merges them, as Delta's auto compaction does; 0 turns it off. Why 16, see
    # `maintenance.optimize_small_files`.
    auto_optimize_files: int = _setting(16, least=0, most=10_000)
    vacuum_retention_hours: float = _setting(168.0, least=0)
    every: float = _setting(300.0, above=0)  # seconds between `tally run`'s compactions


@dataclass(frozen=True)
class BudgetSettings:
    """Token and cost budgets; `agents` holds per-agent overrides of the same keys."""

    daily_tokens: int = _setting(150_000, least=0)
    weekly_tokens: int = _setting(1_000_000, least=0)
    daily_cost_usd: float = _setting(10.0, least=0)
    weekly_cost_usd: float = _setting(0.0, least=0)
    warning_ratio: float = _setting(0.8, above=0, most=1)
    tz: str = "UTC"
    agents: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertSettings:
    """Where budget alerts are delivered, and how a failing receiver is retried."""

    command: str = ""
    webhook: str = ""
    timeout: float = _setting(10.0, above=0, most=3600)
    retry_max_seconds: float = _setting(300.0, above=0)


@dataclass(frozen=True)
class ServeSettings:
    """Where `tally serve` listens, and the token it asks for."""

    host: str = "127.0.0.1"
    port: int = _setting(8787, least=0, most=65535)
    token: str = ""


# [pricing."model"] keys; pipeline.pricing applies them. Rates are USD per million tokens.
PRICE_RATE_NAMES = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
LONG_CONTEXT_PREFIX = "long_context_"
LONG_CONTEXT_THRESHOLD = f"{LONG_CONTEXT_PREFIX}threshold"
PRICE_KEYS = (*PRICE_RATE_NAMES, LONG_CONTEXT_THRESHOLD,
              *(f"{LONG_CONTEXT_PREFIX}{name}" for name in PRICE_RATE_NAMES))
RATE_BOUNDS = Bounds(least=0)
SECTIONS = ("paths", "tailer", "compactor", "budgets", "alerts", "serve", "lake", "host",
            "pricing", "sources")
LAKE_KEYS = ("uri", "endpoint", "region", "allow_http")
HOST_KEYS = ("id",)
SOURCE_KEYS = ("kind", "path", "agent")
PATHS_KEYS = ("logs", "include")
ALERT_TEXT_KEYS = ("command", "webhook")
SERVE_TEXT_KEYS = ("host", "token")


# Names tzdata holds that are no place's zone and that Polars (chrono-tz) refuses.
NOT_ZONES = frozenset({"localtime", "Factory"})


@functools.cache
def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone that every part of tally can compute in."""
    return name in zoneinfo.available_timezones() and name not in NOT_ZONES


def setting_fields(cls: type[Any]) -> dict[str, Field[Any]]:
    """The numeric settings of a settings class, by name (those with `Bounds`)."""
    return {f.name: f for f in fields(cls) if BOUNDS in f.metadata}


def setting_bounds(cls: type[Any], name: str) -> Bounds:
    """The range config.toml (and a command-line override) may give one setting."""
    bounds = setting_fields(cls)[name].metadata[BOUNDS]
    assert isinstance(bounds, Bounds)
    return bounds
