"""pipeline.config: the home layout, where the home is, and what config.toml may say."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.config import Home, init_home, load_home, require_logs_dir
from pipeline.errors import ConfigError
from pipeline.pricing import load_pricing
from pipeline.settings import (
    BOUNDS,
    CONFIG_TEMPLATE,
    PRICE_KEYS,
    AlertSettings,
    BudgetSettings,
    CompactorSettings,
    TailerSettings,
)

LAYOUT = ("logs", "stage", "quarantine", "state", "lake")  # DESIGN.md, "Home directory"
OLD = 946_684_800  # 2000-01-01, an mtime no rewrite could keep


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# init_home
# --------------------------------------------------------------------------------------------

def test_init_creates_the_design_layout(tmp_path: Path) -> None:
    home = tmp_path / "nested" / "home"
    created = init_home(home)
    for name in LAYOUT:
        assert (home / name).is_dir(), name
    assert (home / "config.toml").is_file()
    assert set(created) == {home, *(home / name for name in LAYOUT), home / "config.toml"}
    assert sorted(p.name for p in home.iterdir()) == sorted([*LAYOUT, "config.toml"])


def test_init_template_is_valid_toml_and_changes_no_default(tmp_path: Path) -> None:
    init_home(tmp_path)
    text = (tmp_path / "config.toml").read_text(encoding="utf-8")
    assert text == CONFIG_TEMPLATE
    tomllib.loads(text)
    home = load_home(tmp_path)
    assert home.tailer == TailerSettings()
    assert home.compactor == CompactorSettings()
    assert home.budgets == BudgetSettings()
    assert home.pricing == {}
    assert home.logs == tmp_path / "logs"
    # the template documents the seed's budget defaults
    assert "daily_tokens = 150000" in text and "weekly_tokens = 1000000" in text


def test_init_is_idempotent(tmp_path: Path) -> None:
    init_home(tmp_path)
    config = tmp_path / "config.toml"
    os.utime(config, (OLD, OLD))
    before = config.stat().st_mtime_ns
    assert init_home(tmp_path) == []
    assert config.stat().st_mtime_ns == before
    assert config.read_text(encoding="utf-8") == CONFIG_TEMPLATE


def test_init_never_overwrites_an_edited_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[tailer]\nmax_line_bytes = 4096\n")
    created = init_home(tmp_path)
    assert config not in created
    assert config.read_text(encoding="utf-8") == "[tailer]\nmax_line_bytes = 4096\n"
    assert load_home(tmp_path).tailer.max_line_bytes == 4096


def test_init_recreates_only_what_is_missing(tmp_path: Path) -> None:
    init_home(tmp_path)
    (tmp_path / "stage").rmdir()
    assert init_home(tmp_path) == [tmp_path / "stage"]
    assert (tmp_path / "stage").is_dir()


# --------------------------------------------------------------------------------------------
# where the home is
# --------------------------------------------------------------------------------------------

def test_home_argument_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_HOME", str(tmp_path / "env"))
    assert load_home(tmp_path / "arg").root == tmp_path / "arg"
    assert load_home(str(tmp_path / "arg")).root == tmp_path / "arg"


def test_environment_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_HOME", str(tmp_path / "env"))
    home = load_home()
    assert home.root == tmp_path / "env"
    assert home.logs == tmp_path / "env" / "logs"


@pytest.mark.parametrize("env", [None, ""])
def test_default_is_dot_tally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              env: str | None) -> None:
    if env is None:
        monkeypatch.delenv("TALLY_HOME", raising=False)
    else:
        monkeypatch.setenv("TALLY_HOME", env)
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / ".tally", "[tailer]\nbatch_lines = 7\n")
    home = load_home()
    assert home.root == Path(".tally")
    assert home.tailer.batch_lines == 7  # the config of ./.tally was read


def test_config_is_read_from_the_chosen_home(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path / "env", "[tailer]\nbatch_lines = 1\n")
    write_config(tmp_path / "arg", "[tailer]\nbatch_lines = 2\n")
    monkeypatch.setenv("TALLY_HOME", str(tmp_path / "env"))
    assert load_home().tailer.batch_lines == 1
    assert load_home(tmp_path / "arg").tailer.batch_lines == 2


def test_missing_home_loads_defaults(tmp_path: Path) -> None:
    home = load_home(tmp_path / "absent")
    assert home.tailer == TailerSettings() and home.budgets == BudgetSettings()
    assert not (tmp_path / "absent").exists()  # loading creates nothing


# --------------------------------------------------------------------------------------------
# overrides
# --------------------------------------------------------------------------------------------

def test_overrides_are_read(tmp_path: Path) -> None:
    write_config(tmp_path, """
[paths]
logs = "incoming"
include = ["*.log"]

[tailer]
max_line_bytes = 65536
idle_seconds = 5

[compactor]
lock_timeout = 2.5

[budgets]
daily_tokens = 200000
daily_cost_usd = 25
warning_ratio = 0.9

[budgets.agents.claude]
daily_tokens = 80000
daily_cost_usd = 3.5

[budgets.agents.gemini]
weekly_tokens = 500000

[pricing."my-model"]
input = 1.0
output = 4
cache_read = 0.1
""")
    home = load_home(tmp_path)
    assert home.logs == tmp_path / "incoming"
    assert home.include == ("*.log",)
    assert home.tailer.max_line_bytes == 65536
    assert home.tailer.idle_seconds == 5.0 and isinstance(home.tailer.idle_seconds, float)
    assert home.tailer.batch_lines == TailerSettings().batch_lines  # untouched default
    assert home.compactor.lock_timeout == 2.5
    assert home.budgets.daily_tokens == 200000
    assert home.budgets.weekly_tokens == 1_000_000
    assert home.budgets.daily_cost_usd == 25.0
    assert home.budgets.warning_ratio == 0.9
    assert home.budgets.agents == {"claude": {"daily_tokens": 80000, "daily_cost_usd": 3.5},
                                   "gemini": {"weekly_tokens": 500000}}
    assert home.pricing == {"my-model": {"input": 1.0, "output": 4.0, "cache_read": 0.1}}
    assert isinstance(home.pricing["my-model"]["output"], float)


def test_integral_float_is_accepted_for_an_integer_setting(tmp_path: Path) -> None:
    write_config(tmp_path, "[tailer]\nmax_line_bytes = 2048.0\n")
    value = load_home(tmp_path).tailer.max_line_bytes
    assert value == 2048 and type(value) is int


# --------------------------------------------------------------------------------------------
# errors name the file and the field
# --------------------------------------------------------------------------------------------

def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[tailer\nmax_line_bytes = 1\n")
    with pytest.raises(ConfigError) as info:
        load_home(tmp_path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert info.value.hint


def test_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b"[tailer]\nname = \"\xff\"\n")
    with pytest.raises(ConfigError) as info:
        load_home(tmp_path)
    assert str(tmp_path / "config.toml") in str(info.value)


@pytest.mark.parametrize(("text", "field"), [
    ('[tailer]\nmax_line_bytes = "big"\n', "tailer.max_line_bytes"),
    ("[tailer]\nmax_line_bytes = true\n", "tailer.max_line_bytes"),
    ("[tailer]\nmax_line_bytes = 1.5\n", "tailer.max_line_bytes"),
    ("[tailer]\nrescan_seconds = [1]\n", "tailer.rescan_seconds"),
    ("[tailer]\nmax_lines = 5\n", "tailer.max_lines"),
    ("tailer = 5\n", "tailer"),
    ('[compactor]\nlock_timeout = "1m"\n', "compactor.lock_timeout"),
    ("[budgets]\ndaily_tokens = [1]\n", "budgets.daily_tokens"),
    ('[budgets]\nwarning_ratio = "80%"\n', "budgets.warning_ratio"),
    ("[budgets]\nagents = 3\n", "budgets.agents"),
    ('[budgets.agents.claude]\ndaily_tokens = "lots"\n', "budgets.agents.claude.daily_tokens"),
    ("[budgets.agents.claude]\ndaily_tokenz = 5\n", "budgets.agents.claude.daily_tokenz"),
    ("[budgets.agents]\nclaude = 5\n", "budgets.agents.claude"),
    ('[pricing."my-model"]\ninput = "cheap"\n', "pricing.my-model.input"),
    ('[pricing]\n"my-model" = 3\n', "pricing.my-model"),
    ("pricing = 1\n", "pricing"),
    ('[paths]\ninclude = "*.jsonl"\n', "paths.include"),
    ("[paths]\ninclude = [1]\n", "paths.include"),
])
def test_wrong_types_name_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_home(tmp_path)
    assert info.value.path == path
    assert info.value.field == field
    assert f"{path}: {field}:" in str(info.value)



# --------------------------------------------------------------------------------------------
# unknown sections and keys
# --------------------------------------------------------------------------------------------

def load_error(home: Path, text: str) -> ConfigError:
    write_config(home, text)
    with pytest.raises(ConfigError) as info:
        load_home(home)
    return info.value


@pytest.mark.parametrize(("text", "field", "close"), [
    ("[tailor]\nbatch_lines = 5\n", "tailor", "tailer"),
    ("[compacter]\n", "compacter", "compactor"),
    ("[budget]\ndaily_tokens = 5\n", "budget", "budgets"),
    ('[prices."m"]\ninput = 1\n', "prices", "pricing"),
    ("[path]\nlogs = 'x'\n", "path", "paths"),
])
def test_unknown_section_suggests_the_close_one(tmp_path: Path, text: str, field: str,
                                               close: str) -> None:
    error = load_error(tmp_path, text)
    assert (error.path, error.field) == (tmp_path / "config.toml", field)
    assert error.message == f"{tmp_path / 'config.toml'}: {field}: unknown section"
    assert error.hint == (f"did you mean {close!r}? "
                          "sections: paths, tailer, compactor, budgets, alerts, serve, lake, host, "
                          "pricing, sources")


def test_unknown_section_with_nothing_close_lists_the_sections(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[zzz]\n")
    assert error.field == "zzz"
    assert error.hint == ("sections: paths, tailer, compactor, budgets, alerts, serve, lake, host, "
                          "pricing, sources")


def test_a_setting_outside_its_section_says_where_it_belongs(tmp_path: Path) -> None:
    error = load_error(tmp_path, "max_line_bytes = 4096\n[tailer]\n")
    assert error.field == "max_line_bytes"
    assert error.hint == "max_line_bytes belongs under [tailer]"
    assert load_error(tmp_path, 'logs = "x"\n').hint == "logs belongs under [paths]"


@pytest.mark.parametrize(("text", "field", "close"), [
    ('[paths]\nlog = "x"\n', "paths.log", "logs"),
    ('[paths]\nincludes = ["*"]\n', "paths.includes", "include"),
    ("[tailer]\nmax_line_byte = 4096\n", "tailer.max_line_byte", "max_line_bytes"),
    ("[tailer]\nworker = 1\n", "tailer.worker", "workers"),
    ("[compactor]\nlock_timout = 1\n", "compactor.lock_timout", "lock_timeout"),
    ("[budgets]\ndaily_token = 1\n", "budgets.daily_token", "daily_tokens"),
    ("[budgets]\nagent = {}\n", "budgets.agent", "agents"),
    ("[budgets.agents.claude]\nwarning_ratoi = 0.5\n", "budgets.agents.claude.warning_ratoi",
     "warning_ratio"),
    ('[pricing."my-model"]\ninptu = 1\n', "pricing.my-model.inptu", "input"),
    ('[pricing."gpt-4.1"]\ncache_wrte = 1\n', 'pricing."gpt-4.1".cache_wrte', "cache_write"),
    ('[pricing."m"]\nlong_context_treshold = 1\n', "pricing.m.long_context_treshold",
     "long_context_threshold"),
])
def test_unknown_key_names_the_dotted_field_and_suggests(tmp_path: Path, text: str, field: str,
                                                        close: str) -> None:
    error = load_error(tmp_path, text)
    assert error.field == field
    assert error.message == f"{tmp_path / 'config.toml'}: {field}: unknown setting"
    assert error.hint is not None
    assert error.hint.startswith(f"did you mean {close!r}? settings: ")


def test_unknown_key_with_nothing_close_lists_every_setting(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[compactor]\nzzz = 1\n")
    assert error.hint == ("settings: lock_timeout, target_file_mb, auto_optimize_files, "
                          "vacuum_retention_hours, every")
    error = load_error(tmp_path, "[budgets]\nmonthly_tokens = 5\n")
    assert error.field == "budgets.monthly_tokens"
    assert error.hint is not None and error.hint.endswith(
        "settings: daily_tokens, weekly_tokens, daily_cost_usd, weekly_cost_usd, "
        "warning_ratio, agents, tz")
    error = load_error(tmp_path, "[budgets.agents.claude]\nagents = {}\n")
    assert error.field == "budgets.agents.claude.agents"


def test_every_price_key_config_accepts_is_one_pricing_applies(tmp_path: Path) -> None:
    text = '[pricing."my-model"]\n' + "".join(f"{key} = 2\n" for key in PRICE_KEYS)
    write_config(tmp_path, text)
    home = load_home(tmp_path)
    assert set(home.pricing["my-model"]) == set(PRICE_KEYS)
    price = load_pricing(home.pricing).models["my-model"]
    assert price.long_context is not None and price.long_context.threshold == 2


# --------------------------------------------------------------------------------------------
# ranges
# --------------------------------------------------------------------------------------------

# section.key -> (kind, low, low inclusive, high); written out again here, not read from
# config.py, so that a changed range fails a test.
RANGES: dict[str, tuple[type, float, bool, float]] = {
    "tailer.max_line_bytes": (int, 128, True, 1 << 30),
    "tailer.rescan_seconds": (float, 0, False, math.inf),
    "tailer.sources_rescan_seconds": (float, 0, False, math.inf),
    "tailer.idle_seconds": (float, 0, False, math.inf),
    "tailer.batch_lines": (int, 1, True, 10_000_000),
    "tailer.status_interval": (float, 0, False, math.inf),
    "tailer.workers": (int, 0, True, 4),
    "tailer.parallel_min_bytes": (int, 0, True, math.inf),
    "compactor.lock_timeout": (float, 0, True, math.inf),
    "compactor.target_file_mb": (int, 1, True, 100_000),
    "compactor.auto_optimize_files": (int, 0, True, 10_000),
    "compactor.vacuum_retention_hours": (float, 0, True, math.inf),
    "compactor.every": (float, 0, False, math.inf),
    "budgets.weekly_cost_usd": (float, 0, True, math.inf),
    "alerts.timeout": (float, 0, False, 3600),
    "alerts.retry_max_seconds": (float, 0, False, math.inf),
    "budgets.daily_tokens": (int, 0, True, math.inf),
    "budgets.weekly_tokens": (int, 0, True, math.inf),
    "budgets.daily_cost_usd": (float, 0, True, math.inf),
    "budgets.warning_ratio": (float, 0, False, 1),
    "budgets.agents.claude.daily_tokens": (int, 0, True, math.inf),
    "budgets.agents.claude.warning_ratio": (float, 0, False, 1),
    "pricing.m.input": (float, 0, True, math.inf),
    "pricing.m.cache_write_1h": (float, 0, True, math.inf),
    "pricing.m.long_context_output": (float, 0, True, math.inf),
    "pricing.m.long_context_threshold": (int, 0, True, math.inf),
}


def setting_text(name: str, value: float) -> str:
    """config.toml setting one value; the other keys a priced model needs come along."""
    section, key = name.rsplit(".", 1)
    number = repr(value) if isinstance(value, float) else str(value)
    others = "input = 1\noutput = 2\n" if section == "pricing.m" and key not in (
        "input", "output") else ""
    return f"[{section}]\n{others}{key} = {number}\n"


def accepted(name: str, value: float) -> bool:
    kind, low, inclusive, high = RANGES[name]
    if not math.isfinite(value) or (kind is int and not float(value).is_integer()):
        return False
    return (value >= low if inclusive else value > low) and value <= high


def loaded(home: Home, name: str) -> float:
    parts = name.split(".")
    if parts[0] == "pricing":
        return home.pricing["m"][parts[-1]]
    if parts[1] == "agents":
        return home.budgets.agents["claude"][parts[-1]]
    value: float = getattr(getattr(home, parts[0]), parts[-1])
    return value


def test_the_ranges_cover_every_numeric_setting() -> None:
    for cls, section in ((TailerSettings, "tailer"), (CompactorSettings, "compactor"),
                         (BudgetSettings, "budgets"), (AlertSettings, "alerts")):
        names = {f.name for f in fields(cls) if f.name not in ("agents", "tz", "command",
                                                                "webhook")}
        assert names == {f.name for f in fields(cls) if BOUNDS in f.metadata}
        assert {f"{section}.{n}" for n in names} <= set(RANGES)
        defaults = cls()
        for name in names:  # the defaults lie in their own ranges
            assert accepted(f"{section}.{name}", getattr(defaults, name)), name


numbers = st.one_of(
    st.integers(min_value=-(2 ** 62), max_value=2 ** 62),
    st.integers(min_value=-3, max_value=12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2, max_value=2),
    st.sampled_from([0, 1, 4, 5, 127, 128, 1 << 30, (1 << 30) + 1, 10_000_000, 10_000_001,
                     100_000, 100_001, 0.0, -0.0, 1.0, 1.5, 5e-324]),
)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(RANGES)), value=numbers)
@example(name="tailer.max_line_bytes", value=0)
@example(name="tailer.batch_lines", value=-1)
@example(name="tailer.workers", value=1000)
@example(name="tailer.rescan_seconds", value=math.nan)
@example(name="budgets.warning_ratio", value=1.0000001)
@example(name="budgets.daily_cost_usd", value=2 ** 61 + 1)
def test_a_value_is_accepted_exactly_when_in_range(tmp_path: Path, name: str,
                                                   value: float) -> None:
    path = write_config(tmp_path, setting_text(name, value))
    if accepted(name, value):
        kind = float if name.startswith("pricing.") else RANGES[name][0]  # pricing keeps floats
        got = loaded(load_home(tmp_path), name)
        assert (got, type(got)) == (kind(value), kind)
        return
    with pytest.raises(ConfigError) as info:
        load_home(tmp_path)
    assert (info.value.path, info.value.field) == (path, name)


def edges(name: str) -> list[float]:
    """The values either side of each bound of a setting."""
    kind, low, _, high = RANGES[name]
    step = 1 if kind is int else 1e-9
    around = [low - step, low, low + step]
    if math.isfinite(high):
        around += [high - step, high, high + step]
    return [kind(value) for value in around]


@pytest.mark.parametrize("name", sorted(RANGES))
def test_the_edges_of_each_range(tmp_path: Path, name: str) -> None:
    verdicts = []
    for value in edges(name):
        write_config(tmp_path, setting_text(name, value))
        try:
            load_home(tmp_path)
            verdicts.append(True)
        except ConfigError as error:
            assert error.field == name
            verdicts.append(False)
    assert verdicts == [accepted(name, value) for value in edges(name)]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("tailer.max_line_bytes", 0, "must be between 128 and 1073741824, got 0"),
    ("tailer.batch_lines", -5, "must be between 1 and 10000000, got -5"),
    ("tailer.workers", 1000, "must be between 0 and 4, got 1000"),
    ("tailer.rescan_seconds", 0, "must be greater than 0, got 0"),
    ("tailer.idle_seconds", math.inf, "must be a finite number, got inf"),
    ("tailer.status_interval", math.nan, "must be a finite number, got nan"),
    ("tailer.parallel_min_bytes", -1, "must be at least 0, got -1"),
    ("compactor.lock_timeout", -5.0, "must be at least 0, got -5.0"),
    ("compactor.target_file_mb", 100_001, "must be between 1 and 100000, got 100001"),
    ("compactor.auto_optimize_files", -1, "must be between 0 and 10000, got -1"),
    ("budgets.warning_ratio", 0, "must be greater than 0 and at most 1, got 0"),
    ("budgets.warning_ratio", 1.5, "must be greater than 0 and at most 1, got 1.5"),
    ("budgets.agents.claude.daily_tokens", -1, "must be at least 0, got -1"),
    ("pricing.m.input", -0.5, "must be at least 0, got -0.5"),
    ("pricing.m.long_context_threshold", 1.5, "must be a whole number, got 1.5"),
])
def test_out_of_range_message(tmp_path: Path, name: str, value: float, message: str) -> None:
    error = load_error(tmp_path, setting_text(name, value))
    assert error.message == f"{tmp_path / 'config.toml'}: {name}: {message}"


@pytest.mark.parametrize(("text", "field"), [
    ('[paths]\nlogs = ""\n', "paths.logs"),
    ("[paths]\nlogs = 5\n", "paths.logs"),
    ('[paths]\nlogs = ["a"]\n', "paths.logs"),
    ('[paths]\nlogs = "a\\u0000b"\n', "paths.logs"),
    ("[paths]\ninclude = []\n", "paths.include"),
    ('[paths]\ninclude = ["*.jsonl", ""]\n', "paths.include"),
])
def test_paths_must_name_something(tmp_path: Path, text: str, field: str) -> None:
    assert load_error(tmp_path, text).field == field


# --------------------------------------------------------------------------------------------
# the logs directory
# --------------------------------------------------------------------------------------------

def test_logs_configured_records_whether_config_named_the_logs(tmp_path: Path) -> None:
    assert load_home(tmp_path / "none").logs_configured is False
    write_config(tmp_path / "default", "[tailer]\nbatch_lines = 5\n")
    assert load_home(tmp_path / "default").logs_configured is False
    write_config(tmp_path / "set", '[paths]\nlogs = "in"\n')
    home = load_home(tmp_path / "set")
    assert (home.logs_configured, home.logs) == (True, tmp_path / "set" / "in")


def test_a_missing_default_logs_directory_is_fine(tmp_path: Path) -> None:
    home = load_home(tmp_path / "home")
    require_logs_dir(home)  # the tailer creates it
    assert not home.logs.exists()


@pytest.mark.parametrize("logs", ["incoming", "/nonexistent/tally-logs"])
def test_a_missing_configured_logs_directory_is_an_error(tmp_path: Path, logs: str) -> None:
    write_config(tmp_path, f'[paths]\nlogs = "{logs}"\n')
    home = load_home(tmp_path)
    with pytest.raises(ConfigError) as info:
        require_logs_dir(home)
    shown = tmp_path / logs
    assert (info.value.path, info.value.field) == (tmp_path / "config.toml", "paths.logs")
    assert info.value.message == (f"{tmp_path / 'config.toml'}: paths.logs: the logs directory "
                                  f"{shown} does not exist")
    assert info.value.hint == f"create it (mkdir -p {shown}) or fix [paths] logs"
    assert info.value.exit_code == 3
    if logs == "incoming":
        shown.mkdir()
        require_logs_dir(home)  # once it exists, all is well


@pytest.mark.parametrize("configured", [True, False])
def test_a_logs_path_that_is_a_file_is_an_error(tmp_path: Path, configured: bool) -> None:
    write_config(tmp_path, '[paths]\nlogs = "logs"\n' if configured else "")
    (tmp_path / "logs").write_text("not a directory\n")
    with pytest.raises(ConfigError) as info:
        require_logs_dir(load_home(tmp_path))
    assert info.value.field == "paths.logs"
    assert info.value.message.endswith(f"the logs directory {tmp_path / 'logs'} is not a "
                                       "directory")


def test_budgets_tz_must_be_an_iana_zone(tmp_path: Path) -> None:
    write_config(tmp_path, '[budgets]\ntz = "Europe/Istanbul"\n')
    assert load_home(tmp_path).budgets.tz == "Europe/Istanbul"
    for bad in ('"Mars/Olympus"', "3", '""'):
        error = load_error(tmp_path, f"[budgets]\ntz = {bad}\n")
        assert error.field == "budgets.tz"
        assert error.hint is not None and "IANA" in error.hint
    error = load_error(tmp_path, '[budgets.agents.claude]\ntz = "UTC"\n')
    assert error.field == "budgets.agents.claude.tz"  # one time zone per home


def test_alerts_section(tmp_path: Path) -> None:
    write_config(tmp_path, '[alerts]\ncommand = " notify-send tally "\n'
                 'webhook = "http://127.0.0.1:9000/hook"\ntimeout = 2.5\n')
    alerts = load_home(tmp_path).alerts
    assert (alerts.command, alerts.webhook, alerts.timeout) == (
        "notify-send tally", "http://127.0.0.1:9000/hook", 2.5)
    error = load_error(tmp_path, '[alerts]\nwebhook = "ftp://x"\n')
    assert error.field == "alerts.webhook"
    assert load_error(tmp_path, "[alerts]\ncommand = 1\n").field == "alerts.command"
    assert load_error(tmp_path, "[alerts]\ncomand = 'x'\n").hint.startswith(
        "did you mean 'command'?")


def test_serve_section_defaults(tmp_path: Path) -> None:
    write_config(tmp_path, "")
    serve = load_home(tmp_path).serve
    assert (serve.host, serve.port, serve.token) == ("127.0.0.1", 8787, "")
    init_home(tmp_path / "fresh")  # the template changes none of them
    assert load_home(tmp_path / "fresh").serve == serve


def test_serve_section_values_are_read(tmp_path: Path) -> None:
    write_config(tmp_path, '[serve]\nhost = "0.0.0.0"\nport = 9000\ntoken = "s3cr3t-t0ken"\n')
    serve = load_home(tmp_path).serve
    assert (serve.host, serve.port, serve.token) == ("0.0.0.0", 9000, "s3cr3t-t0ken")
    write_config(tmp_path, "[serve]\nport = 65535.0\n")
    port = load_home(tmp_path).serve.port
    assert (port, type(port)) == (65535, int)


@pytest.mark.parametrize(("value", "message"), [
    ("65536", "must be between 0 and 65535, got 65536"),
    ("-1", "must be between 0 and 65535, got -1"),
    ("80.5", "must be a whole number, got 80.5"),
    ('"8787"', "must be a number, got '8787'"),
])
def test_serve_port_out_of_range_is_refused(tmp_path: Path, value: str, message: str) -> None:
    error = load_error(tmp_path, f"[serve]\nport = {value}\n")
    assert error.field == "serve.port"
    assert error.message.endswith(message)
    assert error.exit_code == 3


@pytest.mark.parametrize(("text", "field"), [
    ('[serve]\ntoken = "two words"\n', "serve.token"),
    ('[serve]\ntoken = "tab\\there"\n', "serve.token"),
    ("[serve]\ntoken = 1234\n", "serve.token"),
    ('[serve]\nhost = "local host"\n', "serve.host"),
    ('[serve]\nhost = ""\n', "serve.host"),
    ("[serve]\nhost = 127\n", "serve.host"),
])
def test_serve_host_and_token_must_be_text_without_spaces(tmp_path: Path, text: str,
                                                          field: str) -> None:
    assert load_error(tmp_path, text).field == field


def test_unknown_key_in_serve_is_refused(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[serve]\nprot = 9000\n")
    assert error.field == "serve.prot"
    assert error.hint is not None and error.hint.startswith("did you mean 'port'?")
    assert "host" in error.hint and "token" in error.hint  # every valid name is listed
    assert load_error(tmp_path, "[serve]\nbind = '0.0.0.0'\n").field == "serve.bind"
    assert load_error(tmp_path, "serve = 1\n").field == "serve"  # a table, not a value
