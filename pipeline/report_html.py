"""`tally report --format html`: one self-contained page (inline CSS, the charts as inline
SVG, no script) that reads the same in a browser, a mail client or a CI artefact viewer."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

import polars as pl

from pipeline.charts import MEASURES, draw_svg, usage_spec
from pipeline.query import ReportQuery
from pipeline.records import cell_text, json_records, numeric, totals_row

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;
margin:2rem auto;max-width:1100px;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem}
.query{color:#5b6575;margin:0 0 1.25rem}
.totals{display:flex;gap:1rem;margin:0 0 1.5rem}
.totals div{border:1px solid #dde2ea;border-radius:8px;padding:.6rem 1rem;min-width:9rem}
.totals b{display:block;font-size:1.35rem}
figure{margin:0 0 1.5rem;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .6rem;border-bottom:1px solid #e6e9ef;text-align:left;white-space:nowrap}
th{background:#f4f6f9;position:sticky;top:0}
td.n,th.n{text-align:right}
tr.total td{font-weight:600;border-top:2px solid #c5ccd8}
.note{color:#8a4b00}
"""


def describe_query(query: ReportQuery) -> str:
    """The query in one line: its keys, range, filters and time zone."""
    parts = ["by " + ", ".join(query.by)]
    if query.since or query.until:
        parts.append(f"{query.since or '…'} – {query.until or '…'}")
    for name, values in (("agents", query.agents), ("roles", query.roles),
                         ("phases", query.phases), ("models", query.models)):
        if values:
            parts.append(f"{name}: {', '.join(values)}")
    parts.append(query.tz)
    if query.cost_mode != "auto":
        parts.append(f"cost: {query.cost_mode}")
    return " · ".join(parts)


def report_html(rows: pl.DataFrame, query: ReportQuery, unpriced_models: list[str],
                generated: datetime) -> str:
    """The whole page of one report: totals, a chart per measure, the table."""
    records = json_records(rows)
    total = totals_row(rows, rows.columns[0]) if rows.height else {}
    tiles = [("events", total.get("events") or 0), ("tokens", total.get("total_tokens") or 0),
             ("cost", total.get("cost_usd"))]
    title = f"tally report {describe_query(query)}"
    specs = [usage_spec(records, query.by, m, MEASURES[m][1], query.since, query.until)
             for m in MEASURES]
    charts = ("".join(f"<figure>{draw_svg(spec)}</figure>" for spec in specs) if records
              else "<p>no events match</p>")
    note = (f'<p class="note">No price for {html.escape(", ".join(unpriced_models))}: their '
            "events have no cost.</p>" if unpriced_models else "")
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        "<h1>tally report</h1>",
        f'<p class="query">{html.escape(describe_query(query))} · generated '
        f"{generated:%Y-%m-%d %H:%M %Z}</p>",
        '<div class="totals">' + "".join(
            f"<div>{name}<b>{html.escape(cell_text('cost_usd' if name == 'cost' else name, v))}"
            "</b></div>" for name, v in tiles) + "</div>",
        charts, note, _table(rows, total) if rows.height else "", "</body></html>", ""])


def _table(rows: pl.DataFrame, total: dict[str, Any]) -> str:
    right = {c: numeric(rows, c) for c in rows.columns}

    def cells(values: Any, tag: str) -> str:
        return "".join(f'<{tag}{" class=n" if right[c] else ""}>{html.escape(v)}</{tag}>'
                       for c, v in zip(rows.columns, values, strict=True))

    body = ["<tr>" + cells([cell_text(c, v) for c, v in zip(rows.columns, row, strict=True)],
                           "td") + "</tr>" for row in rows.iter_rows()]
    shown = [cell_text(c, total[c]) if total[c] is not None or right[c] else ""
             for c in rows.columns]
    return ("<table><thead><tr>" + cells(rows.columns, "th") + "</tr></thead><tbody>"
            + "".join(body) + '<tr class="total">' + cells(shown, "td") + "</tr></tbody></table>")
