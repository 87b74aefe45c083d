"""tally pricing and tally pricing import, through CliRunner on homes made by `tally init`:
an import changes the cost a report gives, config.toml still wins, bad files are one
error line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import main

MODEL = "claude-sonnet-4-5-20250929"


def tally(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--home", str(home)])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + result.stderr
    return result


def new_home(tmp_path: Path, config: str = "") -> Path:
    """A home made by `tally init` whose stage holds one request of MODEL: 100k tokens in,
    10k out (shipped prices: $0.30 + $0.15; under the long-context threshold)."""
    home = tmp_path / "home"
    ok(tally(home, "init"))
    if config:
        with (home / "config.toml").open("a", encoding="utf-8") as handle:
            handle.write(config)
    ok(tally(home, "log", "agent_token_usage", "--agent", "claude", f"model={MODEL}",
             "input_tokens=100000", "output_tokens=10000"))
    ok(tally(home, "tail", "--once"))
    return home


def cost(home: Path) -> float:
    rows = json.loads(ok(tally(home, "report", "--by", "model", "--format", "json")).stdout)
    [row] = rows
    assert row["model"] == MODEL
    value: float = row["cost_usd"]
    return value


def litellm(tmp_path: Path, **models: dict[str, Any]) -> Path:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps({"sample_spec": {"mode": "one of: chat, embedding"}, **models}),
                    encoding="utf-8")
    return path


def sonnet(input_: float, output: float) -> dict[str, Any]:
    return {"input_cost_per_token": input_, "output_cost_per_token": output,
            "litellm_provider": "anthropic", "mode": "chat"}


def one_error(result: Result, code: int, start: str) -> str:
    assert result.exit_code == code, result.output + result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: {start}"), result.stderr
    assert len(lines) == 2 and lines[1].startswith("  hint: "), lines
    assert "Traceback" not in result.output
    return result.stderr


# ---------------------------------------------------------------- import


def test_an_import_changes_the_cost_of_a_report(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    assert cost(home) == pytest.approx(0.45)
    source = litellm(tmp_path, **{MODEL: sonnet(6e-06, 3e-05),
                                  f"anthropic/{MODEL}": sonnet(6e-06, 3e-05),
                                  "text-embedding-3-small": {"mode": "embedding"}})
    result = ok(tally(home, "pricing", "import", str(source)))
    assert result.stdout.startswith(f"imported 2 of 4 entries from {source} into "
                                    f"{home / 'pricing.json'}")
    assert "skipped 2: 1 the sample_spec entry; 1 mode embedding" in result.stdout
    assert "prices in use that change: 2" in result.stdout
    assert (home / "pricing.json").is_file()
    assert cost(home) == pytest.approx(0.6 + 0.3)


def test_dry_run_shows_the_changes_and_writes_nothing(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    source = litellm(tmp_path, **{MODEL: sonnet(6e-06, 3e-05)})
    result = ok(tally(home, "pricing", "import", str(source), "--dry-run"))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("would import 1 of 2 entries")
    assert "nothing written (--dry-run)" in lines
    changed = {tuple(line.split()) for line in lines if line.startswith(MODEL)}
    assert (MODEL, "input", "3", "6") in changed and (MODEL, "output", "15", "30") in changed
    assert not (home / "pricing.json").exists()
    assert cost(home) == pytest.approx(0.45)


def test_json_output(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    source = litellm(tmp_path, **{MODEL: sonnet(6e-06, 3e-05), "new-model": sonnet(1e-06, 1e-06)})
    found = json.loads(ok(tally(home, "pricing", "import", str(source), "--format", "json",
                                "--dry-run")).stdout)
    assert (found["written"], found["keys"], found["new"], found["replaced"]) == (False, 2, 1, 1)
    assert found["skipped"] == {"the sample_spec entry": 1}
    [change] = found["changes"]
    assert change["model"] == MODEL
    assert change["before"]["input"] == 3.0 and change["before"]["origin"] == "shipped"
    assert change["after"]["input"] == 6.0 and change["after"]["origin"] == "imported"


def test_config_toml_still_wins_over_the_import(tmp_path: Path) -> None:
    home = new_home(tmp_path, f'\n[pricing."{MODEL}"]\ninput = 1.0\n')
    assert cost(home) == pytest.approx(0.1 + 0.15)
    ok(tally(home, "pricing", "import", str(litellm(tmp_path, **{MODEL: sonnet(6e-06, 3e-05)}))))
    assert cost(home) == pytest.approx(0.1 + 0.3)  # input from config, output imported


def test_the_listing_shows_where_each_price_comes_from(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    ok(tally(home, "pricing", "import", str(litellm(tmp_path, **{MODEL: sonnet(6e-06, 3e-05),
                                                                 "gemini/gemini-9": sonnet(
                                                                     1e-06, 2e-06)}))))
    found = json.loads(ok(tally(home, "pricing", "--model", MODEL, "--format", "json")).stdout)
    [price] = found["models"]
    assert (price["model"], price["origin"], price["input"]) == (MODEL, "imported", 6.0)
    assert "LiteLLM" in found["source"]
    gemini = json.loads(ok(tally(home, "pricing", "--model", "gemini/gemini-9",
                                 "--format", "json")).stdout)
    assert [m["model"] for m in gemini["models"]] == ["gemini-9"]
    assert gemini["aliases"] == {"gemini/gemini-9": "gemini-9"}
    table = ok(tally(home, "pricing")).stdout
    assert "imported" in table and "shipped" in table


# ---------------------------------------------------------------- errors


def test_a_missing_file_is_one_error_line(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    missing = tmp_path / "nope.json"
    stderr = one_error(tally(home, "pricing", "import", str(missing)), 4, f"{missing}: no such")
    assert "model_prices_and_context_window.json" in stderr


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n "gpt-5": {\n  "input_cost_per_token": 1e-06,\n }\n}\n', encoding="utf-8")
    one_error(tally(home, "pricing", "import", str(bad)), 4, f"{bad}:4: invalid JSON")


def test_a_negative_price_names_the_model_and_changes_nothing(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    source = litellm(tmp_path, **{MODEL: sonnet(-6e-06, 3e-05)})
    stderr = one_error(tally(home, "pricing", "import", str(source)), 4,
                       f"{source}: '{MODEL}': input_cost_per_token is -6e-06")
    assert ">= 0" in stderr
    assert not (home / "pricing.json").exists()


def test_a_wrong_shape(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    listed = tmp_path / "list.json"
    listed.write_text("[]", encoding="utf-8")
    one_error(tally(home, "pricing", "import", str(listed)), 4,
              f"{listed}: expected a JSON object of models, got an array")


def test_import_needs_a_home(tmp_path: Path) -> None:
    source = litellm(tmp_path, **{MODEL: sonnet(6e-06, 3e-05)})
    missing = tmp_path / "typo"
    result = tally(missing, "pricing", "import", str(source))
    assert result.exit_code == 3 and f"no tally home at {missing}" in result.stderr
    assert not missing.exists()


def test_options_before_import_are_refused_not_ignored(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    source = litellm(tmp_path, **{MODEL: sonnet(6e-06, 3e-05)})
    result = CliRunner().invoke(main, ["pricing", "--format", "json", "import", str(source),
                                       "--home", str(home)])
    assert result.exit_code == 2 and "--format before 'import'" in result.stderr
    assert not (home / "pricing.json").exists()


@pytest.mark.parametrize("command", [["pricing"], ["pricing", "import"]])
def test_help_has_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Example" in result.stdout
