"""pipeline.report_html: one self-contained page per report, read back with an HTML parser:
the query line, the totals, the charts as inline SVG, the table as the CLI's cells."""

from __future__ import annotations

import html
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from test_cli_report import home_with

from pipeline.config import Home
from pipeline.query import ReportQuery
from pipeline.records import cell_text
from pipeline.report_html import describe_query, report_html
from pipeline.reports import run_report

GENERATED = datetime(2025, 8, 29, 18, 5, tzinfo=ZoneInfo("UTC"))
ODD_AGENT = '<b>x</b> & "q"'
UNPRICED = "local-llama-3-8b"


class Page(HTMLParser):
    """The parts of a page the tests read: tags seen, table rows, text by class."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.rows: list[list[tuple[str, str | None, str]]] = []  # (tag, class, text)
        self.row_classes: list[str | None] = []
        self.texts: dict[str, str] = {}
        self._cell: list[Any] | None = None
        self._class_text: list[Any] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attributes = dict(attrs)
        if tag == "tr":
            self.rows.append([])
            self.row_classes.append(attributes.get("class"))
        elif tag in ("td", "th"):
            self._cell = [tag, attributes.get("class"), ""]
        elif tag == "p" and attributes.get("class"):
            self._class_text = [attributes["class"], ""]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._cell[0], self._cell[1], self._cell[2]))
            self._cell = None
        elif tag == "p" and self._class_text is not None:
            self.texts[self._class_text[0]] = self._class_text[1]
            self._class_text = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[2] += data
        if self._class_text is not None:
            self._class_text[1] += data


@pytest.fixture(scope="module")
def report_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """Three agents over two days, one of them with markup in its name and an unpriced
    model."""
    def usage(agent: str, ts: str, model: str, tokens: int) -> dict[str, Any]:
        return {"event_type": "agent_token_usage", "ts": ts, "agent": agent, "model": model,
                "input_tokens": tokens, "output_tokens": tokens // 10}

    events = [usage("claude", "2025-08-01T10:00:00Z", "claude-sonnet-4-5", 120_000),
              usage("claude", "2025-08-02T10:00:00Z", "claude-sonnet-4-5", 80_000),
              usage("codex", "2025-08-01T11:00:00Z", "gpt-5", 1_500_000),
              usage(ODD_AGENT, "2025-08-02T12:00:00Z", UNPRICED, 3_000)]
    return home_with(tmp_path_factory.mktemp("html") / "home", events)


# ---------------------------------------------------------------- describe_query


@pytest.mark.parametrize(("query", "text"), [
    (ReportQuery(), "by agent, day · UTC"),
    (ReportQuery(by=("model",), since=date(2025, 8, 1)), "by model · 2025-08-01 – … · UTC"),
    (ReportQuery(until=date(2025, 8, 31), tz="Asia/Tokyo"),
     "by agent, day · … – 2025-08-31 · Asia/Tokyo"),
    (ReportQuery(by=("role", "phase"), since=date(2025, 8, 1), until=date(2025, 8, 2),
                 agents=("claude", "codex"), roles=("dev",), phases=("1", "planning"),
                 models=("gpt-5",), cost_mode="calculate"),
     "by role, phase · 2025-08-01 – 2025-08-02 · agents: claude, codex · roles: dev · "
     "phases: 1, planning · models: gpt-5 · UTC · cost: calculate"),
])
def test_describe_query(query: ReportQuery, text: str) -> None:
    assert describe_query(query) == text


# ---------------------------------------------------------------- report_html


def page_of(home: Home, query: ReportQuery) -> tuple[str, pl.DataFrame, list[str]]:
    result = run_report(home, query)
    return (report_html(result.rows, query, result.unpriced_models, GENERATED), result.rows,
            result.unpriced_models)


def test_the_page_is_self_contained(report_home: Home) -> None:
    text, _, _ = page_of(report_home, ReportQuery())
    lowered = text.lower()
    assert lowered.startswith("<!doctype html>")
    for outside in ("<script", 'src="http', "src='http", "<link", "@import", "url("):
        assert outside not in lowered, outside
    page = Page(text)
    assert page.tags.count("svg") == 2  # cost, then tokens
    assert page.tags.count("figure") == 2
    assert "style" in page.tags


def test_the_table_is_the_report_with_its_totals(report_home: Home) -> None:
    text, rows, _ = page_of(report_home, ReportQuery())
    page = Page(text)
    header, *body = page.rows
    assert [cell for _, _, cell in header] == rows.columns
    assert [tag for tag, _, _ in header] == ["th"] * len(rows.columns)
    *lines, total = body
    assert page.row_classes[-1] == "total"
    assert len(lines) == rows.height == 4
    for line, row in zip(lines, rows.iter_rows(named=True), strict=True):
        assert [cell for _, _, cell in line] == [cell_text(c, v) for c, v in row.items()]
        # numbers right-aligned, keys not
        assert [cls for _, cls, _ in line] == [
            "n" if rows.schema[c].is_numeric() else None for c in rows.columns]
    totals = dict(zip(rows.columns, (cell for _, _, cell in total), strict=True))
    assert totals["agent"] == "total" and totals["day"] == ""
    assert totals["events"] == "4"
    assert totals["total_tokens"] == f"{sum(rows['total_tokens']):,}"
    assert totals["total_tokens"] == "1,873,300"  # 1,703,000 in + 170,300 out
    assert totals["cost_usd"] == f"${rows['cost_usd'].sum():,.2f}"
    assert totals["unpriced_events"] == "1"


def test_the_totals_tiles_and_the_query_line(report_home: Home) -> None:
    query = ReportQuery(since=date(2025, 8, 1), agents=("claude", "codex"))
    text, rows, unpriced = page_of(report_home, query)
    page = Page(text)
    assert page.texts["query"] == (f"{describe_query(query)} · generated 2025-08-29 18:05 UTC")
    assert unpriced == [] and "note" not in page.texts
    assert rows["agent"].unique().sort().to_list() == ["claude", "codex"]
    tiles = f"<div>events<b>{rows['events'].sum()}</b></div>"
    assert tiles in text
    assert f"<div>tokens<b>{rows['total_tokens'].sum():,}</b></div>" in text
    assert f"<div>cost<b>${rows['cost_usd'].sum():,.2f}</b></div>" in text
    assert html.escape(f"tally report {describe_query(query)}") in text.split("</title>")[0]


def test_group_values_are_escaped_everywhere(report_home: Home) -> None:
    text, _, _ = page_of(report_home, ReportQuery(by=("agent",)))
    assert "<b>x</b>" not in text
    assert html.escape(ODD_AGENT) in text
    page = Page(text)
    assert page.tags.count("b") == 3  # the three totals tiles': none from the agent's name
    assert ODD_AGENT in [row[0][2] for row in page.rows]  # and it reads as it was written


def test_the_unpriced_note(report_home: Home) -> None:
    text, _, unpriced = page_of(report_home, ReportQuery(by=("model",)))
    assert unpriced == [UNPRICED]
    note = Page(text).texts["note"]
    assert note == f"No price for {UNPRICED}: their events have no cost."
    markup = report_html(pl.DataFrame({"model": ["<i>m</i>"], "events": [1]}),
                         ReportQuery(by=("model",)), ["<i>m</i>", "gpt-x"], GENERATED)
    assert "<i>" not in markup
    assert Page(markup).texts["note"].startswith("No price for <i>m</i>, gpt-x:")


def test_a_report_without_rows(tmp_path: Path) -> None:
    home = home_with(tmp_path / "home", [])
    query = ReportQuery(tz="Europe/Istanbul")
    result = run_report(home, query)
    assert result.rows.height == 0
    text = report_html(result.rows, query, [], datetime(2025, 8, 29, 21, tzinfo=ZoneInfo(
        "Europe/Istanbul")))
    page = Page(text)
    assert "no events match" in text
    assert "svg" not in page.tags and "table" not in page.tags
    assert "<div>events<b>0</b></div>" in text and "<div>cost<b>-</b></div>" in text
    assert page.texts["query"].endswith("generated 2025-08-29 21:00 +03")
