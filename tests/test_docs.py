"""docs/cli.md is the current CLI's --help: adding or changing a command means regenerating it."""

from __future__ import annotations

import difflib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import main

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gen_cli_docs.py"
CLI_DOC = REPO / "docs" / "cli.md"
REGENERATE = "run: .venv/bin/python scripts/gen_cli_docs.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_doc_is_up_to_date(gen: ModuleType) -> None:
    expected = gen.render()
    current = CLI_DOC.read_text(encoding="utf-8") if CLI_DOC.exists() else ""
    if current != expected:
        diff = "".join(difflib.unified_diff(
            current.splitlines(keepends=True), expected.splitlines(keepends=True),
            "docs/cli.md", "generated", n=1))
        pytest.fail(f"docs/cli.md is out of date; {REGENERATE}\n{diff}")


def test_every_command_is_documented(gen: ModuleType) -> None:
    def paths(command: click.Command, path: tuple[str, ...]) -> set[tuple[str, ...]]:
        found = {path}
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                if not sub.hidden:
                    found |= paths(sub, (*path, name))
        return found

    text = gen.render()
    for path in paths(main, ("tally",)):
        assert f"\n## {' '.join(path)}\n" in text, f"{' '.join(path)} is missing"


def test_doc_shows_what_help_prints(gen: ModuleType) -> None:
    """The generated text is what `tally ... --help` prints at the same width."""
    text = gen.render()
    for args in (["--help"], ["log", "--help"], ["schema", "list", "--help"]):
        result = CliRunner().invoke(main, args, prog_name="tally", terminal_width=gen.WIDTH)
        assert result.exit_code == 0, result.output
        assert result.output.rstrip() in text, f"tally {' '.join(args)} differs"


def test_check_mode_runs_as_a_script(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("stale\n", encoding="utf-8")
    argv = [sys.executable, str(SCRIPT), "--check", "--output", str(stale)]
    assert subprocess.run(argv, capture_output=True, check=False, cwd=tmp_path).returncode == 1
    write = [sys.executable, str(SCRIPT), "--output", str(stale)]
    subprocess.run(write, capture_output=True, check=True, cwd=tmp_path)
    assert subprocess.run(argv, capture_output=True, check=False, cwd=tmp_path).returncode == 0
