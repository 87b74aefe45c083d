"""The tally home: where its directories live and what config.toml says."""

from __future__ import annotations

import difflib
import math
import os
import re
import signal
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError, display_path
from pipeline.settings import (
    ALERT_TEXT_KEYS,
    BOUNDS,
    CONFIG_TEMPLATE,
    HOST_KEYS,
    LAKE_KEYS,
    LONG_CONTEXT_THRESHOLD,
    PATHS_KEYS,
    PRICE_KEYS,
    RATE_BOUNDS,
    SECTIONS,
    SERVE_TEXT_KEYS,
    SOURCE_KEYS,
    AlertSettings,
    Bounds,
    BudgetSettings,
    CompactorSettings,
    ServeSettings,
    TailerSettings,
    is_time_zone,
    setting_fields,
)
from pipeline.sources import KINDS, Source
from pipeline.storage import (
    Location,
    default_host_id,
    host_id,
    is_remote_uri,
    lake_options,
    lake_uri,
)

HOME_ENV = "TALLY_HOME"
# Test hook of the kill tests, read by compaction and rebuild: never set in production.
FAULT_ENV = "TALLY_FAULT"
DEFAULT_HOME = Path(".tally")
T = TypeVar("T")
SUBDIRS = ("logs", "stage", "quarantine", "state", "lake")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

@dataclass(frozen=True)
class Home:
    """A tally home directory and its parsed config."""

    root: Path
    logs: Path
    include: tuple[str, ...] = ("*.jsonl", "*.jsonl.[0-9]", "*.jsonl.[0-9][0-9]")
    tailer: TailerSettings = field(default_factory=TailerSettings)
    compactor: CompactorSettings = field(default_factory=CompactorSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    pricing: dict[str, dict[str, float]] = field(default_factory=dict)
    sources: tuple[Source, ...] = ()
    logs_configured: bool = False  # [paths] logs was set in config.toml (see require_logs_dir)
    lake_uri: str = ""  # [lake] uri: "" for <home>/lake
    lake_options: tuple[tuple[str, str], ...] = ()  # how to reach a lake in an object store
    host: str = field(default_factory=default_host_id)  # [host] id

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
        """The lake's directory; for a lake in an object store, the local directory that
        keeps this host's record of it (`_tally_batches.json`)."""
        return self.root / "lake"

    @property
    def lake_location(self) -> Location:
        """Where the lake's tables live."""
        if self.lake_uri and is_remote_uri(self.lake_uri):
            return Location(self.lake_uri.rstrip("/"), self.lake_options)
        return Location.local(self.lake)


_fault_hits: dict[str, int] = {}


def fault(stage: str, point: str) -> None:
    """The kill tests' hook: SIGKILL this process at the n-th `point` of TALLY_FAULT
    (`stage:point[:n]`, n defaulting to 1)."""
    parts = os.environ.get(FAULT_ENV, "").split(":")
    if parts[:2] != [stage, point]:
        return
    key = f"{stage}:{point}"
    _fault_hits[key] = _fault_hits.get(key, 0) + 1
    if _fault_hits[key] == int(parts[2] if len(parts) > 2 else "1"):
        os.kill(os.getpid(), signal.SIGKILL)


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
    for key in raw:
        if key not in SECTIONS:
            raise _unknown_section(key, config_path)
    paths = _table(raw, "paths", config_path)
    _known_keys(paths, PATHS_KEYS, "paths", config_path)
    budgets = _table(raw, "budgets", config_path)
    agents = _agents(_table(budgets, "agents", config_path, "budgets"), config_path)
    alerts = _table(raw, "alerts", config_path)
    serve = _table(raw, "serve", config_path)
    lake = _table(raw, "lake", config_path)
    _known_keys(lake, LAKE_KEYS, "lake", config_path)
    host = _table(raw, "host", config_path)
    _known_keys(host, HOST_KEYS, "host", config_path)
    uri = lake_uri(lake, config_path)
    return Home(
        root=root,
        logs=root / _logs(paths, config_path),
        include=_include(paths, config_path),
        tailer=_settings(TailerSettings, _table(raw, "tailer", config_path), "tailer", config_path),
        compactor=_settings(CompactorSettings, _table(raw, "compactor", config_path),
                            "compactor", config_path),
        budgets=_settings(BudgetSettings, _numbers(budgets, ("agents", "tz")), "budgets",
                          config_path, ("agents", "tz"), agents=agents,
                          tz=_time_zone(budgets, config_path)),
        alerts=_settings(AlertSettings, _numbers(alerts, ALERT_TEXT_KEYS), "alerts",
                         config_path, ALERT_TEXT_KEYS, **_alert_texts(alerts, config_path)),
        serve=_settings(ServeSettings, _numbers(serve, SERVE_TEXT_KEYS), "serve", config_path,
                        SERVE_TEXT_KEYS, **_serve_texts(serve, config_path)),
        pricing=_pricing(_table(raw, "pricing", config_path), config_path),
        sources=_sources(raw.get("sources", []), config_path),
        logs_configured="logs" in paths,
        lake_uri=uri,
        lake_options=lake_options(lake, config_path) if is_remote_uri(uri) else (),
        host=host_id(host, config_path),
    )


def require_logs_dir(home: Home) -> None:
    """ConfigError unless the logs directory exists, or is the default one (which is created)."""
    logs, present = home.logs, home.logs.exists()
    if logs.is_dir() or not (present or home.logs_configured):
        return
    if present:
        problem, hint = "is not a directory", "move it away, or set [paths] logs to a directory"
    else:
        problem = "does not exist"
        hint = f"create it (mkdir -p {display_path(logs)}) or fix [paths] logs"
    raise ConfigError(f"the logs directory {display_path(logs)} {problem}",
                      path=home.config_path, field="paths.logs", hint=hint)


def dotted(*parts: str) -> str:
    """A TOML dotted key, quoting the parts that are not bare keys (`pricing."gpt-4.1"`)."""
    return ".".join(p if _BARE_KEY.fullmatch(p) else '"' + p.replace('"', '\\"') + '"'
                    for p in parts)


def _table(raw: dict[str, Any], key: str, path: Path, parent: str = "") -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        name = f"{parent}.{key}" if parent else key
        raise ConfigError("must be a table", path=path, field=name, hint=f"write it as [{name}]")
    return value


def _unknown(kind: str, name: str, valid: tuple[str, ...] | list[str], path: Path,
             field_name: str) -> ConfigError:
    """An unknown key: a close match if there is one, and every valid name."""
    close = difflib.get_close_matches(name, valid, n=3)
    # Between equally close names, the one starting alike (`prices`: pricing, not sources).
    close = [c for c in close if c[:1] == name[:1]] + close
    prefix = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"unknown {kind}", path=path, field=field_name,
                       hint=f"{prefix}{kind}s: {', '.join(valid)}")


def _unknown_section(key: str, path: Path) -> ConfigError:
    owners = [section for section, cls in _SETTING_SECTIONS.items() if key in setting_fields(cls)]
    owners += ["paths"] if key in PATHS_KEYS else []
    if owners:
        return ConfigError("unknown section", path=path, field=dotted(key),
                           hint=f"{key} belongs under [{owners[0]}]")
    return _unknown("section", key, SECTIONS, path, dotted(key))


def _known_keys(values: dict[str, Any], valid: tuple[str, ...] | list[str], section: str,
                path: Path) -> None:
    for key in values:
        if key not in valid:
            raise _unknown("setting", key, valid, path, f"{section}.{dotted(key)}")


def _logs(paths: dict[str, Any], path: Path) -> str:
    logs = paths.get("logs", "logs")
    if not isinstance(logs, str) or not logs or "\0" in logs:
        raise ConfigError(f"must be a directory name (relative to the home, or absolute), "
                          f"got {logs!r}", path=path, field="paths.logs")
    return logs


def _include(paths: dict[str, Any], path: Path) -> tuple[str, ...]:
    include = paths.get("include", Home.include)
    if not (isinstance(include, list | tuple) and include
            and all(isinstance(p, str) and p for p in include)):
        raise ConfigError(f"must be a non-empty list of glob patterns, got {include!r}",
                          path=path, field="paths.include",
                          hint='for example include = ["*.jsonl"]')
    return tuple(include)


def _settings(cls: type[T], values: dict[str, Any], section: str, path: Path,
              also_valid: tuple[str, ...] = (), **extra: Any) -> T:
    known = setting_fields(cls)
    _known_keys(values, [*known, *also_valid], section, path)
    kwargs = {key: checked_number(value, type(known[key].default), known[key].metadata[BOUNDS],
                                  path, f"{section}.{key}")
              for key, value in values.items()}
    return cls(**kwargs, **extra)


def checked_number(value: Any, kind: type[Any], bounds: Bounds, path: Path,
                   name: str) -> Any:
    """`value` as `kind` (int or float) if it is a finite number within `bounds`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number, got {value!r}", path=path, field=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", path=path, field=name)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"must be a whole number, got {value!r}", path=path, field=name)
    refusal = bounds.refusal(value)
    if refusal is not None:
        raise ConfigError(refusal, path=path, field=name)
    return kind(value)


def _numbers(values: dict[str, Any], text_keys: tuple[str, ...]) -> dict[str, Any]:
    """A section's numeric settings: every key but `text_keys`."""
    return {k: v for k, v in values.items() if k not in text_keys}


def _time_zone(budgets: dict[str, Any], path: Path) -> str:
    """[budgets] tz if it names an IANA time zone."""
    name = budgets.get("tz", "UTC")
    if not isinstance(name, str) or not is_time_zone(name):
        raise ConfigError(f"unknown time zone {name!r}", path=path, field="budgets.tz",
                          hint='an IANA name such as "Europe/Paris" or "UTC"')
    return name


def _alert_texts(alerts: dict[str, Any], path: Path) -> dict[str, str]:
    """[alerts] command and webhook, checked: text, and the webhook an http(s) URL."""
    texts: dict[str, str] = {}
    for key in ALERT_TEXT_KEYS:
        value = alerts.get(key, "")
        if not isinstance(value, str):
            raise ConfigError(f"must be text, got {value!r}", path=path, field=f"alerts.{key}")
        texts[key] = value.strip()
    if texts["webhook"] and not re.match(r"https?://[^/\s]+", texts["webhook"]):
        raise ConfigError(f"must be an http:// or https:// URL, got {texts['webhook']!r}",
                          path=path, field="alerts.webhook",
                          hint='for example webhook = "http://127.0.0.1:9000/alerts"')
    return texts


def _serve_texts(serve: dict[str, Any], path: Path) -> dict[str, str]:
    """[serve] host and token, checked: text without spaces."""
    texts: dict[str, str] = {}
    for key in SERVE_TEXT_KEYS:
        value = serve.get(key, getattr(ServeSettings(), key))
        if not isinstance(value, str) or any(c.isspace() for c in value):
            raise ConfigError(f"must be text without spaces, got {value!r}", path=path,
                              field=f"serve.{key}")
        texts[key] = value
    if not texts["host"]:
        raise ConfigError("must not be empty", path=path, field="serve.host",
                          hint='for example host = "127.0.0.1"')
    return texts


def _agents(values: dict[str, Any], path: Path) -> dict[str, dict[str, float]]:
    """Per-agent budget tables, checked key by key like [budgets] itself."""
    agents: dict[str, dict[str, float]] = {}
    for agent, table in values.items():
        section = dotted("budgets", "agents", agent)
        if not isinstance(table, dict):
            raise ConfigError("must be a table of budget settings", path=path, field=section,
                              hint=f"write it as [{section}]")
        checked = _settings(BudgetSettings, table, section, path)
        # The time zone is the home's: an agent's days and weeks are everyone's.
        agents[agent] = {key: getattr(checked, key) for key in table}
    return agents


def _pricing(values: dict[str, Any], path: Path) -> dict[str, dict[str, float]]:
    pricing: dict[str, dict[str, float]] = {}
    for model, rates in values.items():
        section = dotted("pricing", model)
        if not isinstance(rates, dict):
            raise ConfigError("must map rate names to numbers (USD per million tokens)",
                              path=path, field=section, hint=f"write it as [{section}]")
        _known_keys(rates, PRICE_KEYS, section, path)
        pricing[model] = {
            key: float(checked_number(value, int if key == LONG_CONTEXT_THRESHOLD else float,
                                      RATE_BOUNDS, path, f"{section}.{key}"))
            for key, value in rates.items()}
    return pricing


def _sources(values: Any, path: Path) -> tuple[Source, ...]:
    """[[sources]] entries: a known kind, an optional path and agent name, each agent once."""
    if not isinstance(values, list):
        raise ConfigError("must be an array of tables", path=path, field="sources",
                          hint='write each as [[sources]] with kind = "claude-code"')
    sources: list[Source] = []
    for number, entry in enumerate(values, 1):
        where = f"sources[{number}]"
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", path=path, field=where,
                              hint='write it as [[sources]] with kind = "claude-code"')
        _known_keys(entry, SOURCE_KEYS, where, path)
        kind = entry.get("kind")
        if kind not in KINDS:
            close = difflib.get_close_matches(str(kind), KINDS, n=1)
            prefix = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown source kind {kind!r}", path=path, field=f"{where}.kind",
                              hint=f"{prefix}kinds: {', '.join(KINDS)}")
        texts = {key: entry.get(key) for key in ("path", "agent")}
        for key, value in texts.items():
            longest = 4096 if key == "path" else 256
            if value is not None and not (isinstance(value, str) and value.strip()
                                          and "\0" not in value and len(value) <= longest):
                raise ConfigError(f"must be non-empty text, got {value!r}", path=path,
                                  field=f"{where}.{key}")
        source = Source(kind, texts["path"], (texts["agent"] or "").strip())
        if any(s.name == source.name and s.path == source.path for s in sources):
            raise ConfigError(f"the source {source.name!r} is configured twice", path=path,
                              field=where, hint="give one of them another agent name or path")
        sources.append(source)
    return tuple(sources)


_SETTING_SECTIONS: dict[str, type[Any]] = {
    "tailer": TailerSettings, "compactor": CompactorSettings, "budgets": BudgetSettings,
    "alerts": AlertSettings, "serve": ServeSettings}
