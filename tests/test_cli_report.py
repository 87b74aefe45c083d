"""tally report / report daily-summary / report context / progress / usage / pricing, through
CliRunner on homes filled by the tailer: sample_logs/ (the seed's numbers) and small fixtures."""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import os
import pty
import re
import shutil
import struct
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from click.testing import CliRunner, Result
from conftest import assert_one_line_error, tally_executable

from pipeline.cli import main
from pipeline.cli.report import render
from pipeline.compactor import run_compaction
from pipeline.config import Home, init_home, load_home
from pipeline.counting import context_estimates
from pipeline.reports import all_events as open_events
from pipeline.tailer import Tailer

SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"
FORMATS = ("table", "json", "csv", "markdown")


def tail_once(home: Home) -> None:
    with Tailer(home) as tailer:
        tailer.poll()


def home_with(root: Path, events: list[dict[str, Any]], config: str = "") -> Home:
    """A home whose logs/test.jsonl holds `events`, tailed into the stage (not compacted)."""
    init_home(root)
    if config:
        (root / "config.toml").write_text(config, encoding="utf-8")
    log = root / "logs" / "test.jsonl"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    home = load_home(root)
    tail_once(home)
    return home


def tailed_samples(root: Path) -> Home:
    """A home at `root` whose logs are sample_logs/ (minus the invalid lines), tailed into
    the stage, not compacted."""
    init_home(root)
    shutil.rmtree(root / "logs")
    shutil.copytree(SAMPLE_LOGS, root / "logs", ignore=shutil.ignore_patterns("invalid", "*.md"))
    home = load_home(root)
    tail_once(home)
    return home


@pytest.fixture(scope="module")
def sample_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """sample_logs/ tailed into a stage-only home, shared by the module's read-only tests."""
    return tailed_samples(tmp_path_factory.mktemp("sample") / "home")


def run(home: Home, *args: str) -> Result:
    result = CliRunner().invoke(main, [*args, "--home", str(home.root)])
    assert result.exit_code == 0, result.output + result.stderr
    return result


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


# ---------------------------------------------------------------- tally report


def test_default_report_is_per_agent_and_day_with_a_totals_row(sample_home: Home) -> None:
    lines = run(sample_home, "report").stdout.splitlines()
    assert lines[0].split()[:3] == ["agent", "day", "events"]
    claude_29 = next(line for line in lines if line.startswith("claude  2025-08-29"))
    assert "45,000" in claude_29
    assert lines[-1].startswith("total") and "584,950" in lines[-1]
    assert lines[-2].startswith("------")
    # numbers are right-aligned: every row ends at the same column
    assert len({len(line) for line in lines if not line.startswith("-")}) == 1


def test_report_matches_the_sample_logs_totals(sample_home: Home) -> None:
    rows = as_json(run(sample_home, "report", "--format", "json"))
    table = {(r["agent"], r["day"]): r["total_tokens"] for r in rows}
    assert table[("claude", "2025-08-29")] == 45_000
    assert table[("gemini", "2025-08-29")] == 32_000
    assert table[("codex", "2025-08-29")] == 28_000
    assert table[("claude", "2025-08-28")] == 29_750  # the duplicated event_id counts once
    assert table[("cursor", "2025-08-28")] == 10_900  # 01:15+02:00 on the 29th is the 28th UTC
    assert table[("gemini", "2025-08-28")] == 21_300  # GM-004's 950 increment
    assert sum(r["total_tokens"] for r in rows) == 584_950
    buckets = next(r for r in rows if (r["agent"], r["day"]) == ("claude", "2025-08-29"))
    assert (buckets["cache_read_tokens"], buckets["cache_write_tokens"]) == (13_394, 1_624)


def test_must_have_per_role_per_phase(sample_home: Home) -> None:
    result = run(sample_home, "report", "--by", "role,phase", "--agent", "yolo")
    header = result.stdout.splitlines()[0].split()
    assert header[:2] == ["role", "phase"]
    for column in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        assert column in header
    rows = as_json(run(sample_home, "report", "--by", "role,phase", "--agent", "yolo",
                       "--format", "json"))
    dev_1 = next(r for r in rows if (r["role"], r["phase"]) == ("dev", "1"))
    assert dev_1["input_tokens"] >= 5000  # the yolo plan's example is in phase 1
    assert [r["phase"] for r in rows if r["role"] == "architect"][-1] == "planning"


def test_json_is_sorted_with_string_keys(sample_home: Home) -> None:
    rows = as_json(run(sample_home, "report", "--by", "week,month,phase", "--format", "json"))
    keys = [(r["week"], r["month"]) for r in rows]
    assert keys == sorted(keys)
    assert {r["week"] for r in rows} == {"2025-W34", "2025-W35"}
    assert {r["month"] for r in rows} == {"2025-08"}
    assert all(r["phase"] is None or isinstance(r["phase"], str) for r in rows)
    assert list(rows[0])[3:] == ["events", "input_tokens", "output_tokens", "cache_read_tokens",
                                 "cache_write_tokens", "other_tokens", "total_tokens",
                                 "cost_usd", "unpriced_events"]


def test_unpriced_models_are_null_and_listed_on_stderr(sample_home: Home) -> None:
    result = run(sample_home, "report", "--by", "model", "--format", "json")
    rows = {r["model"]: r for r in as_json(result)}
    assert rows["local-llama-3-8b"]["cost_usd"] is None
    assert rows["local-llama-3-8b"]["unpriced_events"] == 17
    assert rows[None]["cost_usd"] is None  # the yolo example has no model
    assert rows["claude-sonnet-4-5-20250929"]["cost_usd"] > 0  # priced through its alias
    assert "local-llama-3-8b" in result.stderr and "no price" in result.stderr


def test_cost_mode_calculate_differs_where_producers_report_cost(sample_home: Home) -> None:
    auto = as_json(run(sample_home, "report", "--by", "agent", "--format", "json"))
    calc = as_json(run(sample_home, "report", "--by", "agent", "--format", "json",
                       "--cost-mode", "calculate"))
    auto_cost = {r["agent"]: r["cost_usd"] for r in auto}
    calc_cost = {r["agent"]: r["cost_usd"] for r in calc}
    assert auto_cost["gemini"] == calc_cost["gemini"]  # gemini reports no cost_usd
    assert auto_cost["claude"] != calc_cost["claude"]


def test_filters_and_time_zone(sample_home: Home) -> None:
    rows = as_json(run(sample_home, "report", "--since", "2025-08-29", "--until", "2025-08-29",
                       "--agent", "claude", "--agent", "gemini", "--format", "json"))
    assert [(r["agent"], r["total_tokens"]) for r in rows] == [("claude", 45_000),
                                                               ("gemini", 32_000)]
    tokyo = as_json(run(sample_home, "report", "--by", "day", "--tz", "Asia/Tokyo",
                        "--format", "json"))
    assert sum(r["total_tokens"] for r in tokyo) == 584_950
    assert tokyo[0]["day"] == "2025-08-23"
    models = as_json(run(sample_home, "report", "--by", "model", "--model",
                         "claude-sonnet-4-5", "--format", "json"))
    assert [r["model"] for r in models] == ["claude-sonnet-4-5-20250929"]
    phases = as_json(run(sample_home, "report", "--by", "phase", "--phase", "planning,1",
                         "--role", "dev,architect", "--format", "json"))
    assert [r["phase"] for r in phases] == ["1", "planning"]


def test_csv_and_markdown_have_the_same_columns(sample_home: Home) -> None:
    text = run(sample_home, "report", "--by", "agent", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["agent", "events", "input_tokens", "output_tokens",
                             "cache_read_tokens", "cache_write_tokens", "other_tokens",
                             "total_tokens", "cost_usd", "unpriced_events"]
    assert len(rows) == 5 and sum(int(r["total_tokens"]) for r in rows) == 584_950
    markdown = run(sample_home, "report", "--by", "agent", "--format", "markdown").stdout
    lines = markdown.splitlines()
    assert lines[0].startswith("| agent | events |") and lines[1].startswith("| --- | ---: |")
    assert lines[-1].startswith("| total |") and "584,950" in lines[-1]


def test_empty_home_reports_nothing(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home", [])
    assert as_json(run(home, "report", "--format", "json")) == []
    assert run(home, "report").stdout == ""
    assert run(home, "report", "--format", "csv").stdout.startswith("agent,day,events")


@pytest.mark.parametrize(("args", "message"), [
    (["--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
    (["--by", "agent,colour"], "cannot group by colour"),
    (["--since", "2025-09-01", "--until", "2025-08-01"], "is after"),
    (["--since", "yesterday"], "yesterday"),
])
def test_bad_arguments_are_clear_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["report", *args, "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.stderr


def test_report_options_before_a_subcommand_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", "--by", "role", "daily-summary",
                                       "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "--by before 'daily-summary' would be ignored" in result.stderr


def test_config_prices_an_unknown_model(tmp_path: Path) -> None:
    config = '[pricing."local-llama-3-8b"]\ninput = 1.0\noutput = 2.0\n'
    home = home_with(tmp_path / "home", [{
        "event_type": "agent_token_usage", "ts": "2025-08-29T10:00:00Z", "agent": "cursor",
        "model": "local-llama-3-8b", "input_tokens": 1_000_000, "output_tokens": 0}], config)
    result = run(home, "report", "--format", "json")
    assert as_json(result)[0]["cost_usd"] == 1.0
    assert "no price" not in result.stderr


def test_asia_tokyo_day_boundary_end_to_end(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home", [{
        "event_type": "agent_token_usage", "ts": "2025-08-28T23:30:00Z", "agent": "claude",
        "model": "gpt-5", "input_tokens": 10, "output_tokens": 0}])
    assert as_json(run(home, "report", "--format", "json"))[0]["day"] == "2025-08-28"
    tokyo = as_json(run(home, "report", "--format", "json", "--tz", "Asia/Tokyo"))
    assert tokyo[0]["day"] == "2025-08-29"


# ---------------------------------------------------------------- daily summary


def test_daily_summary_reproduces_the_seed(sample_home: Home) -> None:
    summary = as_json(run(sample_home, "report", "daily-summary", "--date", "2025-08-29",
                          "--agent", "claude,gemini,codex", "--format", "json"))
    assert summary["date"] == "2025-08-29"
    assert {a: v["tokens"] for a, v in summary["agents"].items()} == {
        "claude": 45_000, "gemini": 32_000, "codex": 28_000}
    assert {a: v["tasks_completed"] for a, v in summary["agents"].items()} == {
        "claude": 6, "gemini": 5, "codex": 4}
    # tasks with activity: the completed ones plus CL-106, GM-004 and RAG_MIGRATION
    assert {a: v["tasks"] for a, v in summary["agents"].items()} == {
        "claude": 7, "gemini": 6, "codex": 5}
    total = summary["total"]
    assert (total["tasks_completed"], total["tokens_used"], total["avg_tokens_per_task"]) == (
        15, 105_000, 7_000)
    for value in [total["cost"], *(v["cost"] for v in summary["agents"].values())]:
        assert value.startswith("$") and len(value.split(".")[1]) == 2


def test_daily_summary_of_everyone_and_other_formats(sample_home: Home) -> None:
    summary = as_json(run(sample_home, "report", "daily-summary", "--date", "2025-08-29"))
    assert summary["total"]["tokens_used"] == 127_250
    assert summary["agents"]["cursor"]["unpriced_events"] == 5
    table = run(sample_home, "report", "daily-summary", "--date", "2025-08-29",
                "--format", "table").stdout.splitlines()
    assert table[0].split() == ["agent", "tasks", "tasks_completed", "tokens", "cost_usd",
                                "unpriced_events"]
    assert table[-1].split()[:4] == ["total", "24", "15", "127,250"]
    text = run(sample_home, "report", "daily-summary", "--date", "2025-08-29",
               "--format", "csv").stdout
    assert len(list(csv.DictReader(io.StringIO(text)))) == 5
    markdown = run(sample_home, "report", "daily-summary", "--date", "2025-08-29",
                   "--format", "markdown").stdout
    assert markdown.startswith("| agent | tasks |")


# ---------------------------------------------------------------- context, progress, usage


def test_context_report_per_role(sample_home: Home) -> None:
    rows = as_json(run(sample_home, "report", "context", "--format", "json"))
    assert [r["role"] for r in rows] == ["architect", "dev", "lead", "qa"]
    assert sum(r["compilations"] for r in rows) == 106
    assert all(0 < r["cache_hit_ratio"] < 1 for r in rows)
    table = run(sample_home, "report", "context").stdout.splitlines()
    assert table[-1].startswith("total") and "106" in table[-1]
    assert "%" in table[2]
    assert run(sample_home, "report", "context", "--format", "csv").stdout.startswith(
        "role,compilations,")
    assert run(sample_home, "report", "context", "--format", "markdown", "--role",
               "qa").stdout.count("| qa |") == 1


def test_derived_context_estimates_equal_the_explicit_ones(sample_home: Home) -> None:
    frame = open_events(sample_home, "context_compiled")
    stripped = frame.with_columns(cache_read_tokens_estimate=None,
                                  cache_write_tokens_estimate=None)
    given = context_estimates(frame).collect().sort("event_id")
    derived = context_estimates(stripped).collect().sort("event_id")
    had = given["estimated"].not_()
    assert had.sum() > 10
    for column in ("cache_read_tokens_estimate", "cache_write_tokens_estimate"):
        assert given.filter(had)[column].to_list() == derived.filter(had)[column].to_list()


def test_progress_view(sample_home: Home) -> None:
    rows = as_json(run(sample_home, "progress", "--status", "in_progress", "--format", "json"))
    by_task = {r["task"]: r for r in rows}
    assert set(by_task) == {"CL-106", "GM-004", "RAG_MIGRATION"}
    gm = by_task["GM-004"]
    assert (gm["progress"], gm["tokens"], gm["remaining"]) == (
        60.0, 2_500, ["TaskBoard.jsx", "MessageStream.jsx"])
    assert gm["last_update"] == "2025-08-29T13:00:00Z"
    assert by_task["RAG_MIGRATION"]["tokens"] == 18_000
    claude = as_json(run(sample_home, "progress", "--agent", "claude", "--format", "json"))
    cl_102 = next(r for r in claude if r["task"] == "CL-102")
    assert cl_102["status"] == "completed" and cl_102["deliverables"] == [
        "hybrid-search.js", "vector-index.sql"]
    table = run(sample_home, "progress", "--status", "in_progress").stdout
    assert "TaskBoard.jsx, MessageStream.jsx" in table and "18,000" in table
    assert run(sample_home, "progress", "--format", "csv").stdout.startswith("agent,task,")
    assert "| GM-004 |" in run(sample_home, "progress", "--format", "markdown").stdout


def test_usage_today_week_all_time(sample_home: Home) -> None:
    usage = as_json(run(sample_home, "usage", "--date", "2025-08-29", "--format", "json"))
    claude = next(a for a in usage["agents"] if a["agent"] == "claude")
    assert claude["today_tokens"] == 45_000
    assert usage["total"]["today_tokens"] == 127_250
    assert usage["total"]["total_tokens"] == 584_950
    # ISO week 35 starts Monday 2025-08-25
    assert usage["total"]["week_tokens"] == 87_500 + 94_000 + 84_950 + 96_800 + 127_250
    table = run(sample_home, "usage", "--date", "2025-08-29").stdout.splitlines()
    assert table[-1].split()[:2] == ["total", "127,250"]
    assert run(sample_home, "usage", "--format", "csv").stdout.startswith("agent,today_tokens")
    assert run(sample_home, "usage", "--format", "markdown").stdout.startswith("| agent |")


def test_pricing_command(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home", [])
    table = run(home, "pricing").stdout
    assert "claude-sonnet-4-5" in table and "gemini-2.5-pro" in table
    found = as_json(run(home, "pricing", "--model", "claude-sonnet-4-5-20250929",
                        "--format", "json"))
    assert [m["model"] for m in found["models"]] == ["claude-sonnet-4-5"]
    assert found["taken"] and found["source"]
    assert run(home, "pricing", "--format", "csv").stdout.startswith("model,provider,input")
    missing = CliRunner().invoke(main, ["pricing", "--model", "local-llama-3-8b",
                                        "--home", str(home.root)])
    assert missing.exit_code == 2 and "no price" in missing.stderr


@pytest.mark.parametrize("command", [
    ["report"], ["report", "daily-summary"], ["report", "context"], ["progress"], ["usage"],
    ["pricing"]])
def test_every_help_has_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Example" in result.stdout


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_command_renders_every_format(sample_home: Home, fmt: str) -> None:
    for command in (["report"], ["report", "daily-summary", "--date", "2025-08-29"],
                    ["report", "context"], ["progress"], ["usage"], ["pricing"]):
        assert run(sample_home, *command, "--format", fmt).stdout.strip()


# ---------------------------------------------------------------- before and after compaction


def test_report_is_the_same_before_and_after_compaction(tmp_path: Path) -> None:
    home = tailed_samples(tmp_path / "home")
    root = home.root
    commands = [
        ["report", "--by", "agent,role,phase,day,week,month,model,task,session"],
        ["report", "--by", "agent,day", "--tz", "Asia/Tokyo"],
        ["report", "daily-summary", "--date", "2025-08-29"],
        ["report", "context"], ["progress"], ["usage", "--date", "2025-08-29"],
    ]
    before = [run(home, *c, "--format", "json").stdout for c in commands]
    result = run_compaction(home)
    assert result.events == 1_001  # a producer retry in the samples: its event_id once
    assert not list((root / "stage").rglob("*.arrow"))  # everything is in the lake now
    after = [run(home, *c, "--format", "json").stdout for c in commands]
    for command, old, new in zip(commands, before, after, strict=True):
        assert old == new, command
    # Half-compacted: new lines staged on top of the lake count once too.
    extra = root / "logs" / "late.jsonl"
    extra.write_bytes(orjson.dumps({
        "event_type": "agent_token_usage", "ts": "2025-08-29T23:00:00Z", "agent": "claude",
        "model": "gpt-5", "input_tokens": 1000, "output_tokens": 0}) + b"\n")
    tail_once(home)
    rows = as_json(run(home, "report", "--format", "json", "--since", "2025-08-29"))
    assert next(r for r in rows if r["agent"] == "claude")["total_tokens"] == 46_000


def test_check_says_the_rollups_agree_and_exits_5_when_they_do_not(tmp_path: Path) -> None:
    home = tailed_samples(tmp_path / "home")
    root = home.root
    run_compaction(home)
    agreed = CliRunner().invoke(main, ["report", "--by", "agent,day", "--check",
                                       "--home", str(root)])
    assert agreed.exit_code == 0, agreed.output
    assert "check: the rollups' answer equals the count from every event" in agreed.stderr
    usage = root / "lake" / "_rollups" / "usage"
    tampered = pl.read_delta(str(usage)).with_columns(pl.col("output_tokens") + 1)
    tampered.write_delta(usage, mode="overwrite")  # the same transactions: not caught up
    differs = CliRunner().invoke(main, ["report", "--by", "agent,day", "--check",
                                        "--home", str(root)])
    assert differs.exit_code == 5
    assert "differs from the count from every event" in differs.stderr


def test_json_records_round_floats_and_write_times_as_utc_text(
        capsys: pytest.CaptureFixture[str]) -> None:
    frame = pl.DataFrame({
        "day": [date(2026, 3, 1), None],
        "last": [datetime(2026, 3, 1, 9, 30, tzinfo=UTC), None],
        "cost_usd": [0.1234564999, float("nan")],
        "tasks": [["a", "b"], []],
        "tokens": [12, None],
        "share": pl.Series([0.1, None], dtype=pl.Float32)})
    render(frame, "json")
    assert json.loads(capsys.readouterr().out) == [
        {"day": "2026-03-01", "last": "2026-03-01T09:30:00Z", "cost_usd": 0.123456,
         "tasks": ["a", "b"], "tokens": 12, "share": 0.1},
        {"day": None, "last": None, "cost_usd": None, "tasks": [], "tokens": None,
         "share": None}]


# ---------------------------------------------------------------- html, parquet, --chart and -o


def table_cells(page: str) -> list[list[str]]:
    """The cells of each row of the page's table, as text."""
    table = page[page.index("<table>"):page.index("</table>")]
    return [[html.unescape(cell) for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)]


def png_size(data: bytes) -> tuple[int, int]:
    """The width and height in a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_html_output_is_the_report_as_a_page(sample_home: Home, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    written = run(sample_home, "report", "--by", "agent", "--format", "html", "-o", str(out))
    assert written.stdout == ""
    warning = written.stderr.splitlines()[0]  # the warning still comes
    assert warning.startswith("warning: no price for ") and "local-llama-3-8b" in warning
    page = out.read_text(encoding="utf-8")
    assert "<svg" in page and "<script" not in page.lower()
    rows = as_json(run(sample_home, "report", "--by", "agent", "--format", "json"))
    header, *body, total = table_cells(page)
    assert header == list(rows[0])
    assert [line[0] for line in body] == [r["agent"] for r in rows]
    tokens = header.index("total_tokens")
    assert [line[tokens] for line in body] == [f"{r['total_tokens']:,}" for r in rows]
    assert total[0] == "total"
    assert total[tokens] == f"{sum(r['total_tokens'] for r in rows):,}" == "584,950"
    assert total[header.index("events")] == f"{sum(r['events'] for r in rows):,}"
    note = re.search(r'<p class="note">No price for ([^:]*):', page)
    assert note is not None and "local-llama-3-8b" in note.group(1).split(", ")


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_chart_writes_a_png_beside_any_format(sample_home: Home, tmp_path: Path,
                                              fmt: str) -> None:
    chart = tmp_path / "usage.png"
    args = ("report", "--by", "agent,week", "--format", fmt)
    with_chart = run(sample_home, *args, "--chart", str(chart))
    assert with_chart.stdout == run(sample_home, *args).stdout  # the report is unchanged
    width, height = png_size(chart.read_bytes())
    assert width > 0 and height > 0
    assert [p.name for p in tmp_path.iterdir()] == ["usage.png"]


def test_chart_beside_an_html_file(sample_home: Home, tmp_path: Path) -> None:
    run(sample_home, "report", "--by", "model", "--format", "html", "-o",
        str(tmp_path / "r.html"), "--chart", str(tmp_path / "r.png"))
    assert "<svg" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert png_size((tmp_path / "r.png").read_bytes())[0] > 0


def assert_parquet_is_the_json_rows(frame: pl.DataFrame, rows: list[dict[str, Any]]) -> None:
    assert frame.columns == list(rows[0])
    assert (frame.schema["agent"], frame.schema["events"], frame.schema["cost_usd"]) == (
        pl.String, pl.Int64, pl.Float64)
    assert frame.height == len(rows)
    for read, row in zip(frame.iter_rows(named=True), rows, strict=True):
        cost, expected = read.pop("cost_usd"), row.pop("cost_usd")
        assert read == row
        assert cost == pytest.approx(expected, abs=1e-6) if expected is not None else cost is None


def test_parquet_file_holds_the_json_rows(sample_home: Home, tmp_path: Path) -> None:
    out = tmp_path / "usage.parquet"
    out.write_bytes(b"an older, longer file " * 1000)
    args = ("report", "--by", "agent,day,model")
    assert run(sample_home, *args, "--format", "parquet", "-o", str(out)).stdout == ""
    rows = as_json(run(sample_home, *args, "--format", "json"))
    assert len(rows) > 10
    assert_parquet_is_the_json_rows(pl.read_parquet(out), rows)
    assert [p.name for p in tmp_path.iterdir()] == ["usage.parquet"]


def test_parquet_goes_to_stdout_when_it_is_a_pipe(sample_home: Home, tmp_path: Path) -> None:
    args = ["report", "--by", "agent", "--home", str(sample_home.root)]
    piped = subprocess.run([tally_executable(), *args, "--format", "parquet"],
                           capture_output=True, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout[:4] == b"PAR1"
    rows = as_json(run(sample_home, "report", "--by", "agent", "--format", "json"))
    assert_parquet_is_the_json_rows(pl.read_parquet(io.BytesIO(piped.stdout)), rows)


def test_parquet_is_refused_on_a_terminal(sample_home: Home) -> None:
    terminal, attached = pty.openpty()
    process = subprocess.Popen([tally_executable(), "report", "--format", "parquet",
                                "--home", str(sample_home.root)],
                               stdout=attached, stderr=subprocess.PIPE)
    os.close(attached)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once tally has exited
        while chunk := os.read(terminal, 4096):
            shown += chunk
    os.close(terminal)
    _, stderr = process.communicate(timeout=60)
    finished = subprocess.CompletedProcess(process.args, process.returncode, "",
                                           stderr.decode(errors="replace"))
    error = assert_one_line_error(finished, 2, "--format parquet")
    assert "terminal" in error
    assert "-o report.parquet" in finished.stderr  # the hint says what to do
    assert b"PAR1" not in shown and shown.strip() == b""


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_file_holds_what_stdout_would_have(sample_home: Home, tmp_path: Path,
                                                 fmt: str) -> None:
    out = tmp_path / f"report.{fmt}"
    out.write_text("x" * 100_000)  # replaced whole
    args = ("report", "--by", "agent,role", "--format", fmt)
    to_file = run(sample_home, *args, "-o", str(out))
    assert to_file.stdout == ""
    assert out.read_text(encoding="utf-8") == run(sample_home, *args).stdout
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_chart_of_agents_named_like_javascript_properties(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home", [
        {"event_type": "agent_token_usage", "ts": "2025-08-01T10:00:00Z", "agent": name,
         "model": "gpt-5", "input_tokens": 100, "output_tokens": 10}
        for name in ("toString", "constructor", "__proto__")])
    picture = tmp_path / "agents.png"
    run(home, "report", "--by", "agent,day", "--chart", str(picture))
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("args,says", [
    (["--until", "9999-12-31"], "--until 9999-12-31 is out of range"),
    (["--since", "0001-01-01"], "--since 0001-01-01 is out of range"),
    (["--tz", "localtime"], "unknown time zone"),
])
def test_days_and_zones_no_report_can_compute_with_are_refused(sample_home: Home,
                                                               args: list[str],
                                                               says: str) -> None:
    result = CliRunner().invoke(main, ["report", *args, "--home", str(sample_home.root)])
    assert result.exit_code == 2 and says in result.stderr, result.stderr
