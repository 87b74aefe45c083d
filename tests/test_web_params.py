"""pipeline.web.params: query strings read as the CLI reads its options, and refused with
a UsageError (a 400) naming the parameter; report_query builds the ReportQuery `tally
report` builds for the same options (a differential check through the CLI)."""

from __future__ import annotations

from datetime import date
from typing import Any

import click
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import make_home
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pipeline.cli.report as cli_report
from pipeline.cli import main
from pipeline.cli.report import DAY
from pipeline.config import Home
from pipeline.errors import UnknownTimeZone, UsageError
from pipeline.query import FIRST_DAY, GROUP_KEYS, LAST_DAY, Report, ReportQuery, check_query
from pipeline.web.params import REPORT_PARAMS, Params, report_query


def usage_error(call: Any, *args: Any) -> UsageError:
    with pytest.raises(UsageError) as info:
        call(*args)
    assert info.value.exit_code == 2
    return info.value


# ---------------------------------------------------------------- Params.of, text, many


def test_of_keeps_every_value_in_order() -> None:
    params = Params.of([("agent", "claude"), ("by", "agent"), ("agent", "codex,gemini")])
    assert params.values == {"agent": ["claude", "codex,gemini"], "by": ["agent"]}
    assert params.text("by") == "agent"
    assert params.text("since") is None and params.text("since", "x") == "x"
    assert Params.of([]).values == {}


def test_many_splits_comma_lists() -> None:
    params = Params.of([("agent", "claude, codex"), ("agent", ",gemini,,"), ("role", "")])
    assert params.many("agent") == ("claude", "codex", "gemini")
    assert params.many("role") == ()
    assert params.many("model") == ()


# ---------------------------------------------------------------- check_names


def test_an_unknown_name_suggests_the_close_one() -> None:
    error = usage_error(Params.of([("sinse", "2025-08-01")]).check_names, REPORT_PARAMS)
    assert error.message == "unknown parameter 'sinse'"
    assert error.hint == "did you mean 'since'?"


def test_an_unknown_name_with_nothing_close_lists_the_parameters() -> None:
    error = usage_error(Params.of([("colour", "red")]).check_names, REPORT_PARAMS)
    assert error.hint == "this endpoint takes " + ", ".join(REPORT_PARAMS)


def test_an_endpoint_without_parameters_says_so() -> None:
    error = usage_error(Params.of([("x", "1")]).check_names, [])
    assert error.hint == "this endpoint takes no parameters"


def test_a_single_valued_name_given_twice_is_refused() -> None:
    params = Params.of([("by", "agent"), ("by", "day")])
    error = usage_error(params.check_names, REPORT_PARAMS)
    assert error.message == "parameter 'by' is given 2 times"
    assert error.hint is not None and "comma-separated" in error.hint


def test_repeatable_names_may_come_again() -> None:
    params = Params.of([("agent", "claude"), ("agent", "codex"), ("model", "a"),
                        ("model", "b"), ("role", "dev"), ("role", "qa"), ("phase", "1"),
                        ("phase", "2"), ("status", "blocked"), ("status", "failed")])
    params.check_names([*REPORT_PARAMS, "status"])


# ---------------------------------------------------------------- day, count, choice


@pytest.mark.parametrize("text", ["08/01/2025", "yesterday", "",
                                  "2025-02-30", "2025-13-01", " 2025-08-01", "20250801",
                                  "2025-08-01T00:00"])
def test_a_day_that_is_not_yyyy_mm_dd_is_refused(text: str) -> None:
    error = usage_error(Params.of([("since", text)]).day, "since")
    assert error.message == f"since={text!r} is not a date"
    assert error.hint is not None and "YYYY-MM-DD" in error.hint


def test_a_day() -> None:
    assert Params.of([("until", "2025-08-01")]).day("until") == date(2025, 8, 1)
    assert Params.of([("until", "2025-8-1")]).day("until") == date(2025, 8, 1)  # as the CLI
    assert Params.of([]).day("until") is None


def cli_day(text: str) -> date | None:
    """The day `tally report --since TEXT` takes, None if the CLI refuses it."""
    try:
        day = DAY.convert(text, None, None).date()
    except click.BadParameter:
        return None
    return day if FIRST_DAY <= day <= LAST_DAY else None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789-/ T:W", min_size=6, max_size=12)
       | st.dates().map(date.isoformat))
@example("2025-02-29")
@example("2024-02-29")
@example("2025-8-1")
@example("0001-01-01")
@example("9999-12-31")
def test_day_takes_the_days_the_cli_takes(text: str) -> None:
    params = Params.of([("since", text)])
    expected = cli_day(text)
    if expected is not None:
        assert params.day("since") == expected
    else:
        with pytest.raises(UsageError):
            params.day("since")


def test_an_iso_week_date_is_not_a_day() -> None:
    usage_error(Params.of([("since", "2025-W31-1")]).day, "since")


@pytest.mark.parametrize("text", ["0", "-1", "10001", "1.5", "ten", "", " 5", "1e3"])
def test_a_count_outside_one_to_most_is_refused(text: str) -> None:
    error = usage_error(Params.of([("limit", text)]).count, "limit", 200)
    assert error.message == f"limit={text!r} is not a whole number from 1 to 10000"


def test_a_count() -> None:
    assert Params.of([]).count("limit", 200) == 200
    assert Params.of([("limit", "1")]).count("limit", 200) == 1
    assert Params.of([("limit", "10000")]).count("limit", 200) == 10_000
    assert Params.of([("limit", "007")]).count("limit", 200) == 7
    assert Params.of([("limit", "50")]).count("limit", 200, most=50) == 50
    usage_error(Params.of([("limit", "51")]).count, "limit", 200, 50)


@given(st.text(max_size=6))
def test_count_refuses_any_other_text_with_a_usage_error(text: str) -> None:
    params = Params.of([("limit", text)])
    try:
        value = params.count("limit", 200)
    except UsageError:
        assert not (text.isascii() and text.isdigit() and 1 <= int(text) <= 10_000)
        return
    assert value == int(text) and 1 <= value <= 10_000


def test_a_superscript_count_is_a_usage_error() -> None:
    usage_error(Params.of([("limit", "²")]).count, "limit", 200)


def test_choice() -> None:
    assert Params.of([]).choice("measure", ("cost", "tokens"), "cost") == "cost"
    assert Params.of([("measure", "tokens")]).choice("measure", ("cost", "tokens"),
                                                      "cost") == "tokens"
    error = usage_error(Params.of([("measure", "Tokens")]).choice, "measure",
                        ("cost", "tokens"), "cost")
    assert error.message == "measure='Tokens' is not one of cost, tokens"


# ---------------------------------------------------------------- report_query


def test_report_query_of_no_parameters_is_the_default() -> None:
    assert report_query(Params.of([])) == ReportQuery()


def test_report_query_reads_every_option() -> None:
    params = Params.of([("by", "role, phase,role"), ("since", "2025-08-01"),
                        ("until", "2025-08-31"), ("agent", "claude,codex"), ("agent", "gemini"),
                        ("role", "dev"), ("phase", "1,planning"), ("model", "gpt-5"),
                        ("tz", "Asia/Tokyo"), ("cost-mode", "calculate"), ("format", "csv")])
    assert report_query(params) == ReportQuery(
        by=("role", "phase"), since=date(2025, 8, 1), until=date(2025, 8, 31),
        agents=("claude", "codex", "gemini"), roles=("dev",), phases=("1", "planning"),
        models=("gpt-5",), tz="Asia/Tokyo", cost_mode="calculate")


@pytest.mark.parametrize(("pairs", "mentions"), [
    ([("since", "2025-09-01"), ("until", "2025-08-01")], "is after"),
    ([("by", "agent,colour")], "cannot group by colour"),
    ([("by", ",")], "cannot group by nothing"),
    ([("cost-mode", "guess")], "cost-mode='guess'"),
    ([("measure", "cost")], "unknown parameter 'measure'"),
    ([("tz", "")], "unknown time zone"),
])
def test_report_query_refusals(pairs: list[tuple[str, str]], mentions: str) -> None:
    assert mentions in usage_error(report_query, Params.of(pairs)).message


def test_an_unknown_time_zone_is_a_usage_error() -> None:
    assert issubclass(UnknownTimeZone, UsageError)
    with pytest.raises(UnknownTimeZone) as info:
        report_query(Params.of([("tz", "Mars/Olympus")]))
    assert info.value.message == "unknown time zone 'Mars/Olympus'"


def test_extra_names_are_allowed_only_where_given() -> None:
    params = Params.of([("measure", "tokens")])
    assert report_query(params, extra=("measure",)) == ReportQuery()


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return make_home(tmp_path_factory.mktemp("params") / "home")


def cli_query(home: Home, args: list[str], monkeypatch: pytest.MonkeyPatch) -> ReportQuery:
    """The ReportQuery `tally report ARGS` hands to run_report."""
    seen: list[ReportQuery] = []

    def capture(_home: Home, query: ReportQuery) -> Report:
        seen.append(query)
        return Report(rows=pl.DataFrame(schema={"unpriced_events": pl.Int64}), by=query.by)

    monkeypatch.setattr(cli_report, "run_report", capture)
    result = CliRunner().invoke(main, ["report", *args, "--home", str(home.root)])
    assert result.exit_code == 0, result.output
    [query] = seen
    return query


NAMES = st.sampled_from(["claude", "codex", "gemini", " spaced ", "a,b", "x", ""])
DAYS = st.dates(min_value=date(2024, 1, 1), max_value=date(2026, 12, 31))
OPTIONS = st.fixed_dictionaries({}, optional={
    "by": st.lists(st.sampled_from(GROUP_KEYS), min_size=1, max_size=4).map(",".join),
    "since": DAYS.map(date.isoformat),
    "until": DAYS.map(date.isoformat),
    "agent": st.lists(NAMES, min_size=1, max_size=3),
    "role": st.lists(NAMES, min_size=1, max_size=2),
    "phase": st.lists(NAMES, min_size=1, max_size=2),
    "model": st.lists(NAMES, min_size=1, max_size=2),
    "tz": st.sampled_from(["UTC", "Asia/Tokyo", "Europe/Istanbul", "America/Los_Angeles"]),
    "cost-mode": st.sampled_from(["auto", "calculate"]),
})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPTIONS)
def test_report_query_is_the_query_of_the_cli(cli_home: Home, monkeypatch: pytest.MonkeyPatch,
                                             options: dict[str, Any]) -> None:
    pairs = [(name, v) for name, value in options.items()
             for v in (value if isinstance(value, list) else [value])]
    args = [part for name, value in pairs for part in (f"--{name}", value)]
    built = cli_query(cli_home, args, monkeypatch)
    try:
        expected = check_query(built)  # what run_report checks first
    except UsageError as refused:
        assert built.since is not None and built.until is not None
        assert built.since > built.until and "is after" in refused.message
        assert "is after" in usage_error(report_query, Params.of(pairs)).message
        return
    assert report_query(Params.of(pairs)) == expected


def test_the_cli_capture_sees_a_real_query(cli_home: Home,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The differential check above compares against something: the CLI's own query."""
    query = cli_query(cli_home, ["--by", "model", "--agent", "a,b", "--tz", "Asia/Tokyo"],
                      monkeypatch)
    assert query == ReportQuery(by=("model",), agents=("a", "b"), tz="Asia/Tokyo")

