"""Sources: the logs agent CLIs already write, found where the CLIs (and ccusage) keep them.

A source is a `[[sources]]` entry of config.toml (kind, optional path, optional agent
name) or the argument of `tally import`. It resolves to roots: directories whose files the
tailer follows like logs/, each line translated by the kind's importer
(pipeline.importers) before it is checked. Discovery follows ccusage 20 (`paths.rs` of
each adapter), so tally reads the files ccusage reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Home

CLAUDE, CODEX, GEMINI, OPENCODE = "claude-code", "codex", "gemini", "opencode"
KINDS = (CLAUDE, CODEX, GEMINI, OPENCODE)
KIND_ENV = {CLAUDE: "CLAUDE_CONFIG_DIR", CODEX: "CODEX_HOME", GEMINI: "GEMINI_DATA_DIR",
            OPENCODE: "OPENCODE_DATA_DIR"}
KIND_HINT = {
    CLAUDE: "Claude Code keeps transcripts in ~/.claude/projects (or $CLAUDE_CONFIG_DIR)",
    CODEX: "Codex keeps rollouts in ~/.codex/sessions (or $CODEX_HOME/sessions)",
    GEMINI: "Gemini CLI keeps chats in ~/.gemini/tmp (or $GEMINI_DATA_DIR)",
    OPENCODE: "opencode keeps its database in ~/.local/share/opencode (or $OPENCODE_DATA_DIR)",
}
JSONL = ("*.jsonl",)


@dataclass(frozen=True)
class Source:
    """A source as configured: its kind, where it is (None: discovered) and the agent name."""

    kind: str
    path: str | None = None
    agent: str = ""

    @property
    def name(self) -> str:
        """The agent its events carry."""
        return self.agent or self.kind


@dataclass(frozen=True)
class Root:
    """A directory whose matching files one source reads, and the agent they belong to."""

    kind: str
    agent: str
    path: str  # absolute, without a trailing separator
    patterns: tuple[str, ...] = JSONL
    source: Source | None = field(default=None, compare=False)

    def holds(self, path: str) -> bool:
        """Whether `path` lies below this root."""
        return path.startswith(self.path + os.sep)


def split_dirs(value: str, expand: bool = True) -> list[str]:
    """A comma-separated list of directories, as the CLIs' environment variables give them."""
    parts = [part.strip() for part in value.split(",")]
    return [os.path.expanduser(part) if expand else part for part in parts if part]


def _home() -> str:
    return os.path.expanduser("~")


def candidate_dirs(source: Source) -> list[str]:
    """The directories a source would read, whether or not they exist."""
    if source.path:
        return [os.path.abspath(os.path.expanduser(source.path))]
    env = os.environ.get(KIND_ENV[source.kind], "")
    if env:
        return [os.path.abspath(d) for d in split_dirs(env, expand=source.kind != CODEX)]
    home = _home()
    if source.kind == CLAUDE:
        config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        return [os.path.join(config, "claude"), os.path.join(home, ".claude")]
    if source.kind == CODEX:
        return [os.path.join(home, ".codex")]
    if source.kind == GEMINI:
        return [os.path.join(home, ".gemini", "tmp")]
    return [os.path.join(home, ".local", "share", "opencode")]


def roots_of(source: Source, home: Home) -> list[Root]:
    """The directories whose files `source` reads, those that exist, deduplicated. An
    opencode source's is the home's copy of its database as events (see export_opencode)."""
    if source.kind == OPENCODE:
        return [Root(OPENCODE, source.name, str(opencode_copy(home, source)), source=source)]
    found: list[Root] = []
    for directory in candidate_dirs(source):
        for path in _kind_roots(source.kind, directory):
            root = Root(source.kind, source.name, os.path.normpath(path), source=source)
            if os.path.isdir(root.path) and root not in found:
                found.append(root)
    return found


def _kind_roots(kind: str, directory: str) -> list[str]:
    if kind == CLAUDE:
        # An entry may be the config dir or its projects/ directory.
        if os.path.basename(os.path.normpath(directory)) == "projects":
            return [directory]
        return [os.path.join(directory, "projects")]
    if kind == CODEX:
        subdirs = [os.path.join(directory, sub) for sub in ("sessions", "archived_sessions")]
        present = [sub for sub in subdirs if os.path.isdir(sub)]
        # A home with neither is read as a directory of saved `codex exec --json` output.
        return present or [directory]
    return [directory]


def opencode_copy(home: Home, source: Source) -> Path:
    """Where the home keeps an opencode source's messages as tally events."""
    return home.state / "sources" / "opencode" / source.name


def opencode_databases(source: Source) -> list[Path]:
    """opencode's SQLite database in each data directory: opencode.db, else the first
    opencode-<channel>.db (as ccusage reads it)."""
    found: list[Path] = []
    for directory in map(Path, candidate_dirs(source)):
        main = directory / "opencode.db"
        if main.is_file():
            found.append(main)
            continue
        channels = sorted(directory.glob("opencode-*.db")) if directory.is_dir() else []
        if channels:
            found.append(channels[0])
    return found
