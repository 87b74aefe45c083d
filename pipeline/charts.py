"""A report as a chart: one Vega-Lite spec, drawn by the dashboard in the browser, and by
vl-convert as the SVG of `tally report --format html` and the PNG of `--chart`.

Pure functions from report records to specs; only `draw_svg`, `draw_png` and
`javascript_bundle` call vl-convert (imported there: most commands never draw).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.errors import ChartError
from pipeline.query import KEY_COLUMN, TIME_FORMAT, TIME_KEYS

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
MEASURES = {"cost": ("cost_usd", "cost (USD)"), "tokens": ("total_tokens", "tokens")}
TOP_SERIES = 10  # series beyond the largest ones are drawn as one "other" series
NO_VALUE = "(none)"
ALL = "all"
MOST_PERIODS = 1000  # a longer range keeps only the periods with data on its axis
WIDTH = 640
HEIGHT = 220
BUNDLE_SNIPPET = "window.vegaEmbed = vegaEmbed;"


def series_keys(by: Sequence[str]) -> tuple[str | None, list[str]]:
    """The report's time key (the x axis), if any, and the keys that name a series."""
    time_key = next((key for key in by if key in TIME_KEYS), None)
    return time_key, [key for key in by if key != time_key]


def chart_points(records: Sequence[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """One point per (period, series): its tokens and cost, the smaller series as "other"."""
    time_key, keys = series_keys(by)
    points: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        series = " · ".join(_label(record.get(KEY_COLUMN.get(k, k))) for k in keys) or ALL
        period = _label(record.get(time_key)) if time_key else ""
        point = points.setdefault((period, series), {"period": period, "series": series,
                                                     "tokens": 0, "cost": 0.0})
        point["tokens"] += record.get("total_tokens") or 0
        point["cost"] += record.get("cost_usd") or 0.0
    return _fold_small_series(list(points.values()))


def _label(value: Any) -> str:
    return NO_VALUE if value is None or value == "" else str(value)


def _by_size(points: Sequence[dict[str, Any]]) -> list[str]:
    """The series, the one with the most tokens first."""
    totals: dict[str, float] = {}
    for point in points:
        totals[point["series"]] = totals.get(point["series"], 0) + point["tokens"]
    return sorted(totals, key=lambda s: (-totals[s], s))


def _fold_small_series(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ordered = _by_size(points)
    if len(ordered) <= TOP_SERIES:
        return points
    kept = set(ordered[:TOP_SERIES - 1])
    other = f"other ({len(ordered) - len(kept)})"
    folded: dict[tuple[str, str], dict[str, Any]] = {}
    for point in points:
        series = point["series"] if point["series"] in kept else other
        into = folded.setdefault((point["period"], series), {**point, "series": series,
                                                             "tokens": 0, "cost": 0.0})
        into["tokens"] += point["tokens"]
        into["cost"] += point["cost"]
    return list(folded.values())


def period_of(label: str, time_key: str) -> date:
    """The first day of a report's period label (2025-08-29, 2025-W35, 2025-08)."""
    if time_key == "week":
        year, week = label.split("-W")
        return date.fromisocalendar(int(year), int(week), 1)
    if time_key == "month":
        return datetime.strptime(label, "%Y-%m").date()
    return date.fromisoformat(label)


def periods_between(first: date, last: date, time_key: str) -> list[str]:
    """Every period label from the one holding `first` to the one holding `last`."""
    day = period_of(first.strftime(TIME_FORMAT[time_key]), time_key)
    labels: list[str] = []
    while day <= last and len(labels) <= MOST_PERIODS:
        labels.append(day.strftime(TIME_FORMAT[time_key]))
        day = (day + timedelta(days=7 if time_key == "week" else 1) if time_key != "month"
               else (day.replace(day=28) + timedelta(days=4)).replace(day=1))
    return labels


def period_domain(points: Sequence[dict[str, Any]], time_key: str, since: date | None,
                  until: date | None) -> list[str] | None:
    """The x axis of a time chart: every period of the range, the idle ones too, so that
    bars stand where they fall in time (None past MOST_PERIODS, or without a range)."""
    try:
        days = [period_of(p["period"], time_key) for p in points if p["period"] != NO_VALUE]
    except ValueError:  # not a label of ours: the data's own periods will do
        return None
    first, last = since or min(days, default=None), until or max(days, default=None)
    if first is None or last is None or first > last:
        return None
    labels = periods_between(first, last, time_key)
    return labels if len(labels) <= MOST_PERIODS else None


def usage_spec(records: Sequence[dict[str, Any]], by: Sequence[str], measure: str = "cost",
               title: str | None = None, since: date | None = None,
               until: date | None = None) -> dict[str, Any]:
    """Stacked bars of one measure per period and series (over every period from `since`
    to `until`, or the data's own); bars per series without a time key."""
    time_key, keys = series_keys(by)
    field, label = MEASURES[measure]
    points = _ranked(chart_points(records, by))
    legend = " · ".join(keys) or ALL
    value = {"field": measure, "type": "quantitative", "title": label, "aggregate": "sum",
             **({"format": "$,.2f"} if measure == "cost" else {"format": ",d"})}
    tooltip = [{"field": "series", "title": legend}, value,
               *([{"field": "period", "title": time_key}] if time_key else [])]
    encoding: dict[str, Any]
    if time_key:
        domain = period_domain(points, time_key, since, until)
        encoding = {"x": {"field": "period", "type": "ordinal", "title": time_key,
                          "axis": {"labelAngle": -40, "labelOverlap": "greedy"},
                          **({"scale": {"domain": domain}} if domain else {})},
                    "y": value,
                    # Sorted by a rank, not a list of names: Vega breaks on a listed name
                    # such as "toString".
                    "color": {"field": "series", "type": "nominal", "title": legend,
                              "sort": {"field": "rank", "op": "min"}},
                    "order": {"field": "rank", "type": "quantitative"}, "tooltip": tooltip}
    else:
        encoding = {"y": {"field": "series", "type": "nominal", "title": legend,
                          "sort": "-x"},
                    "x": value, "color": {"field": "series", "type": "nominal",
                                          "legend": None},
                    "tooltip": tooltip}
    spec: dict[str, Any] = {
        "$schema": SCHEMA, "width": WIDTH if time_key else WIDTH // 2,
        **({"height": HEIGHT} if time_key else {}),
        "data": {"values": points}, "mark": {"type": "bar", "tooltip": True},
        "encoding": encoding, "usermeta": {"field": field},
    }
    if title:
        spec["title"] = title
    return spec


def _ranked(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points, each with its series' rank: 0 for the most tokens."""
    order = {series: rank for rank, series in enumerate(_by_size(points))}
    return [{**point, "rank": order[point["series"]]} for point in points]


def report_figure(records: Sequence[dict[str, Any]], by: Sequence[str],
                  since: date | None = None, until: date | None = None) -> dict[str, Any]:
    """The picture of a report: its cost above its tokens, by the same groups."""
    parts = [usage_spec(records, by, measure, MEASURES[measure][1], since, until)
             for measure in MEASURES]
    for part in parts:
        part.pop("$schema")
    return {"$schema": SCHEMA, "vconcat": parts,
            "resolve": {"scale": {"color": "independent"}}}


# ---------------------------------------------------------------- drawing (vl-convert)


def draw_svg(spec: dict[str, Any]) -> str:
    """The chart as SVG text."""
    import vl_convert

    try:
        svg: str = vl_convert.vegalite_to_svg(spec)
    except ValueError as exc:
        raise _chart_error(exc) from exc
    return svg


def draw_png(spec: dict[str, Any], scale: float = 2.0) -> bytes:
    """The chart as a PNG picture (`scale` pixels per SVG unit)."""
    import vl_convert

    try:
        png: bytes = vl_convert.vegalite_to_png(spec, scale=scale)
    except ValueError as exc:
        raise _chart_error(exc) from exc
    return png


def _chart_error(exc: ValueError) -> ChartError:
    """vl-convert's refusal in one line (it appends Vega's JavaScript stack)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = next((line for line in lines if "Error" in line and " at " not in line), None)
    return ChartError(f"could not draw the chart: {said or (lines[0] if lines else exc)}",
                      hint="report it with TALLY_DEBUG=1's output; the report itself is "
                           "unaffected (leave out --chart, or use another --format)")


def cache_dir() -> Path:
    """Where made files that any home may reuse are kept: $XDG_CACHE_HOME/tally."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tally"


def javascript_bundle(directory: Path) -> bytes:
    """Vega, Vega-Lite and Vega-Embed as one script, made offline from vl-convert's copies
    (`window.vegaEmbed`); kept in `directory` because making it takes 2 s."""
    import vl_convert

    path = directory / f"vega-embed-{vl_convert.get_vega_embed_version()}.js"
    try:
        return path.read_bytes()
    except OSError:
        pass
    bundle = vl_convert.javascript_bundle(BUNDLE_SNIPPET).encode()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(bundle)
        os.replace(tmp, path)
    except OSError:  # a read-only home directory: made again next time
        pass
    return bundle
