"""pipeline.sources and [[sources]]: where each CLI's logs are found, and what config.toml
may say about them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import init_home, load_home
from pipeline.errors import ConfigError
from pipeline.sources import (
    CLAUDE,
    CODEX,
    GEMINI,
    OPENCODE,
    Root,
    Source,
    opencode_databases,
    roots_of,
)

ENVS = ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_DATA_DIR", "OPENCODE_DATA_DIR",
        "XDG_CONFIG_HOME")


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with none of the CLIs' variables set."""
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    return home


def _paths(source: Source, tally: Path) -> list[str]:
    return [root.path for root in roots_of(source, load_home(tally))]


def test_claude_reads_both_config_dirs_with_projects(fake_home: Path, tmp_path: Path) -> None:
    (fake_home / ".claude" / "projects").mkdir(parents=True)
    (fake_home / ".config" / "claude" / "projects").mkdir(parents=True)
    (fake_home / ".config" / "other").mkdir(parents=True)
    assert _paths(Source(CLAUDE), tmp_path / "t") == [
        str(fake_home / ".config" / "claude" / "projects"), str(fake_home / ".claude" / "projects")]


def test_claude_config_dir_is_the_only_source_and_takes_a_list(
        fake_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (fake_home / ".claude" / "projects").mkdir(parents=True)
    first, second = tmp_path / "a", tmp_path / "b" / "projects"
    (first / "projects").mkdir(parents=True)
    second.mkdir(parents=True)
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", f" {first} ,{second},")
    assert _paths(Source(CLAUDE), tmp_path / "t") == [str(first / "projects"), str(second)]


def test_a_missing_directory_gives_no_root(fake_home: Path, tmp_path: Path) -> None:
    assert _paths(Source(CLAUDE), tmp_path / "t") == []
    assert _paths(Source(GEMINI), tmp_path / "t") == []


def test_codex_reads_sessions_and_archived_else_the_home(fake_home: Path,
                                                          tmp_path: Path) -> None:
    codex = fake_home / ".codex"
    codex.mkdir()
    assert _paths(Source(CODEX), tmp_path / "t") == [str(codex)]
    (codex / "sessions").mkdir()
    (codex / "archived_sessions").mkdir()
    assert _paths(Source(CODEX), tmp_path / "t") == [str(codex / "sessions"),
                                                   str(codex / "archived_sessions")]


def test_a_given_path_wins_over_the_environment(fake_home: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    given = tmp_path / "backup" / ".gemini" / "tmp"
    given.mkdir(parents=True)
    monkeypatch.setenv("GEMINI_DATA_DIR", str(tmp_path / "elsewhere"))
    assert _paths(Source(GEMINI, str(given)), tmp_path / "t") == [str(given)]


def test_opencode_reads_the_main_database_else_the_first_channel(fake_home: Path,
                                                                  tmp_path: Path) -> None:
    data = fake_home / ".local" / "share" / "opencode"
    data.mkdir(parents=True)
    (data / "opencode-beta.db").write_bytes(b"")
    (data / "opencode-alpha.db").write_bytes(b"")
    assert opencode_databases(Source(OPENCODE)) == [data / "opencode-alpha.db"]
    (data / "opencode.db").write_bytes(b"")
    assert opencode_databases(Source(OPENCODE)) == [data / "opencode.db"]
    # Its root is the home's copy of the messages as events, whatever the database.
    assert _paths(Source(OPENCODE), tmp_path / "t") == [
        str(tmp_path / "t" / "state" / "sources" / "opencode" / "opencode")]


def test_a_root_holds_only_paths_below_it() -> None:
    root = Root(CLAUDE, "claude-code", "/x/projects")
    assert root.holds("/x/projects/p/s.jsonl")
    assert not root.holds("/x/projects-old/p/s.jsonl")
    assert not root.holds("/x/projects")


def _config(tmp_path: Path, text: str) -> Path:
    home = tmp_path / "tally"
    init_home(home)
    (home / "config.toml").write_text(text, encoding="utf-8")
    return home


def test_sources_are_read_from_config(tmp_path: Path) -> None:
    home = _config(tmp_path, '[[sources]]\nkind = "claude-code"\n\n'
                             '[[sources]]\nkind = "codex"\npath = "~/c"\nagent = "laptop"\n')
    assert load_home(home).sources == (Source(CLAUDE), Source(CODEX, "~/c", "laptop"))
    assert [s.name for s in load_home(home).sources] == ["claude-code", "laptop"]


@pytest.mark.parametrize(("text", "field", "said"), [
    ('[[sources]]\nkind = "claude"\n', "sources[1].kind", "did you mean 'claude-code'"),
    ('[[sources]]\npath = "/x"\n', "sources[1].kind", "kinds: claude-code"),
    ('[[sources]]\nkind = "codex"\nagnet = "x"\n', "sources[1].agnet", "did you mean 'agent'"),
    ('[[sources]]\nkind = "codex"\npath = ""\n', "sources[1].path", "non-empty text"),
    ('[[sources]]\nkind = "codex"\nagent = 3\n', "sources[1].agent", "non-empty text"),
    ('sources = "codex"\n', "sources", "[[sources]]"),
    ('[[sources]]\nkind = "codex"\n[[sources]]\nkind = "codex"\n', "sources[2]",
     "configured twice"),
])
def test_bad_sources_are_named(tmp_path: Path, text: str, field: str, said: str) -> None:
    home = _config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_home(home)
    assert caught.value.field == field
    assert said in f"{caught.value} {caught.value.hint}"


def test_the_template_documents_sources() -> None:
    from pipeline.settings import CONFIG_TEMPLATE

    assert "[[sources]]" in CONFIG_TEMPLATE
