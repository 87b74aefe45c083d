"""The tally home: where its directories live and what config.toml says."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError

HOME_ENV = "TALLY_HOME"
DEFAULT_HOME = Path(".tally")
T = TypeVar("T")
SUBDIRS = ("logs", "stage", "quarantine", "state", "lake")

CONFIG_TEMPLATE = """\
# tally configuration. Every setting is optional; the values shown are the defaults.

[paths]
# logs = "logs"              # watched input directory, relative to the home
# include = ["*.jsonl", "*.jsonl.[0-9]", "*.jsonl.[0-9][0-9]"]

[tailer]
# max_line_bytes = 1048576   # longer lines are quarantined as a record, never read whole
# rescan_seconds = 1.0       # periodic rescan beside the watchdog observer
# idle_seconds = 30.0        # a rotated-away file idle this long has its partial tail quarantined
# batch_lines = 10000        # lines per staged batch (bounds memory: ~190 MB peak)
# status_interval = 10.0     # seconds between the running tailer's summary lines
# workers = 2                # line-checking processes for a catch-up (CPUs, at most 4; 0: none)
# parallel_min_bytes = 67108864  # unread bytes, all files together, that start those workers

[compactor]
# lock_timeout = 60.0        # seconds a second compaction waits for the first
# target_file_mb = 128       # --optimize merges small files up to this size
# vacuum_retention_hours = 168

[budgets]
# daily_tokens = 150000
# weekly_tokens = 1000000
# daily_cost_usd = 10.0
# warning_ratio = 0.8
#
# [budgets.agents.claude]     # per-agent overrides
# daily_tokens = 80000

# [pricing."my-model"]        # USD per million tokens; overrides or extends the shipped table
# input = 1.0
# output = 4.0
# cache_read = 0.1
# cache_write = 1.25
# cache_write_1h = 2.0
"""


# Line-checking worker processes pay off only with a second core to run on.
DEFAULT_WORKERS = 0 if (os.cpu_count() or 1) < 2 else min(os.cpu_count() or 1, 4)


@dataclass(frozen=True)
class TailerSettings:
    """Limits and intervals of the tailer."""

    max_line_bytes: int = 1 << 20
    rescan_seconds: float = 1.0
    idle_seconds: float = 30.0
    batch_lines: int = 10_000
    status_interval: float = 10.0
    workers: int = DEFAULT_WORKERS
    parallel_min_bytes: int = 64 << 20


@dataclass(frozen=True)
class CompactorSettings:
    """Locking and file sizing of compaction."""

    lock_timeout: float = 60.0
    target_file_mb: int = 128
    vacuum_retention_hours: float = 168.0


@dataclass(frozen=True)
class BudgetSettings:
    """Token and cost budgets; `agents` holds per-agent overrides of the same keys."""

    daily_tokens: int = 150_000
    weekly_tokens: int = 1_000_000
    daily_cost_usd: float = 10.0
    warning_ratio: float = 0.8
    agents: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Home:
    """A tally home directory and its parsed config."""

    root: Path
    logs: Path
    include: tuple[str, ...] = ("*.jsonl", "*.jsonl.[0-9]", "*.jsonl.[0-9][0-9]")
    tailer: TailerSettings = TailerSettings()
    compactor: CompactorSettings = CompactorSettings()
    budgets: BudgetSettings = BudgetSettings()
    pricing: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def stage(self) -> Path:
        return self.root / "stage"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def lake(self) -> Path:
        return self.root / "lake"


def resolve_home(home: str | Path | None) -> Path:
    """The home directory from the argument, else TALLY_HOME, else ./.tally."""
    if home is not None:
        return Path(home)
    env = os.environ.get(HOME_ENV)
    return Path(env) if env else DEFAULT_HOME


def init_home(root: Path) -> list[Path]:
    """Create the home layout idempotently; return what was created. Never overwrites config."""
    created: list[Path] = []
    for sub in ("", *SUBDIRS):
        path = root / sub
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            created.append(path)
    config = root / "config.toml"
    try:
        with open(config, "x", encoding="utf-8") as handle:
            handle.write(CONFIG_TEMPLATE)
        created.append(config)
    except FileExistsError:
        pass
    return created


def load_home(home: str | Path | None = None) -> Home:
    """Read config.toml (if any) of the resolved home; missing settings take defaults."""
    root = resolve_home(home)
    config_path = root / "config.toml"
    raw: dict[str, Any] = {}
    if config_path.is_file():
        try:
            raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(str(exc), path=config_path,
                              hint="fix the TOML syntax, or move the file away") from exc
    paths = _table(raw, "paths", config_path)
    logs = root / str(paths.get("logs", "logs"))
    include = paths.get("include", Home.include)
    if not (isinstance(include, list | tuple) and all(isinstance(p, str) for p in include)):
        raise ConfigError("must be a list of glob patterns", path=config_path,
                          field="paths.include")
    budgets = _table(raw, "budgets", config_path)
    agents = _agents(_table(budgets, "agents", config_path, "budgets"), config_path)
    return Home(
        root=root,
        logs=logs,
        include=tuple(include),
        tailer=_settings(TailerSettings, _table(raw, "tailer", config_path), "tailer", config_path),
        compactor=_settings(CompactorSettings, _table(raw, "compactor", config_path),
                            "compactor", config_path),
        budgets=_settings(BudgetSettings, {k: v for k, v in budgets.items() if k != "agents"},
                          "budgets", config_path, agents=agents),
        pricing=_pricing(_table(raw, "pricing", config_path), config_path),
    )


def _table(raw: dict[str, Any], key: str, path: Path, parent: str = "") -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        name = f"{parent}.{key}" if parent else key
        raise ConfigError("must be a table", path=path, field=name, hint=f"write it as [{name}]")
    return value


def _settings(cls: type[T], values: dict[str, Any], section: str, path: Path,
                 **extra: Any) -> T:
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if not hasattr(defaults, key):
            raise ConfigError("unknown setting", path=path, field=f"{section}.{key}",
                              hint="see the commented template written by `tally init`")
        expected = type(getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"must be a number, got {value!r}", path=path,
                              field=f"{section}.{key}")
        if expected is int and not float(value).is_integer():
            raise ConfigError(f"must be a whole number, got {value!r}", path=path,
                              field=f"{section}.{key}")
        kwargs[key] = expected(value)
    return cls(**kwargs, **extra)


def _agents(values: dict[str, Any], path: Path) -> dict[str, dict[str, float]]:
    """Per-agent budget tables, checked key by key like [budgets] itself."""
    agents: dict[str, dict[str, float]] = {}
    for agent, table in values.items():
        section = f"budgets.agents.{agent}"
        if not isinstance(table, dict) or "agents" in table:
            raise ConfigError("must be a table of budget settings", path=path, field=section,
                              hint=f"write it as [{section}]")
        checked = _settings(BudgetSettings, table, section, path)
        agents[agent] = {key: getattr(checked, key) for key in table}
    return agents


def _pricing(values: dict[str, Any], path: Path) -> dict[str, dict[str, float]]:
    pricing: dict[str, dict[str, float]] = {}
    for model, rates in values.items():
        if not isinstance(rates, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in rates.values()
        ):
            raise ConfigError("must map rate names to numbers (USD per million tokens)",
                              path=path, field=f"pricing.{model}")
        pricing[model] = {k: float(v) for k, v in rates.items()}
    return pricing
