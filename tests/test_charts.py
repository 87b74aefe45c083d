"""pipeline.charts: report records as chart points (the small series folded into "other"),
the Vega-Lite specs, and vl-convert drawing them as SVG and PNG, and the cached script
bundle the dashboard serves."""

from __future__ import annotations

import math
import re
import struct
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import vl_convert
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.charts import (
    BUNDLE_SNIPPET,
    NO_VALUE,
    SCHEMA,
    TOP_SERIES,
    chart_points,
    draw_png,
    draw_svg,
    javascript_bundle,
    period_of,
    periods_between,
    report_figure,
    series_keys,
    usage_spec,
)
from pipeline.errors import ChartError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(agent: str | None = "claude", day: str | None = "2025-08-01", tokens: int | None = 10,
           cost: float | None = 1.0, **more: Any) -> dict[str, Any]:
    return {"agent": agent, "day": day, "total_tokens": tokens, "cost_usd": cost, **more}


def label(value: Any) -> str:
    return "(none)" if value in (None, "") else str(value)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the first, right after the magic)."""
    assert data[:8] == PNG_MAGIC
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# ---------------------------------------------------------------- series_keys


@pytest.mark.parametrize(("by", "expected"), [
    (("agent", "day"), ("day", ["agent"])),
    (("day", "agent"), ("day", ["agent"])),
    (("agent", "role"), (None, ["agent", "role"])),
    (("month", "week", "model"), ("month", ["week", "model"])),  # the first time key is x
    (("week",), ("week", [])),
    ((), (None, [])),
])
def test_series_keys(by: tuple[str, ...], expected: tuple[str | None, list[str]]) -> None:
    assert series_keys(by) == expected


# ---------------------------------------------------------------- chart_points


def test_points_sum_per_period_and_series() -> None:
    records = [record("claude", "2025-08-01", 10, 1.0), record("claude", "2025-08-01", 5, None),
               record("codex", "2025-08-01", 7, 0.5), record("claude", "2025-08-02", 1, 0.25),
               record(None, "2025-08-02", 2, 0.125), record("", "2025-08-02", 3, None),
               record("codex", None, 4, None)]
    points = {(p["period"], p["series"]): (p["tokens"], p["cost"])
              for p in chart_points(records, ("agent", "day"))}
    assert points == {("2025-08-01", "claude"): (15, 1.0), ("2025-08-01", "codex"): (7, 0.5),
                      ("2025-08-02", "claude"): (1, 0.25),
                      ("2025-08-02", NO_VALUE): (5, 0.125),  # null and "" read alike
                      (NO_VALUE, "codex"): (4, 0.0)}


def test_points_without_keys_or_time_and_the_session_column() -> None:
    records = [record(session_id="s1", tokens=3), record(session_id="s2", tokens=4),
               record(session_id="s1", tokens=None, day="2025-08-03")]
    by_day = chart_points(records, ("day",))
    assert sorted((p["period"], p["series"], p["tokens"]) for p in by_day) == [
        ("2025-08-01", "all", 7), ("2025-08-03", "all", 0)]
    sessions = chart_points(records, ("session",))  # the key reads the session_id column
    assert sorted((p["period"], p["series"], p["tokens"]) for p in sessions) == [
        ("", "s1", 3), ("", "s2", 4)]
    both = chart_points(records, ("agent", "session", "day"))
    assert {p["series"] for p in both} == {"claude · s1", "claude · s2"}
    assert chart_points([], ("agent", "day")) == []


def test_more_than_top_series_fold_into_other_keeping_the_largest() -> None:
    agents = [f"agent-{i:02d}" for i in range(TOP_SERIES + 3)]
    records = [record(agent, "2025-08-01", tokens=100 * (i + 1), cost=0.5)
               for i, agent in enumerate(agents)]
    records.append(record("agent-00", "2025-08-02", tokens=10_000, cost=0.5))  # now the largest
    points = chart_points(records, ("agent", "day"))
    series = {p["series"] for p in points}
    other = f"other ({len(agents) - (TOP_SERIES - 1)})"
    kept = {"agent-00", *agents[-(TOP_SERIES - 2):]}
    assert series == kept | {other}
    folded = [p for p in points if p["series"] == other]
    assert [(p["period"], p["tokens"]) for p in folded] == [("2025-08-01", 200 + 300 + 400 + 500)]
    assert folded[0]["cost"] == pytest.approx(4 * 0.5)


def test_exactly_top_series_are_not_folded() -> None:
    records = [record(f"a{i}", tokens=i) for i in range(TOP_SERIES)]
    assert {p["series"] for p in chart_points(records, ("agent",))} == {
        f"a{i}" for i in range(TOP_SERIES)}


def test_ties_fold_by_name() -> None:
    records = [record(f"a{i:02d}", tokens=5) for i in range(TOP_SERIES + 1)]
    series = {p["series"] for p in chart_points(records, ("agent",))}
    assert series == {f"a{i:02d}" for i in range(TOP_SERIES - 1)} | {"other (2)"}


NAMES = st.sampled_from(["claude", "codex", "gemini", "cursor", "yolo", "", None,
                         *(f"bot-{i}" for i in range(12))])
RECORDS = st.lists(st.fixed_dictionaries({
    "agent": NAMES,
    "session_id": st.sampled_from(["s1", "s2", None]),
    "day": st.sampled_from(["2025-08-01", "2025-08-02", "2025-08-03", None]),
    "model": st.sampled_from(["gpt-5", "claude-sonnet-4-5", None]),
    "total_tokens": st.none() | st.integers(0, 10 ** 9),
    "cost_usd": st.none() | st.floats(0, 1e4),
}), max_size=40)
BYS = st.sampled_from([("agent", "day"), ("day",), ("agent",), ("session", "day"),
                       ("agent", "session"), ("day", "agent", "model"), ()])


@settings(max_examples=150, deadline=None)
@given(RECORDS, BYS)
def test_points_keep_every_token_and_dollar(records: list[dict[str, Any]],
                                            by: tuple[str, ...]) -> None:
    """Whatever the folding, the points hold what the records hold: in all, and per period;
    the series that were not folded exactly their own records' sums."""
    points = chart_points(records, by)
    time_key, keys = series_keys(by)
    columns = ["session_id" if k == "session" else k for k in keys]

    def period(r: dict[str, Any]) -> str:
        return label(r[time_key]) if time_key else ""

    def series(r: dict[str, Any]) -> str:
        return " · ".join(label(r[c]) for c in columns) or "all"

    expected: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for r in records:
        cell = expected[(period(r), series(r))]
        cell[0] += r["total_tokens"] or 0
        cell[1] += r["cost_usd"] or 0.0

    assert len({(p["period"], p["series"]) for p in points}) == len(points)  # one per pair
    assert sum(p["tokens"] for p in points) == sum(t for t, _ in expected.values())
    assert math.fsum(p["cost"] for p in points) == pytest.approx(
        math.fsum(c for _, c in expected.values()), rel=1e-9, abs=1e-6)
    for name in {p for p, _ in expected}:
        assert sum(p["tokens"] for p in points if p["period"] == name) == sum(
            t for (p, _), (t, _) in expected.items() if p == name)

    labels = {s for _, s in expected}
    shown = {p["series"] for p in points}
    assert len(shown) <= TOP_SERIES
    if len(labels) <= TOP_SERIES:
        assert {(p["period"], p["series"]): p["tokens"] for p in points} == {
            key: t for key, (t, _) in expected.items()}
        return
    totals: dict[str, int] = defaultdict(int)
    for (_, s), (t, _) in expected.items():
        totals[s] += t
    largest = sorted(totals, key=lambda s: (-totals[s], s))[:TOP_SERIES - 1]
    assert shown == {*largest, f"other ({len(labels) - len(largest)})"}
    for p in points:
        if p["series"] in largest:
            assert p["tokens"] == expected[(p["period"], p["series"])][0]


# ---------------------------------------------------------------- usage_spec, report_figure


RECORDS_3 = [record("claude", "2025-08-01", 30, 3.0), record("codex", "2025-08-01", 50, 1.0),
             record("claude", "2025-08-02", 40, 2.0)]


def test_a_time_key_makes_stacked_bars_over_periods() -> None:
    spec = usage_spec(RECORDS_3, ("agent", "day"), "tokens", title="tokens")
    assert spec["$schema"] == SCHEMA and spec["title"] == "tokens"
    assert spec["mark"]["type"] == "bar"
    assert ([{k: v for k, v in point.items() if k != "rank"} for point in spec["data"]["values"]]
            == chart_points(RECORDS_3, ("agent", "day")))
    encoding = spec["encoding"]
    assert (encoding["x"]["field"], encoding["x"]["type"], encoding["x"]["title"]) == (
        "period", "ordinal", "day")
    assert (encoding["y"]["field"], encoding["y"]["type"]) == ("tokens", "quantitative")
    assert encoding["color"]["field"] == "series" and encoding["color"]["title"] == "agent"
    assert encoding["color"]["sort"] == {"field": "rank", "op": "min"}
    ranks = {p["series"]: p["rank"] for p in spec["data"]["values"]}
    assert ranks == {"claude": 0, "codex": 1}  # 70 tokens before 50
    assert encoding["x"]["scale"]["domain"] == ["2025-08-01", "2025-08-02"]
    assert {"field": "period", "title": "day"} in encoding["tooltip"]
    assert spec["usermeta"] == {"field": "total_tokens"}
    assert spec["height"] > 0 and spec["width"] > 0


def test_no_time_key_makes_horizontal_bars_per_series() -> None:
    spec = usage_spec(RECORDS_3, ("agent",), "cost")
    encoding = spec["encoding"]
    assert (encoding["y"]["field"], encoding["y"]["type"]) == ("series", "nominal")
    assert (encoding["x"]["field"], encoding["x"]["format"]) == ("cost", "$,.2f")
    assert encoding["y"]["sort"] == "-x"
    assert "height" not in spec and "title" not in spec
    assert spec["width"] < usage_spec(RECORDS_3, ("agent", "day"), "cost")["width"]
    assert spec["usermeta"] == {"field": "cost_usd"}
    assert all(tip.get("field") != "period" for tip in encoding["tooltip"])
    assert {p["period"] for p in spec["data"]["values"]} == {""}


def test_the_measure_picks_the_field() -> None:
    for measure, field in (("cost", "cost_usd"), ("tokens", "total_tokens")):
        spec = usage_spec(RECORDS_3, ("agent", "day"), measure)
        assert spec["encoding"]["y"]["field"] == measure
        assert spec["usermeta"]["field"] == field
    with pytest.raises(KeyError):
        usage_spec(RECORDS_3, ("agent", "day"), "watts")


def test_report_figure_is_cost_above_tokens() -> None:
    figure = report_figure(RECORDS_3, ("agent", "day"))
    assert figure["$schema"] == SCHEMA
    cost, tokens = figure["vconcat"]
    assert (cost["title"], tokens["title"]) == ("cost (USD)", "tokens")
    assert (cost["encoding"]["y"]["field"], tokens["encoding"]["y"]["field"]) == ("cost",
                                                                                 "tokens")
    assert "$schema" not in cost and "$schema" not in tokens
    assert figure["resolve"] == {"scale": {"color": "independent"}}


# ---------------------------------------------------------------- drawing


def bars(svg: str) -> list[str]:
    """The aria labels of the bars vl-convert drew."""
    return re.findall(r'<path aria-label="([^"]*)" role="graphics-symbol" '
                      r'aria-roledescription="bar"', svg)


def test_draw_svg_draws_one_bar_per_point() -> None:
    svg = draw_svg(usage_spec(RECORDS_3, ("agent", "day"), "tokens"))
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert 'class="mark-rect role-mark' in svg
    drawn = bars(svg)
    assert len(drawn) == 3
    assert "day: 2025-08-01; tokens: 50; agent: codex; rank: 1" in drawn


@pytest.mark.parametrize("name", ["toString", "constructor", "__proto__", "hasOwnProperty"])
def test_a_series_named_like_a_javascript_property_is_drawn(name: str) -> None:
    records = [{"agent": name, "day": "2025-08-01", "total_tokens": 5, "cost_usd": 1.0},
               {"agent": "b", "day": "2025-08-03", "total_tokens": 3, "cost_usd": None}]
    assert len(bars(draw_svg(usage_spec(records, ("agent", "day"), "tokens")))) == 2


@pytest.mark.parametrize("key,first,last,expected", [
    ("day", date(2025, 8, 30), date(2025, 9, 2),
     ["2025-08-30", "2025-08-31", "2025-09-01", "2025-09-02"]),
    ("week", date(2025, 12, 24), date(2026, 1, 6), ["2025-W52", "2026-W01", "2026-W02"]),
    ("month", date(2025, 11, 30), date(2026, 2, 1), ["2025-11", "2025-12", "2026-01",
                                                     "2026-02"]),
])
def test_periods_between_holds_every_period(key: str, first: date, last: date,
                                            expected: list[str]) -> None:
    assert periods_between(first, last, key) == expected
    assert all(period_of(label, key) <= last for label in expected)


def test_the_axis_spans_the_range_asked_for_idle_periods_too() -> None:
    spec = usage_spec(RECORDS_3, ("agent", "day"), "tokens", since=date(2025, 7, 30),
                      until=date(2025, 8, 3))
    assert spec["encoding"]["x"]["scale"]["domain"] == [
        "2025-07-30", "2025-07-31", "2025-08-01", "2025-08-02", "2025-08-03"]
    years = usage_spec(RECORDS_3, ("agent", "day"), "tokens", since=date(2020, 1, 1))
    assert "scale" not in years["encoding"]["x"]  # too many days: the data's own


def test_draw_svg_of_the_figure_has_both_charts() -> None:
    svg = draw_svg(report_figure(RECORDS_3, ("agent",)))
    assert svg.count('class="mark-rect role-mark') == 2
    assert len(bars(svg)) == 4  # two series, two measures


def test_draw_png_is_a_png_of_the_chart_scaled() -> None:
    spec = report_figure(RECORDS_3, ("agent", "day"))
    small, large = draw_png(spec, scale=1), draw_png(spec, scale=2)
    (width, height), (width2, height2) = png_size(small), png_size(large)
    assert width > 300 and height > 200  # cost above tokens: taller than one chart
    assert (width2, height2) == (2 * width, 2 * height)


def test_a_spec_vl_convert_refuses_is_a_chart_error() -> None:
    bad = {"mark": "bar", "data": {"values": []},
           "encoding": {"x": {"field": "a", "type": "no-such-type"}}}
    with pytest.raises(ChartError, match="could not draw the chart"):
        draw_svg(bad)
    with pytest.raises(ChartError, match="could not draw the chart"):
        draw_png(bad)


# ---------------------------------------------------------------- the script bundle


def test_the_bundle_is_made_once_and_then_read_from_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache" / "web"  # made when missing
    first = javascript_bundle(cache)
    name = f"vega-embed-{vl_convert.get_vega_embed_version()}.js"
    assert [p.name for p in cache.iterdir()] == [name]  # no temp file left beside it
    assert (cache / name).read_bytes() == first
    text = first.decode()
    assert BUNDLE_SNIPPET.split(" = ")[0] in text and len(first) > 100_000

    def refuse(snippet: str) -> str:
        raise AssertionError("the bundle was made again")

    monkeypatch.setattr(vl_convert, "javascript_bundle", refuse)
    assert javascript_bundle(cache) == first


def test_a_cached_bundle_is_served_as_it_is(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(snippet: str) -> str:
        raise AssertionError("the bundle was made though one is cached")

    monkeypatch.setattr(vl_convert, "javascript_bundle", refuse)
    name = f"vega-embed-{vl_convert.get_vega_embed_version()}.js"
    (tmp_path / name).write_bytes(b"/* cached */")
    (tmp_path / "vega-embed-0.0.1.js").write_bytes(b"/* another version */")
    assert javascript_bundle(tmp_path) == b"/* cached */"
