"""pipeline.entry: the `tally` executable answers a plain `tally statusline [--home DIR]`
itself, before click is imported, and hands every other call to the click command line."""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import make_home

import pipeline.entry as entry
from pipeline.entry import DEFAULT_HOME, HOME_ENV, statusline_home
from pipeline.live import summary, write_live
from pipeline.statusline import NO_HOME, NO_TOTALS
from pipeline.totals import CountedRow, LiveTotals


@pytest.fixture(autouse=True)
def no_tally_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """TALLY_HOME of the shell running the tests must not leak into them."""
    monkeypatch.delenv(HOME_ENV, raising=False)


# ---------------------------------------------------------------- statusline_home


def test_plain_call_is_the_default_home() -> None:
    assert statusline_home(["statusline"]) == DEFAULT_HOME == ".tally"


def test_plain_call_takes_tally_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOME_ENV, "/srv/tally-home")
    assert statusline_home(["statusline"]) == "/srv/tally-home"


def test_an_empty_tally_home_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """As pipeline.config.resolve_home reads it: empty is unset."""
    monkeypatch.setenv(HOME_ENV, "")
    assert statusline_home(["statusline"]) == DEFAULT_HOME


@pytest.mark.parametrize("args", [["statusline", "--home", "/h/x"], ["statusline", "--home=/h/x"]])
def test_home_option_in_both_spellings(args: list[str]) -> None:
    assert statusline_home(args) == "/h/x"


@pytest.mark.parametrize("args", [["statusline", "--home", "/h/x"], ["statusline", "--home=/h/x"]])
def test_home_option_beats_tally_home(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.setenv(HOME_ENV, "/from/env")
    assert statusline_home(args) == "/h/x"


def test_a_home_with_spaces_and_an_equals_sign_is_kept_whole() -> None:
    assert statusline_home(["statusline", "--home", "/h/my home=1"]) == "/h/my home=1"
    assert statusline_home(["statusline", "--home=/h/my home=1"]) == "/h/my home=1"


@pytest.mark.parametrize("args", [
    [],                                               # bare `tally`
    ["report"],                                       # another command
    ["report", "statusline"],
    ["--home", "/h/x", "statusline"],                 # an option before the command
    ["statusline", "--help"],                         # help is click's
    ["statusline", "-h"],
    ["statusline", "--home"],                         # no value: click says so
    ["statusline", "--home", "/h/x", "extra"],        # extra arguments: click refuses them
    ["statusline", "extra"],
    ["statusline", "--home", "/h/x", "--home", "/h/y"],
    ["statusline", "--home=/h/x", "--help"],
    ["statusline", "--homes=/h/x"],
    ["statusline", "--hom", "/h/x"],                  # click's prefix matching is click's
    ["Statusline"],
])
def test_anything_else_falls_through_to_click(args: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOME_ENV, "/from/env")  # even with a home at hand
    assert statusline_home(args) is None


# ---------------------------------------------------------------- main()


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             args: list[str], stdin: bytes = b"") -> str:
    """entry.main() with these arguments and stdin; what it printed."""
    monkeypatch.setattr(sys, "argv", ["tally", *args])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    entry.main()
    return capsys.readouterr().out


def a_live_home(root: Path, tokens: int) -> Path:
    """A home whose live.json says `tokens` today in session sess-1."""
    home = make_home(root)
    now = datetime.now(UTC)
    totals = LiveTotals()
    totals.add_rows([CountedRow("e1", now, "claude", "sess-1", now.date(), tokens, 0)])
    write_live(home, summary(totals, [], now, None), [])
    return home.root


def test_main_answers_statusline_with_the_home_option(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = a_live_home(tmp_path / "home", 4200)
    printed = run_main(monkeypatch, capsys, ["statusline", f"--home={root}"],
                       b'{"session_id": "sess-1", "model": {"display_name": "Opus"}}')
    assert printed == "Opus · session 4.2k tok $0.00 · today 4.2k tok $0.00\n"


def test_main_answers_statusline_from_tally_home(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = a_live_home(tmp_path / "home", 999)
    monkeypatch.setenv(HOME_ENV, str(root))
    assert run_main(monkeypatch, capsys, ["statusline"]) == "today 999 tok $0.00\n"


def test_main_default_home_is_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    a_live_home(tmp_path / DEFAULT_HOME, 12)
    monkeypatch.chdir(tmp_path)
    assert run_main(monkeypatch, capsys, ["statusline"]) == "today 12 tok $0.00\n"
    monkeypatch.chdir(tmp_path / DEFAULT_HOME)  # no ./.tally here
    assert run_main(monkeypatch, capsys, ["statusline"]) == NO_HOME.format(
        home=DEFAULT_HOME) + "\n"


def test_main_hands_statusline_help_to_click(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_main(monkeypatch, capsys, ["statusline", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: ") and "statusline [OPTIONS]" in out and "--home" in out


def test_main_hands_extra_arguments_to_click(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_main(monkeypatch, capsys, ["statusline", "--home", "/h/x", "extra"])
    assert exited.value.code == 2  # click's usage error, not a statusline
    captured = capsys.readouterr()
    assert "extra" in captured.err and NO_TOTALS not in captured.out
