"""pipeline.config: the home layout, where the home is, and what config.toml may say."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from pipeline.config import (
    CONFIG_TEMPLATE,
    BudgetSettings,
    CompactorSettings,
    TailerSettings,
    init_home,
    load_home,
)
from pipeline.errors import ConfigError

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
    ('[pricing."my-model"]\ninput = "cheap"\n', "pricing.my-model"),
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
