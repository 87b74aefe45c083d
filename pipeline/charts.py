"""A report as a chart: one Vega-Lite spec, drawn by the dashboard in the browser, and by
vl-convert as the SVG of `tally report --format html` and the PNG of `--chart`.

Pure functions from report records to specs; only `draw_svg`, `draw_png` and
`javascript_bundle` call vl-convert (imported there: most commands never draw).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ChartError
from pipeline.query import KEY_COLUMN, TIME_KEYS

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
MEASURES = {"cost": ("cost_usd", "cost (USD)"), "tokens": ("total_tokens", "tokens")}
TOP_SERIES = 10  # series beyond the largest ones are drawn as one "other" series
NO_VALUE = "(none)"
ALL = "all"
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


def _fold_small_series(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[str, float] = {}
    for point in points:
        totals[point["series"]] = totals.get(point["series"], 0) + point["tokens"]
    if len(totals) <= TOP_SERIES:
        return points
    kept = set(sorted(totals, key=lambda s: (-totals[s], s))[:TOP_SERIES - 1])
    other = f"other ({len(totals) - len(kept)})"
    folded: dict[tuple[str, str], dict[str, Any]] = {}
    for point in points:
        series = point["series"] if point["series"] in kept else other
        into = folded.setdefault((point["period"], series), {**point, "series": series,
                                                             "tokens": 0, "cost": 0.0})
        into["tokens"] += point["tokens"]
        into["cost"] += point["cost"]
    return list(folded.values())


def usage_spec(records: Sequence[dict[str, Any]], by: Sequence[str], measure: str = "cost",
               title: str | None = None) -> dict[str, Any]:
    """Stacked bars of one measure per period and series; bars per series without a time key."""
    time_key, keys = series_keys(by)
    field, label = MEASURES[measure]
    points = chart_points(records, by)
    legend = " · ".join(keys) or ALL
    value = {"field": measure, "type": "quantitative", "title": label, "aggregate": "sum",
             **({"format": "$,.2f"} if measure == "cost" else {"format": ",d"})}
    tooltip = [{"field": "series", "title": legend}, value,
               *([{"field": "period", "title": time_key}] if time_key else [])]
    encoding: dict[str, Any]
    if time_key:
        encoding = {"x": {"field": "period", "type": "ordinal", "title": time_key,
                          "axis": {"labelAngle": -40}},
                    "y": value,
                    "color": {"field": "series", "type": "nominal", "title": legend,
                              "sort": _series_order(points)},
                    "order": {"field": "series"}, "tooltip": tooltip}
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


def _series_order(points: Sequence[dict[str, Any]]) -> list[str]:
    totals: dict[str, float] = {}
    for point in points:
        totals[point["series"]] = totals.get(point["series"], 0) + point["tokens"]
    return sorted(totals, key=lambda s: (-totals[s], s))


def report_figure(records: Sequence[dict[str, Any]], by: Sequence[str]) -> dict[str, Any]:
    """The picture of a report: its cost above its tokens, by the same groups."""
    parts = [usage_spec(records, by, measure, title=MEASURES[measure][1]) for measure in MEASURES]
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
        raise ChartError(f"could not draw the chart: {exc}") from exc
    return svg


def draw_png(spec: dict[str, Any], scale: float = 2.0) -> bytes:
    """The chart as a PNG picture (`scale` pixels per SVG unit)."""
    import vl_convert

    try:
        png: bytes = vl_convert.vegalite_to_png(spec, scale=scale)
    except ValueError as exc:
        raise ChartError(f"could not draw the chart: {exc}") from exc
    return png


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
