"""pipeline.cli: init, log, validate and schema, driven through click's CliRunner."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner, Result
from conftest import make_home, sized_event
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.cli.options import setting_type
from pipeline.errors import InvalidEvent, UnknownEventType, UnsafeName
from pipeline.events import Event, Validator
from pipeline.settings import (
    CONFIG_TEMPLATE,
    CompactorSettings,
    TailerSettings,
    setting_bounds,
    setting_fields,
)

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
ULID_TEXT = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
DESIGN_TYPES = ["agent_token_usage", "budget_alert", "context_compiled", "metric",
                "task_progress", "tool_call"]
SEED_FIELDS = ["role=dev", "input_tokens=5000", "output_tokens=1200", "cache_read=3000",
               "cache_write=800"]
SEED_EVENT = {"event_type": "agent_token_usage", "phase": 1, "role": "dev",
              "input_tokens": 5000, "output_tokens": 1200, "cache_read_tokens": 3000,
              "cache_write_tokens": 800}
VALID_LINE = (b'{"event_type":"metric","ts":"2025-03-01T00:00:00Z","agent":"a","name":"n"}')


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TALLY_HOME", "TALLY_AGENT", "TALLY_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default ./.tally lands in the test's directory


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(main, list(args), env=env, catch_exceptions=True)


def events_in(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    validator = Validator()
    out = []
    for line in raw.splitlines():
        result = validator.validate(line)
        assert isinstance(result, Event), result
        out.append(result.data)
    return out


def strip_generated(event: dict[str, Any]) -> dict[str, Any]:
    event = dict(event)
    assert ULID_TEXT.fullmatch(event.pop("event_id"))
    assert isinstance(event.pop("ts"), str)
    return event


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------

def test_init_twice(runner: CliRunner, tmp_path: Path) -> None:
    home = tmp_path / "h"
    first = run(runner, "init", "--home", str(home))
    assert first.exit_code == 0, first.output
    assert f"created {home / 'config.toml'}" in first.output
    for name in ("logs", "stage", "quarantine", "state", "lake"):
        assert (home / name).is_dir()
    (home / "config.toml").write_text("# mine\n", encoding="utf-8")
    second = run(runner, "init", "--home", str(home))
    assert second.exit_code == 0
    assert "nothing changed" in second.output
    assert "created" not in second.output
    assert (home / "config.toml").read_text(encoding="utf-8") == "# mine\n"


def test_init_honours_tally_home(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "init", env={"TALLY_HOME": str(tmp_path / "env")})
    assert result.exit_code == 0
    assert (tmp_path / "env" / "config.toml").read_text(encoding="utf-8") == CONFIG_TEMPLATE
    assert not (tmp_path / ".tally").exists()


def test_init_home_option_beats_tally_home(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "init", "--home", str(tmp_path / "opt"),
                 env={"TALLY_HOME": str(tmp_path / "env")})
    assert result.exit_code == 0
    assert (tmp_path / "opt" / "logs").is_dir()
    assert not (tmp_path / "env").exists()


def test_init_default_home(runner: CliRunner, tmp_path: Path) -> None:
    assert run(runner, "init").exit_code == 0
    assert (tmp_path / ".tally" / "config.toml").is_file()


# --------------------------------------------------------------------------------------------
# log
# --------------------------------------------------------------------------------------------

def test_log_writes_exactly_the_event(runner: CliRunner, tmp_path: Path) -> None:
    home = tmp_path / "h"
    result = run(runner, "log", "agent_token_usage", "--agent", "claude", "--phase", "1",
                 *SEED_FIELDS, "--home", str(home))
    assert result.exit_code == 0, result.output
    path = home / "logs" / "claude.jsonl"
    events = events_in(path)
    assert len(events) == 1
    assert strip_generated(events[0]) == {**SEED_EVENT, "agent": "claude"}
    assert str(path) in result.output and events[0]["event_id"] in result.output


def test_log_design_form_uses_role_as_agent(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "log", "agent_token_usage", "--phase", "1", *SEED_FIELDS,
                 env={"TALLY_HOME": str(tmp_path / "env")})
    assert result.exit_code == 0, result.output
    [event] = events_in(tmp_path / "env" / "logs" / "dev.jsonl")
    assert strip_generated(event) == {**SEED_EVENT, "agent": "dev"}


def test_log_agent_from_tally_agent(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "log", "tool_call", "tool=bash", "--home", str(tmp_path),
                 env={"TALLY_AGENT": "codex"})
    assert result.exit_code == 0, result.output
    assert events_in(tmp_path / "logs" / "codex.jsonl")[0]["agent"] == "codex"


def test_log_without_any_agent_fails(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "log", "tool_call", "tool=bash", "--home", str(tmp_path))
    assert result.exit_code == 2
    assert "--agent" in result.output
    assert files_under(tmp_path) == []


def test_log_home_option_beats_tally_home(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "log", "tool_call", "--agent", "a", "tool=t", "--home",
                 str(tmp_path / "opt"), env={"TALLY_HOME": str(tmp_path / "env")})
    assert result.exit_code == 0
    assert len(events_in(tmp_path / "opt" / "logs" / "a.jsonl")) == 1
    assert not (tmp_path / "env").exists()


def test_log_to_file(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "custom.jsonl"
    for n in (1, 2):
        result = run(runner, "log", "tool_call", "--agent", "../odd/name", f"output_length={n}",
                     "tool=bash", "--to", str(target), "--quiet")
        assert result.exit_code == 0, result.output
        assert result.output == ""
    events = events_in(target)
    assert [e["output_length"] for e in events] == [1, 2]
    assert events[0]["agent"] == "../odd/name"  # a name is only refused as a path
    assert not (tmp_path / ".tally").exists()


@pytest.mark.parametrize("agent", ["../x", "a/b", "..", "a\x01b"])
def test_log_unsafe_agent(runner: CliRunner, tmp_path: Path, agent: str) -> None:
    result = run(runner, "log", "tool_call", "--agent", agent, "tool=t", "--home", str(tmp_path))
    assert result.exit_code == 2
    assert "--to" in result.output
    assert files_under(tmp_path) == []
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(("fields", "field", "code"), [
    (["input_tokens=-5"], "/input_tokens", 1),
    (["input_tokens=abc"], "input_tokens", 2),
    (["inputtokens=5"], "inputtokens", 2),
    (["cost_usd=-1"], "/cost_usd", 1),
    (["request_id="], "/request_id", 1),
])
def test_log_invalid_value(runner: CliRunner, tmp_path: Path, fields: list[str], field: str,
                           code: int) -> None:
    result = run(runner, "log", "agent_token_usage", "--agent", "claude", *fields,
                 "--home", str(tmp_path))
    assert result.exit_code == code, result.output
    assert result.output.startswith("error: ")
    assert field in result.output
    assert files_under(tmp_path) == []


def test_log_task_progress_with_json(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "log", "task_progress", "--agent", "gemini", "--task", "GM-004",
                 "status=in_progress", "progress=60",
                 'tokens_used={"prompt": 1000, "completion": 1500, "total": 2500, '
                 '"embedding_generation": 40}',
                 'deliverables=["api.py", "tests/test_api.py"]', "--home", str(tmp_path))
    assert result.exit_code == 0, result.output
    [event] = events_in(tmp_path / "logs" / "gemini.jsonl")
    assert strip_generated(event) == {
        "event_type": "task_progress", "agent": "gemini", "task": "GM-004",
        "status": "in_progress", "progress": 60,
        "tokens_used": {"prompt": 1000, "completion": 1500, "total": 2500,
                        "embedding_generation": 40},
        "deliverables": ["api.py", "tests/test_api.py"]}


def test_log_bad_json_value(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "log", "task_progress", "--agent", "g", "--task", "t",
                 "deliverables=[api.py", "--home", str(tmp_path))
    assert result.exit_code == 2
    assert "deliverables" in result.output
    assert files_under(tmp_path) == []


# --------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------

def test_validate_valid_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_bytes(VALID_LINE + b"\n" + VALID_LINE + b"\r\n")
    result = run(runner, "validate", str(path))
    assert result.exit_code == 0, result.output
    assert "2 lines" in result.output and "0 invalid" in result.output


BAD_FILE = [
    (VALID_LINE, None),
    (b"not json", "invalid_json"),
    (VALID_LINE.replace(b'"agent":"a",', b""), "missing_field"),
    (VALID_LINE, None),
    (b"", "empty_line"),
    (VALID_LINE.replace(b'"n"}', b'"n","nmae":1}'), "unknown_field"),
    (b"[1]", "not_object"),
]


def write_bad_file(path: Path) -> None:
    path.write_bytes(b"".join(line + b"\n" for line, _ in BAD_FILE))


def test_validate_reports_each_bad_line(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    write_bad_file(path)
    result = run(runner, "validate", str(path))
    assert result.exit_code == 1
    reported = re.findall(rf"^{re.escape(str(path))}:(\d+): ([a-z_]+)", result.output, re.M)
    expected = [(str(n), reason) for n, (_, reason) in enumerate(BAD_FILE, start=1) if reason]
    assert reported == expected
    assert "at /agent" in result.output and "at /nmae" in result.output


def test_validate_reports_a_time_outside_the_utc_years(runner: CliRunner,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "far.jsonl"
    year_zero = VALID_LINE.replace(b"2025-03-01T00:00:00Z", b"0001-01-01T00:00:00+14:00")
    path.write_bytes(year_zero + b"\n" + VALID_LINE + b"\n")
    result = run(runner, "validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:1: ts_out_of_range at /ts: ts 0001-01-01T00:00:00+14:00 is " \
           "0000-12-31T10:00:00 in UTC, outside years 1-9999\n" in result.output
    assert f"{path}:2:" not in result.output
    assert "2 lines" in result.output and "1 invalid" in result.output


def test_validate_several_files(runner: CliRunner, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(VALID_LINE + b"\n")
    write_bad_file(bad)
    result = run(runner, "validate", str(good), str(bad), "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["files"] == 2
    assert report["lines"] == 1 + len(BAD_FILE)
    assert {e["file"] for e in report["errors"]} == {str(bad)}


def test_validate_json_format(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    write_bad_file(path)
    result = run(runner, "validate", "--format", "json", str(path))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["lines"] == len(BAD_FILE)
    assert report["invalid"] == sum(1 for _, reason in BAD_FILE if reason)
    errors = report["errors"]
    assert [(e["line"], e["reason"]) for e in errors] == [
        (n, reason) for n, (_, reason) in enumerate(BAD_FILE, start=1) if reason]
    for error in errors:
        assert error["file"] == str(path)
        assert {"file", "line", "reason", "pointer"} <= set(error)
    assert errors[1]["pointer"] == "/agent"
    assert errors[3]["pointer"] == "/nmae"


def test_validate_max_errors_caps_listing_not_counting(runner: CliRunner,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"x\n" * 10)
    result = run(runner, "validate", "--format", "json", "--max-errors", "3", str(path))
    report = json.loads(result.stdout)
    assert report["invalid"] == 10 and len(report["errors"]) == 3


def test_validate_truncated_tail(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "partial.jsonl"
    path.write_bytes(VALID_LINE + b"\n" + VALID_LINE)  # the last line lacks its newline
    result = run(runner, "validate", "--format", "json", str(path))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["lines"] == 2
    assert [(e["line"], e["reason"]) for e in report["errors"]] == [(2, "truncated_tail")]


def test_validate_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "validate", str(tmp_path / "absent.jsonl"))
    assert result.exit_code == 2
    assert "absent.jsonl" in result.output


# --------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------

def test_schema_list(runner: CliRunner) -> None:
    result = run(runner, "schema", "list")
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    assert sorted(set(listed) & set(DESIGN_TYPES)) == DESIGN_TYPES
    assert all("v1" in line for line in result.output.splitlines() if line.strip())


def test_schema_list_json(runner: CliRunner) -> None:
    result = run(runner, "schema", "list", "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    by_type = {row["event_type"]: row for row in rows}
    assert set(DESIGN_TYPES) <= set(by_type)
    for event_type in DESIGN_TYPES:
        assert 1 in by_type[event_type]["versions"]
        title = json.loads((SCHEMA_DIR / f"{event_type}.v1.schema.json").read_text())["title"]
        assert by_type[event_type]["title"] == title


@pytest.mark.parametrize("event_type", DESIGN_TYPES)
def test_schema_show(runner: CliRunner, event_type: str) -> None:
    result = run(runner, "schema", "show", event_type)
    assert result.exit_code == 0
    expected = json.loads((SCHEMA_DIR / f"{event_type}.v1.schema.json").read_text())
    assert json.loads(result.output) == expected
    again = run(runner, "schema", "show", event_type, "--version", "1")
    assert json.loads(again.output) == expected


@pytest.mark.parametrize("args", [["agent_tokens"], ["metric", "--version", "9"]])
def test_schema_show_unknown(runner: CliRunner, args: list[str]) -> None:
    result = run(runner, "schema", "show", *args)
    assert result.exit_code == 2
    assert "hint: known types" in result.output
    assert "agent_token_usage" in result.output


# --------------------------------------------------------------------------------------------
# errors and help
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "error"), [
    (["log", "tool_call", "--agent", "../x", "tool=t"], UnsafeName),
    (["log", "agent_token_usage", "--agent", "a", "input_tokens=-1"], InvalidEvent),
    (["schema", "show", "nope"], UnknownEventType),
])
def test_tally_debug_reraises(runner: CliRunner, tmp_path: Path, args: list[str],
                              error: type[Exception]) -> None:
    quiet = run(runner, *args)
    assert isinstance(quiet.exception, SystemExit)
    assert quiet.exit_code != 0 and "error: " in quiet.output
    loud = run(runner, *args, env={"TALLY_DEBUG": "1"})
    assert type(loud.exception) is error
    assert "error: " not in loud.output


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        context = click.Context(command)
        for name in command.list_commands(context):  # lazy commands too
            sub = command.get_command(context, name)
            assert sub is not None
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(main))


def test_the_documented_commands_exist() -> None:
    assert {(), ("init",), ("log",), ("validate",), ("schema",), ("schema", "list"),
            ("schema", "show")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "tally" for p in COMMANDS])
def test_help_has_an_example(runner: CliRunner, path: tuple[str, ...]) -> None:
    result = run(runner, *path, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    assert "Usage:" in result.output
    short = run(runner, *path, "-h")
    assert short.output == result.output


def test_no_files_written_by_help_or_list(runner: CliRunner, tmp_path: Path) -> None:
    run(runner, "--help")
    run(runner, "schema", "list")
    assert os.listdir(tmp_path) == []


def test_log_output_is_one_json_line(runner: CliRunner, tmp_path: Path) -> None:
    run(runner, "log", "metric", "--agent", "a", "name=n", 'data={"x": 1}', "--home",
        str(tmp_path))
    raw = (tmp_path / "logs" / "a.jsonl").read_bytes()
    assert raw.count(b"\n") == 1
    assert orjson.loads(raw)["data"] == {"x": 1}


@pytest.mark.parametrize("command", [["compact"], ["status"], ["report"], ["progress"],
                                     ["usage"], ["rebuild"], ["report", "daily-summary"]])
def test_commands_reading_a_home_refuse_a_missing_one(tmp_path: Path,
                                                      command: list[str]) -> None:
    missing = tmp_path / "typo"
    result = CliRunner().invoke(main, [*command, "--home", str(missing)])
    assert result.exit_code == 3, result.output
    assert f"no tally home at {missing}" in result.stderr
    assert "tally init" in result.stderr
    assert not missing.exists()



# --------------------------------------------------------------------------------------------
# hygiene: config errors, option ranges, the line limit, a full disk
# --------------------------------------------------------------------------------------------

def assert_one_error(result: Result, code: int, start: str) -> None:
    """Exit `code`, stderr one `error:` line starting with `start` and at most a hint line."""
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: {start}"), result.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  hint: ")), lines
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("config", "field"), [
    ("[tailor]\nbatch_lines = 5\n", "tailor: unknown section"),
    ("[tailer]\nworkers = 1000\n", "tailer.workers: must be between 0 and 4, got 1000"),
    ("[tailer]\nmax_line_bytes = 0\n", "tailer.max_line_bytes: must be between"),
])
@pytest.mark.parametrize("command", [["status"], ["validate", "FILE"], ["log", "metric",
                                     "--agent", "a", "name=n"], ["tail", "--once"]])
def test_a_bad_config_is_one_line_and_exit_3(runner: CliRunner, tmp_path: Path, config: str,
                                             field: str, command: list[str]) -> None:
    home = make_home(tmp_path / "home", config="# placeholder\n")
    (home.root / "config.toml").write_text(config, encoding="utf-8")
    good = tmp_path / "good.jsonl"
    good.write_bytes(VALID_LINE + b"\n")
    args = [str(good) if word == "FILE" else word for word in command]
    result = run(runner, *args, "--home", str(home.root))
    assert_one_error(result, 3, f"{home.root / 'config.toml'}: {field}")


@pytest.mark.parametrize(("args", "option"), [
    (["compact", "--lock-timeout", "-5"], "--lock-timeout"),
    (["compact", "--lock-timeout", "nan"], "--lock-timeout"),
    (["compact", "--lock-timeout", "inf"], "--lock-timeout"),
    (["compact", "--target-mb", "0"], "--target-mb"),
    (["compact", "--target-mb", "100001"], "--target-mb"),
    (["compact", "--retention-hours", "-1"], "--retention-hours"),
    (["compact", "--rows-per-commit", "0"], "--rows-per-commit"),
    (["validate", "--max-errors", "-1", "FILE"], "--max-errors"),
    (["schema", "show", "metric", "--version", "0"], "--version"),
])
def test_out_of_range_options_are_usage_errors(runner: CliRunner, tmp_path: Path,
                                               args: list[str], option: str) -> None:
    make_home(tmp_path / "home")
    good = tmp_path / "good.jsonl"
    good.write_bytes(VALID_LINE + b"\n")
    home = ["--home", str(tmp_path / "home")] if args[0] == "compact" else []
    result = run(runner, *[str(good) if a == "FILE" else a for a in args], *home)
    assert result.exit_code == 2, result.output
    assert f"Error: Invalid value for '{option}': " in result.stderr
    assert "Traceback" not in result.output


def test_in_range_option_values_are_taken(runner: CliRunner, tmp_path: Path) -> None:
    make_home(tmp_path / "home")
    result = run(runner, "compact", "--lock-timeout", "0", "--optimize", "--target-mb", "1",
                 "--vacuum", "--retention-hours", "0", "--home", str(tmp_path / "home"))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("compact: 0 events")


OVERRIDDEN = [(CompactorSettings, "lock_timeout"), (CompactorSettings, "target_file_mb"),
              (CompactorSettings, "vacuum_retention_hours")]


@settings(max_examples=200, deadline=None)
@given(which=st.sampled_from(OVERRIDDEN + [(TailerSettings, name)
                                           for name in setting_fields(TailerSettings)]),
       value=st.one_of(st.integers(-10, 10), st.integers(), st.floats(),
                       st.sampled_from([100_000, 100_001, 1 << 30, (1 << 30) + 1])))
def test_an_option_takes_exactly_what_config_toml_takes(which: tuple[type, str],
                                                        value: float) -> None:
    cls, name = which
    kind = type(getattr(cls(), name))
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # on the command line, whole numbers are typed as such
    in_config = (math.isfinite(value) and (kind is float or float(value).is_integer())
                 and setting_bounds(cls, name).refusal(value) is None)
    try:
        setting_type(cls, name).convert(str(value), None, None)
        taken = True
    except click.BadParameter:
        taken = False
    assert taken == in_config


def test_validate_uses_the_homes_line_limit(runner: CliRunner, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nmax_line_bytes = 1024\n")
    path = tmp_path / "a.jsonl"
    path.write_bytes(orjson.dumps(sized_event(1024)) + b"\n"
                     + orjson.dumps(sized_event(1025)) + b"\n")
    for args, env in ((["--home", str(home.root)], None), ([], {"TALLY_HOME": str(home.root)})):
        result = run(runner, "validate", "--format", "json", str(path), *args, env=env)
        assert result.exit_code == 1, result.output
        report = json.loads(result.stdout)
        assert [(e["line"], e["reason"], e["message"]) for e in report["errors"]] == \
            [(2, "line_too_long", "line of 1,025 bytes exceeds the 1,024-byte limit")]
    result = run(runner, "validate", str(path))  # no home here: the default 1 MiB
    assert result.exit_code == 0, result.output
    assert not (tmp_path / ".tally").exists()


def test_validate_without_a_home_uses_the_default_limit(runner: CliRunner,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(orjson.dumps(sized_event(2_000_000)) + b"\n")
    result = run(runner, "validate", str(path), "--home", str(tmp_path / "absent"))
    assert result.exit_code == 1
    assert result.stdout == (f"{path}:1: line_too_long: line of 2,000,000 bytes exceeds the "
                             "1,048,576-byte limit\n")


def test_log_uses_the_homes_line_limit(runner: CliRunner, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", "[tailer]\nmax_line_bytes = 1024\n")
    pad = "x" * 1100
    result = run(runner, "log", "metric", "--agent", "a", "name=n", f'data={{"p": "{pad}"}}',
                 "--home", str(home.root))
    assert_one_error(result, 1, "line of 1,")
    assert "exceeds the 1,024-byte limit" in result.stderr
    assert "max_line_bytes" in result.stderr
    assert files_under(home.logs) == []
    ok = run(runner, "log", "metric", "--agent", "a", "name=n", "--home", str(home.root))
    assert ok.exit_code == 0, ok.output


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="/dev/full is Linux only")
def test_log_to_a_full_device_is_exit_74(runner: CliRunner) -> None:
    result = run(runner, "log", "metric", "--agent", "a", "name=n", "--to", "/dev/full")
    assert_one_error(result, 74, "/dev/full: cannot append to the log: No space left on device")
    assert result.stdout == ""
