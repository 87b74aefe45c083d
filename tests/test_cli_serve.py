"""`tally serve` as a translator: its options and config.toml's [serve] become the library
call's arguments; the library's refusal becomes one error line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import make_home

from pipeline.cli import main
from pipeline.config import Home
from pipeline.errors import ServeError
from pipeline.web import server


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []

    def fake_serve(home: Home, host: str, port: int, token: str, ready: Any) -> None:
        made.append({"home": home.root, "host": host, "port": port, "token": token})
        ready("http://example:1/")

    monkeypatch.setattr(server, "serve", fake_serve)
    return made


def test_defaults_come_from_the_config(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    home = make_home(tmp_path / "home", '[serve]\nport = 9001\ntoken = "t"\n')
    result = CliRunner().invoke(main, ["serve", "--home", str(home.root)])
    assert result.exit_code == 0, result.output
    assert calls == [{"home": home.root, "host": "127.0.0.1", "port": 9001, "token": ""}]
    assert "tally serve: http://example:1/" in result.stderr


def test_options_win_over_the_config(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    home = make_home(tmp_path / "home", '[serve]\nport = 9001\nhost = "::1"\n')
    result = CliRunner().invoke(main, ["serve", "--home", str(home.root), "--host", "0.0.0.0",
                                       "--port", "0", "--token", "s3cret"])
    assert result.exit_code == 0, result.output
    assert calls[0] | {"home": None} == {"home": None, "host": "0.0.0.0", "port": 0,
                                         "token": "s3cret"}


def test_the_token_may_come_from_the_environment(tmp_path: Path,
                                                 calls: list[dict[str, Any]]) -> None:
    home = make_home(tmp_path / "home")
    result = CliRunner().invoke(main, ["serve", "--home", str(home.root)],
                                env={"TALLY_SERVE_TOKEN": "from-env"})
    assert result.exit_code == 0 and calls[0]["token"] == "from-env"


def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path,
                                              calls: list[dict[str, Any]]) -> None:
    home = make_home(tmp_path / "home")
    result = CliRunner().invoke(main, ["serve", "--home", str(home.root), "--port", "70000"])
    assert result.exit_code == 2 and "70000" in result.stderr and not calls


def test_a_refusal_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise ServeError("0.0.0.0 is reachable from other machines: it needs a token",
                         hint="give --token SECRET")

    monkeypatch.setattr(server, "serve", refuse)
    home = make_home(tmp_path / "home")
    result = CliRunner().invoke(main, ["serve", "--home", str(home.root), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: 0.0.0.0 is reachable from other machines: it needs a token",
        "  hint: give --token SECRET"]


def test_a_missing_home_is_said(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(main, ["serve", "--home", str(tmp_path / "nowhere")])
    assert result.exit_code == 3 and "nowhere" in result.stderr and not calls


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "tally serve --host 0.0.0.0 --token" in result.output
